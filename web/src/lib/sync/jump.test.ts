// Jumping to a message (a search hit, an old reply's original) and the windows of history it
// loads, against the fake server: events stay applied gap-free in seq order throughout.

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import type { Message, ServerFrame } from '../api/types.ts';
import { FakeClock } from '../../test/fakeClock.ts';
import { FakeServer, settle } from '../../test/fakeServer.ts';
import { SyncEngine, SYNC_LIMITS } from './engine.ts';

const alice = { id: 'u-alice', username: 'alice' };
const bob = { id: 'u-bob', username: 'bob' };
const DM = 'c-dm';
const OTHER = 'c-other';

let server: FakeServer;
let engine: SyncEngine;
let nextClientId: number;

function timeline(id = DM) {
  const view = engine.getState().timelines[id];
  if (!view) throw new Error(`no timeline ${id}`);
  return view;
}

function seqs(id = DM): number[] {
  return timeline(id).messages.map((m) => m.seq);
}

/** Gap-free and ascending: what the reader sees is one stretch of the log. */
function contiguous(list: readonly number[]): boolean {
  return list.every((seq, i) => i === 0 || seq === list[i - 1]! + 1);
}

function deliver(...frames: ServerFrame[]): void {
  for (const frame of frames) engine.handleFrame(frame);
}

function live(message: Message): ServerFrame {
  return { type: 'message', message };
}

async function start(): Promise<void> {
  await engine.start();
  engine.setSocketStatus('open');
  engine.handleFrame({ type: 'hello', user_id: alice.id });
  await settle();
}

beforeEach(() => {
  server = new FakeServer([alice, bob]);
  server.addConversation(DM, [alice.id, bob.id]);
  server.addConversation(OTHER, [alice.id, bob.id], { kind: 'group', title: 'Other' });
  nextClientId = 1;
  engine = new SyncEngine({
    me: alice,
    transport: server.transportFor(alice.id),
    clock: new FakeClock(),
    newClientMsgId: () => `cm-${nextClientId++}`,
    random: () => 0.5,
  });
});

afterEach(() => engine.dispose());

describe('jumping to a message', () => {
  it('shows a message already held at once, without a request', async () => {
    server.storeMany(DM, bob.id, 10);
    await start();
    engine.setActive(DM);
    await settle();
    const requests = server.fetches.length + server.eventFetches.length;
    expect(await engine.jumpTo(DM, 4)).toBe(true);
    expect(server.fetches.length + server.eventFetches.length).toBe(requests);
  });

  it('pages older history in for a message a few pages up, staying attached', async () => {
    server.storeMany(DM, bob.id, 120);
    await start();
    engine.setActive(DM);
    await settle();
    expect(seqs()[0]).toBe(71);
    expect(await engine.jumpTo(DM, 5)).toBe(true);
    expect(seqs()[0]).toBeLessThanOrEqual(5);
    expect(seqs().at(-1)).toBe(120);
    expect(contiguous(seqs())).toBe(true);
    expect(timeline().hasNewer).toBe(false);
  });

  it('loads a window around a message of a chat not loaded, attached when one page reaches the newest', async () => {
    server.storeMany(DM, bob.id, 400);
    await start();
    expect(await engine.jumpTo(DM, 300)).toBe(true);
    expect(server.fetches.at(-1)).toMatchObject({ before_seq: 301, limit: SYNC_LIMITS.aroundMessages });
    expect(seqs()[0]).toBe(300 - SYNC_LIMITS.aroundMessages + 1);
    expect(seqs().at(-1)).toBe(400);
    expect(contiguous(seqs())).toBe(true);
    expect(timeline().hasNewer).toBe(false);
  });

  it('loads a window around a message far above what is held, detached from the newest', async () => {
    server.storeMany(DM, bob.id, 400);
    await start();
    engine.setActive(DM);
    await settle();
    expect(await engine.jumpTo(DM, 100)).toBe(true);
    expect(seqs()[0]).toBe(100 - SYNC_LIMITS.aroundMessages + 1);
    expect(seqs().at(-1)).toBe(100 + SYNC_LIMITS.catchUpPageMessages);
    expect(timeline()).toMatchObject({ hasNewer: true, hasOlder: true });
    await engine.loadOlder(DM);
    expect(seqs()[0]).toBe(100 - SYNC_LIMITS.aroundMessages - SYNC_LIMITS.pageMessages + 1);
    expect(contiguous(seqs())).toBe(true);
  });

  it('opens an unloaded conversation right at the hit (a search result), with history before and after it', async () => {
    server.storeMany(DM, bob.id, 600);
    await start();
    expect(await engine.jumpTo(DM, 10)).toBe(true);
    engine.setActive(DM);
    await settle();
    expect(server.fetches.filter((f) => f.conversation === DM)).toEqual([{ conversation: DM, before_seq: 11, limit: SYNC_LIMITS.aroundMessages }]);
    expect(seqs()[0]).toBe(1);
    expect(seqs()).toContain(10);
    expect(seqs().at(-1)).toBe(10 + SYNC_LIMITS.catchUpPageMessages);
    expect(contiguous(seqs())).toBe(true);
    expect(timeline()).toMatchObject({ status: 'ready', hasNewer: true, hasOlder: false });
  });

  it('keeps live events aside while detached, pages forward on request and attaches at the newest', async () => {
    server.storeMany(DM, bob.id, 450);
    await start();
    engine.setActive(DM);
    await settle();
    await engine.jumpTo(DM, 10);
    expect(timeline().hasNewer).toBe(true);
    const catchUps = server.eventFetches.length;

    const fresh = server.store(DM, bob.id, 'live while detached');
    deliver(live(fresh));
    await settle();
    // Not followed live, and no catch-up set off by the gap: the reader is reading old history.
    expect(server.eventFetches.length).toBe(catchUps);
    expect(seqs()).not.toContain(fresh.seq);
    expect(engine.getState().chats.find((c) => c.id === DM)!.lastMessage?.seq).toBe(fresh.seq);

    await engine.loadNewer(DM);
    expect(timeline().hasNewer).toBe(true);
    expect(contiguous(seqs())).toBe(true);
    await engine.loadNewer(DM);
    expect(timeline().hasNewer).toBe(false);
    expect(seqs().at(-1)).toBe(fresh.seq);
    expect(contiguous(seqs())).toBe(true);

    // Attached again: the next live message is followed at once.
    const next = server.store(DM, bob.id, 'attached');
    deliver(live(next));
    expect(seqs().at(-1)).toBe(next.seq);
  });

  it('stays where the reader is across a reconnect, and pages forward from there afterwards', async () => {
    server.storeMany(DM, bob.id, 450);
    await start();
    await engine.jumpTo(DM, 10);
    engine.setActive(DM);
    await settle();
    const before = seqs();
    engine.setSocketStatus('closed');
    engine.setSocketStatus('open');
    engine.handleFrame({ type: 'hello', user_id: alice.id });
    await settle();
    expect(seqs()).toEqual(before);
    expect(timeline().hasNewer).toBe(true);
    await engine.loadNewer(DM);
    expect(contiguous(seqs())).toBe(true);
    expect(seqs()[0]).toBe(before[0]);
  });

  it('applies edits and reactions that come after the window in seq order when paging forward', async () => {
    server.storeMany(DM, bob.id, 300);
    await start();
    await engine.jumpTo(DM, 5);
    engine.setActive(DM);
    await settle();
    server.record(DM, bob.id, { kind: 'edit', target_seq: 5, body: 'edited later' });
    server.record(DM, bob.id, { kind: 'reaction_added', target_seq: 250, emoji: '👍' });
    expect(timeline().messages.find((m) => m.seq === 5)!.body).toBe('msg 5');
    await engine.loadNewer(DM);
    await engine.loadNewer(DM);
    expect(timeline().hasNewer).toBe(false);
    expect(timeline().messages.find((m) => m.seq === 5)!.body).toBe('edited later');
    expect(timeline().messages.find((m) => m.seq === 250)!.reactions).toEqual([{ emoji: '👍', user_ids: [bob.id] }]);
  });

  it('goes back to the newest page on "Jump to latest", on sending, and when the chat is left', async () => {
    server.storeMany(DM, bob.id, 400);
    await start();
    engine.setActive(DM);
    await settle();
    await engine.jumpTo(DM, 10);
    await engine.jumpToLatest(DM);
    expect(seqs().at(-1)).toBe(400);
    expect(timeline().hasNewer).toBe(false);

    await engine.jumpTo(DM, 10);
    engine.send(DM, 'back to the present');
    await settle();
    expect(timeline().hasNewer).toBe(false);
    expect(seqs().at(-1)).toBe(400);
    expect(timeline().pending.map((p) => p.body)).toEqual(['back to the present']);

    await engine.jumpTo(DM, 10);
    engine.setActive(OTHER);
    await settle();
    expect(engine.getState().timelines[DM]).toBeUndefined();
  });

  it('drops the answer of a load that a jump replaced', async () => {
    server.storeMany(DM, bob.id, 400);
    await start();
    // Opening starts the newest page; the jump asked right after it wins.
    engine.setActive(DM);
    const jumped = engine.jumpTo(DM, 10);
    await settle();
    expect(await jumped).toBe(true);
    expect(seqs()).toContain(10);
    expect(seqs()[0]).toBe(1);
    expect(contiguous(seqs())).toBe(true);
  });

  it('does not put an older page in front of a window that replaced what it was paged for', async () => {
    server.storeMany(DM, bob.id, 400);
    await start();
    await engine.jumpTo(DM, 300);
    engine.setActive(DM);
    await settle();
    const older = engine.loadOlder(DM);
    const jumped = engine.jumpTo(DM, 20);
    await Promise.all([older, jumped]);
    await settle();
    expect(seqs()).toContain(20);
    expect(contiguous(seqs())).toBe(true);
  });

  it('says so when the window cannot be loaded', async () => {
    server.storeMany(DM, bob.id, 400);
    await start();
    server.httpUp = false;
    expect(await engine.jumpTo(DM, 10)).toBe(false);
    expect(timeline()).toMatchObject({ status: 'error' });
  });
});
