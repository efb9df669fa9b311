import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import type { ConversationEvent, Message, ServerFrame } from '../api/types.ts';
import { FakeClock } from '../../test/fakeClock.ts';
import { FakeServer, settle } from '../../test/fakeServer.ts';
import { SendRejected, SyncEngine, SYNC_LIMITS, type IncomingMessage } from './engine.ts';

const alice = { id: 'u-alice', username: 'alice' };
const bob = { id: 'u-bob', username: 'bob' };
const carol = { id: 'u-carol', username: 'carol' };
const DM = 'c-dm';
const GROUP = 'c-group';

let server: FakeServer;
let clock: FakeClock;
let engine: SyncEngine;
let incoming: IncomingMessage[];
let nextClientId: number;

function makeEngine(): SyncEngine {
  const e = new SyncEngine({
    me: alice,
    transport: server.transportFor(alice.id),
    clock,
    newClientMsgId: () => `cm-${nextClientId++}`,
    random: () => 0.5,
  });
  e.onIncoming((m) => incoming.push(m));
  return e;
}

/** The socket connected and the server said hello. */
async function connect(): Promise<void> {
  server.socketUp = true;
  engine.setSocketStatus('connecting');
  engine.setSocketStatus('open');
  engine.handleFrame({ type: 'hello', user_id: alice.id });
  await settle();
}

function disconnect(): void {
  server.socketUp = false;
  engine.setSocketStatus('closed');
}

function deliver(...frames: ServerFrame[]): void {
  for (const frame of frames) engine.handleFrame(frame);
}

function live(message: Message): ServerFrame {
  return { type: 'message', message };
}

function seqs(id = DM): number[] {
  return engine.getState().timelines[id]!.messages.map((m) => m.seq);
}

function bodies(id = DM): string[] {
  return engine.getState().timelines[id]!.messages.map((m) => m.body);
}

function chat(id = DM) {
  const found = engine.getState().chats.find((c) => c.id === id);
  if (!found) throw new Error(`no chat ${id}`);
  return found;
}

function member(id: string, user: string) {
  return chat(id).members.find((m) => m.id === user);
}

async function open(id = DM): Promise<void> {
  engine.setActive(id);
  await settle();
}

beforeEach(async () => {
  server = new FakeServer([alice, bob, carol]);
  server.addConversation(DM, [alice.id, bob.id]);
  server.addConversation(GROUP, [alice.id, bob.id, carol.id], { kind: 'group', title: 'Team' });
  clock = new FakeClock();
  incoming = [];
  nextClientId = 1;
  engine = makeEngine();
});

afterEach(() => {
  engine.dispose();
});

describe('chat list', () => {
  it('titles a direct chat with the other member and a group with its title', async () => {
    await engine.start();
    const titles = engine.getState().chats.map((c) => c.title).sort();
    expect(titles).toEqual(['Team', 'bob']);
    expect(chat(DM).peerId).toBe(bob.id);
    expect(engine.getState().chatsStatus).toBe('ready');
  });

  it('counts unread messages from others and clears them when the chat is read', async () => {
    server.storeMany(DM, bob.id, 2);
    await engine.start();
    await connect();
    expect(chat(DM).unread).toBe(2);

    const third = server.store(DM, bob.id, 'third');
    deliver(live(third));
    expect(chat(DM).unread).toBe(3);
    deliver(live(third)); // the same message again is not counted twice
    expect(chat(DM).unread).toBe(3);

    await open(DM);
    expect(chat(DM).unread).toBe(0);
    expect(server.markReads).toEqual([{ conversation: DM, seq: 3 }]);
  });

  it('does not count messages in the open conversation while the tab is visible', async () => {
    await engine.start();
    await connect();
    await open(DM);
    deliver(live(server.store(DM, bob.id, 'hi')));
    await settle();
    expect(chat(DM).unread).toBe(0);
    expect(server.markReads.at(-1)).toEqual({ conversation: DM, seq: 1 });
  });

  it('counts messages in the open conversation while the tab is hidden, and reads them on return', async () => {
    await engine.start();
    await connect();
    await open(DM);
    engine.setVisible(false);
    deliver(live(server.store(DM, bob.id, 'while away')));
    expect(chat(DM).unread).toBe(1);
    engine.setVisible(true);
    await settle();
    expect(chat(DM).unread).toBe(0);
  });

  it('moves a chat with a new message to the top', async () => {
    server.store(GROUP, bob.id, 'older');
    clock.advance(1);
    await engine.start();
    await connect();
    expect(engine.getState().chats[0]!.id).toBe(GROUP);
    deliver(live(server.store(DM, bob.id, 'newer')));
    expect(engine.getState().chats.map((c) => c.id)).toEqual([DM, GROUP]);
    expect(chat(DM).lastMessage?.body).toBe('newer');
  });

  it('learns of a new conversation from its first message and notifies about it', async () => {
    await engine.start();
    await connect();
    server.addConversation('c-new', [alice.id, carol.id]);
    deliver({ type: 'typing', conversation_id: 'c-new', user_id: carol.id });
    deliver(live(server.store('c-new', carol.id, 'hello there')));
    await settle();
    expect(chat('c-new').title).toBe('carol');
    expect(chat('c-new').unread).toBe(1);
    expect(incoming.map((i) => [i.sender, i.message.body])).toEqual([['carol', 'hello there']]);
    expect(engine.getState().typing['c-new']).toBeUndefined();
  });

  it('refetches the list again if it changed while a fetch was running', async () => {
    await engine.start();
    const first = engine.refreshChats();
    server.addConversation('c-late', [alice.id, carol.id]);
    const second = engine.refreshChats();
    await Promise.all([first, second]);
    expect(engine.getState().chats.map((c) => c.id)).toContain('c-late');
  });
});

describe('history', () => {
  it('opens on the newest page and pages upward until the first message', async () => {
    server.storeMany(DM, bob.id, 120);
    await engine.start();
    await connect();
    await open(DM);
    expect(seqs()).toEqual(range(71, 120));
    expect(engine.getState().timelines[DM]!.hasOlder).toBe(true);

    let notified = 0;
    engine.subscribe(() => notified++);
    await engine.loadOlder(DM);
    expect(seqs()).toEqual(range(21, 120));
    expect(notified).toBeGreaterThan(0);
    await engine.loadOlder(DM);
    expect(seqs()).toEqual(range(1, 120));
    expect(engine.getState().timelines[DM]!.hasOlder).toBe(false);
    const before = server.fetches.filter((f) => f.before_seq !== undefined).map((f) => f.before_seq);
    expect(before).toEqual([71, 21]);
  });

  it('shows an empty conversation as ready with nothing older', async () => {
    await engine.start();
    await open(DM);
    const timeline = engine.getState().timelines[DM]!;
    expect(timeline.status).toBe('ready');
    expect(timeline.messages).toEqual([]);
    expect(timeline.hasOlder).toBe(false);
  });

  it('reports a failed load and reloads on the next connect', async () => {
    server.storeMany(DM, bob.id, 3);
    await engine.start();
    server.httpUp = false;
    await open(DM);
    expect(engine.getState().timelines[DM]!.status).toBe('error');
    server.httpUp = true;
    await connect();
    expect(engine.getState().timelines[DM]!.status).toBe('ready');
    expect(seqs()).toEqual([1, 2, 3]);
  });
});

describe('live messages, gaps, duplicates and reordering', () => {
  beforeEach(async () => {
    server.storeMany(DM, bob.id, 3);
    await engine.start();
    await connect();
    await open(DM);
  });

  it('appends the next message', () => {
    deliver(live(server.store(DM, bob.id, 'four')));
    expect(seqs()).toEqual([1, 2, 3, 4]);
  });

  it('ignores a message it already has, live or from a page', async () => {
    const four = server.store(DM, bob.id, 'four');
    deliver(live(four), live(four), live(server.messages.get(DM)![0]!));
    expect(seqs()).toEqual([1, 2, 3, 4]);
    expect(incoming).toHaveLength(1);
  });

  it('fills a gap from the store with after_seq and shows everything once, in order', async () => {
    server.store(DM, bob.id, 'four (lost)');
    server.store(DM, bob.id, 'five (lost)');
    const six = server.store(DM, bob.id, 'six');
    deliver(live(six));
    // Not shown before the gap is filled: order matters more than speed.
    expect(seqs()).toEqual([1, 2, 3]);
    await settle();
    expect(seqs()).toEqual([1, 2, 3, 4, 5, 6]);
    expect(server.eventFetches.at(-1)).toEqual({ conversation: DM, after_seq: 3 });
  });

  it('puts messages that arrive out of order back in order', async () => {
    const four = server.store(DM, bob.id, 'four');
    const five = server.store(DM, bob.id, 'five');
    const six = server.store(DM, bob.id, 'six');
    deliver(live(six), live(five), live(four), live(six));
    await settle();
    expect(bodies().slice(3)).toEqual(['four', 'five', 'six']);
    expect(seqs()).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('catches up every open conversation on reconnect', async () => {
    disconnect();
    server.storeMany(DM, bob.id, 4, 'missed');
    await connect();
    expect(seqs()).toEqual(range(1, 7));
    expect(server.eventFetches).toContainEqual({ conversation: DM, after_seq: 3 });
  });

  it('jumps to the newest page instead of paging through a very long absence', async () => {
    disconnect();
    const missed = SYNC_LIMITS.catchUpPageMessages * SYNC_LIMITS.catchUpRoundsMax + 30;
    server.storeMany(DM, bob.id, missed, 'missed');
    await connect();
    const last = 3 + missed;
    expect(seqs()).toEqual(range(last - SYNC_LIMITS.pageMessages + 1, last));
    expect(engine.getState().timelines[DM]!.hasOlder).toBe(true);
  });

  it('retries a catch-up when the store is behind the live stream', async () => {
    // The socket shows seq 5 before the store answers it (a lagging replica, say).
    const five: Message = { ...server.store(DM, bob.id, 'x'), seq: 5, id: 'm-future', body: 'five' };
    server.messages.get(DM)!.pop();
    server.events.get(DM)!.pop();
    deliver(live(five));
    await settle();
    expect(seqs()).toEqual([1, 2, 3]);
    server.store(DM, bob.id, 'four');
    server.store(DM, bob.id, 'five');
    clock.advance(SYNC_LIMITS.retryMaxMs);
    await settle();
    expect(seqs()).toEqual([1, 2, 3, 4, 5]);
  });
});

describe('sending: pending → sent', () => {
  beforeEach(async () => {
    await engine.start();
    await connect();
    await open(DM);
  });

  function pending() {
    return engine.getState().timelines[DM]!.pending;
  }

  it('shows a message as pending until the server pushes it back with a seq', () => {
    const id = engine.send(DM, 'hello bob');
    expect(pending()).toMatchObject([{ clientMsgId: id, body: 'hello bob', state: 'sending' }]);
    expect(server.received).toEqual([{ type: 'event', conversation_id: DM, client_msg_id: id, kind: 'message', body: 'hello bob' }]);

    const [accepted, message] = server.processSends(alice.id);
    deliver(accepted!);
    expect(pending()[0]!.state).toBe('accepted');
    deliver(message!);
    expect(pending()).toEqual([]);
    expect(bodies()).toEqual(['hello bob']);
  });

  it('refuses empty and oversized bodies before they become pending', () => {
    expect(() => engine.send(DM, '  \n ')).toThrow(SendRejected);
    expect(() => engine.send(DM, 'é'.repeat(8 * 1024 + 1))).toThrow(SendRejected);
    expect(() => engine.send(DM, 'é'.repeat(8 * 1024))).not.toThrow();
  });

  it('keeps messages typed offline and sends them in order after reconnect', async () => {
    disconnect();
    const first = engine.send(DM, 'one');
    const second = engine.send(DM, 'two');
    expect(pending().map((p) => p.state)).toEqual(['queued', 'queued']);
    expect(server.received).toEqual([]);

    await connect();
    expect(server.received.map((f) => (f.type === 'event' ? f.client_msg_id : f.type))).toEqual([first, second]);
    deliver(...server.processSends(alice.id));
    expect(bodies()).toEqual(['one', 'two']);
    expect(pending()).toEqual([]);
  });

  it('sends the ids of uploaded files with the message, an empty body allowed, and shows them while pending', async () => {
    const photo = server.upload('photo.jpg', 2048, 'image/jpeg', { width: 640, height: 480 });
    const id = engine.send(DM, '', null, [photo]);
    expect(server.received).toEqual([{ type: 'event', conversation_id: DM, client_msg_id: id, kind: 'message', body: '', files: [photo.id] }]);
    expect(pending()).toMatchObject([{ clientMsgId: id, body: '', files: [photo] }]);
    deliver(...server.processSends(alice.id));
    expect(pending()).toEqual([]);
    expect(engine.getState().timelines[DM]!.messages.map((m) => m.files)).toEqual([[photo]]);
    expect(chat().lastMessage?.files).toEqual([photo]);
  });

  it('keeps a message with files pending offline and resends it with the same files after reconnect', async () => {
    const doc = server.upload('report.pdf', 12_345, 'application/pdf');
    disconnect();
    const id = engine.send(DM, 'the report', null, [doc]);
    expect(pending()[0]!.state).toBe('queued');
    await connect();
    expect(server.received).toEqual([
      { type: 'event', conversation_id: DM, client_msg_id: id, kind: 'message', body: 'the report', files: [doc.id] },
    ]);
    deliver(...server.processSends(alice.id));
    expect(engine.getState().timelines[DM]!.messages.map((m) => [m.body, m.files?.map((f) => f.name)])).toEqual([['the report', ['report.pdf']]]);
  });

  it('marks a message failed when the server knows none of its files, and refuses more than ten', () => {
    const id = engine.send(DM, 'gone', null, [{ id: 'f-expired', name: 'old.txt', content_type: 'text/plain', size: 3 }]);
    deliver(...server.processSends(alice.id));
    expect(pending()).toMatchObject([{ clientMsgId: id, state: 'failed', error: 'no such file' }]);
    const many = Array.from({ length: 11 }, (_, i) => server.upload(`${i}.txt`, 1, 'text/plain'));
    expect(() => engine.send(DM, '', null, many)).toThrow(/at most 10 files/);
    expect(() => engine.send(DM, '', null, [])).toThrow(SendRejected);
  });

  it('a deleted message shows no files', async () => {
    const photo = server.upload('photo.jpg', 2048, 'image/jpeg', { width: 640, height: 480 });
    engine.send(DM, 'look', null, [photo]);
    deliver(...server.processSends(alice.id));
    const seq = seqs()[0]!;
    engine.deleteMessage(DM, seq);
    expect(engine.getState().timelines[DM]!.messages[0]).toMatchObject({ deleted: true });
    expect(engine.getState().timelines[DM]!.messages[0]!.files).toBeUndefined();
  });

  it('resends an unconfirmed message with the same client_msg_id after a reconnect', async () => {
    const id = engine.send(DM, 'lost on the way');
    server.received.splice(0); // the frame died with the socket
    disconnect();
    await connect();
    expect(server.received).toEqual([{ type: 'event', conversation_id: DM, client_msg_id: id, kind: 'message', body: 'lost on the way' }]);
  });

  it('does not duplicate a message that was stored before the socket dropped', async () => {
    const id = engine.send(DM, 'stored, ack lost');
    server.processSends(alice.id); // stored, but neither accepted nor message arrives
    disconnect();
    await connect();
    // The catch-up found it: shown once, as sent, and not sent again.
    expect(bodies()).toEqual(['stored, ack lost']);
    expect(pending()).toEqual([]);
    expect(server.received.filter((f) => f.type === 'event')).toEqual([]);
    expect(server.messages.get(DM)!.filter((m) => m.client_msg_id === id)).toHaveLength(1);
  });

  it('shows a message once when the server pushes the resent copy again', async () => {
    engine.send(DM, 'twice');
    const frames = server.processSends(alice.id);
    disconnect();
    await connect();
    deliver(...frames, ...frames);
    expect(bodies()).toEqual(['twice']);
  });

  it('asks the store when an accepted message never arrives', async () => {
    engine.send(DM, 'accepted only');
    const [accepted] = server.processSends(alice.id);
    deliver(accepted!);
    clock.advance(SYNC_LIMITS.acceptedConfirmMs);
    await settle();
    expect(bodies()).toEqual(['accepted only']);
    expect(pending()).toEqual([]);
  });

  it('sends again with the same client_msg_id when no accepted comes back', () => {
    const id = engine.send(DM, 'into the void');
    server.received.splice(0);
    clock.advance(SYNC_LIMITS.sendConfirmMs);
    expect(server.received).toEqual([{ type: 'event', conversation_id: DM, client_msg_id: id, kind: 'message', body: 'into the void' }]);
    deliver(...server.processSends(alice.id));
    expect(pending()).toEqual([]);
    expect(bodies()).toEqual(['into the void']);
    clock.advance(SYNC_LIMITS.sendConfirmMs * 3);
    expect(server.received).toEqual([]);
  });

  it('keeps a rate-limited message pending and sends it again later', async () => {
    const id = engine.send(DM, 'slow down');
    server.received.splice(0);
    deliver({ type: 'error', code: 'rate_limited', message: 'too many messages', client_msg_id: id });
    expect(pending()[0]!.state).toBe('queued');
    clock.advance(SYNC_LIMITS.retryInitialMs / 2);
    expect(server.received).toEqual([]);
    clock.advance(SYNC_LIMITS.retryInitialMs * 1.5); // backoff with jitter: within [1 s, 2 s]
    expect(server.received).toEqual([{ type: 'event', conversation_id: DM, client_msg_id: id, kind: 'message', body: 'slow down' }]);
  });

  it('waits as long as the server asks before sending again, and out of disk space too', () => {
    const id = engine.send(DM, 'later');
    server.received.splice(0);
    const wait = SYNC_LIMITS.retryInitialMs * 5;
    deliver({ type: 'error', code: 'rate_limited', message: 'slow down', client_msg_id: id, retry_after_ms: wait });
    clock.advance(wait - 1);
    expect(server.received).toEqual([]);
    clock.advance(1);
    expect(server.received).toEqual([{ type: 'event', conversation_id: DM, client_msg_id: id, kind: 'message', body: 'later' }]);
    server.received.splice(0);
    deliver({ type: 'error', code: 'storage_full', message: 'out of disk space', client_msg_id: id });
    expect(pending()[0]!.state).toBe('queued');
    clock.advance(SYNC_LIMITS.retryMaxMs);
    expect(server.received[0]).toEqual({ type: 'event', conversation_id: DM, client_msg_id: id, kind: 'message', body: 'later' });
  });

  it('marks a refused message failed and retries it by hand with the same id', () => {
    const id = engine.send(DM, 'refused');
    server.received.splice(0);
    deliver({ type: 'error', code: 'invalid_input', message: 'nope', client_msg_id: id });
    expect(pending()[0]).toMatchObject({ state: 'failed', error: 'nope' });
    engine.retry(id);
    expect(pending()[0]!.state).toBe('sending');
    expect(server.received).toEqual([{ type: 'event', conversation_id: DM, client_msg_id: id, kind: 'message', body: 'refused' }]);
    engine.discard(id);
    expect(pending()).toEqual([]);
  });

  it('is sent, not unread, for the sender', () => {
    engine.setActive(null);
    engine.send(DM, 'mine');
    deliver(...server.processSends(alice.id));
    expect(chat(DM).unread).toBe(0);
    expect(incoming).toEqual([]);
  });
});

describe('typing, presence, read receipts', () => {
  beforeEach(async () => {
    await engine.start();
    await connect();
    await open(DM);
  });

  it('shows who is typing for a while, and not once their message arrives', () => {
    deliver({ type: 'typing', conversation_id: DM, user_id: bob.id });
    expect(engine.getState().typing[DM]).toEqual([bob.id]);
    clock.advance(SYNC_LIMITS.typingShownMs - 1);
    expect(engine.getState().typing[DM]).toEqual([bob.id]);
    clock.advance(1);
    expect(engine.getState().typing[DM]).toBeUndefined();

    deliver({ type: 'typing', conversation_id: DM, user_id: bob.id });
    deliver(live(server.store(DM, bob.id, 'done typing')));
    expect(engine.getState().typing[DM]).toBeUndefined();
  });

  it('sends typing at most once per interval', () => {
    engine.typingIn(DM);
    engine.typingIn(DM);
    clock.advance(SYNC_LIMITS.typingSendIntervalMs);
    engine.typingIn(DM);
    expect(server.received).toEqual([
      { type: 'typing', conversation_id: DM },
      { type: 'typing', conversation_id: DM },
    ]);
  });

  it('follows presence frames', () => {
    expect(engine.getState().presence[bob.id]?.online).toBe(false);
    deliver({ type: 'presence', user_id: bob.id, online: true, last_seen: null });
    expect(engine.getState().presence[bob.id]?.online).toBe(true);
    deliver({ type: 'presence', user_id: bob.id, online: false, last_seen: '2026-11-28T12:00:00Z' });
    expect(engine.getState().presence[bob.id]).toEqual({ online: false, lastSeen: '2026-11-28T12:00:00Z' });
  });

  it('records how far the others have read and received, never backwards', () => {
    deliver({ type: 'delivered', conversation_id: DM, user_id: bob.id, seq: 2 });
    expect(member(DM, bob.id)).toMatchObject({ last_delivered_seq: 2, last_read_seq: 0 });
    deliver({ type: 'read', conversation_id: DM, user_id: bob.id, seq: 4 });
    expect(member(DM, bob.id)).toMatchObject({ last_delivered_seq: 4, last_read_seq: 4 });
    deliver({ type: 'read', conversation_id: DM, user_id: bob.id, seq: 3 });
    expect(member(DM, bob.id)!.last_read_seq).toBe(4);
  });

  it('clears unread when this user reads on another device', async () => {
    engine.setActive(null);
    deliver(live(server.store(DM, bob.id, 'a')), live(server.store(DM, bob.id, 'b')));
    expect(chat(DM).unread).toBe(2);
    deliver({ type: 'read', conversation_id: DM, user_id: alice.id, seq: 2 });
    expect(chat(DM).unread).toBe(0);
  });
});

function event(e: ConversationEvent): ServerFrame {
  return { type: 'event', event: e };
}

describe('events: edits, deletes, reactions', () => {
  beforeEach(async () => {
    server.storeMany(DM, bob.id, 2);
    server.store(GROUP, carol.id, 'older group message');
    await engine.start();
    await connect();
    await open(DM);
  });

  it('applies edits, reactions and deletes to the messages held and to the preview', () => {
    deliver(event(server.record(DM, bob.id, { kind: 'edit', target_seq: 2, body: 'msg 2, fixed' })));
    expect(bodies()).toEqual(['msg 1', 'msg 2, fixed']);
    expect(engine.getState().timelines[DM]!.messages[1]!.edited_at).toBeDefined();
    expect(chat(DM).lastMessage?.body).toBe('msg 2, fixed');

    deliver(event(server.record(DM, bob.id, { kind: 'reaction_added', target_seq: 1, emoji: '👍' })));
    expect(engine.getState().timelines[DM]!.messages[0]!.reactions).toEqual([{ emoji: '👍', user_ids: [bob.id] }]);

    deliver(event(server.record(DM, bob.id, { kind: 'delete', target_seq: 1 })));
    expect(engine.getState().timelines[DM]!.messages[0]).toMatchObject({ body: '', deleted: true });
    expect(seqs()).toEqual([1, 2]);
  });

  it('does not move a chat up for a reaction or an edit', () => {
    engine.setActive(null);
    deliver(live(server.store(GROUP, carol.id, 'newest')));
    expect(engine.getState().chats[0]!.id).toBe(GROUP);
    deliver(event(server.record(DM, bob.id, { kind: 'reaction_added', target_seq: 1, emoji: '🎉' })));
    expect(engine.getState().chats[0]!.id).toBe(GROUP);
    expect(chat(DM).lastSeq).toBe(3);
  });

  it('fills a gap of any kind of event from the events endpoint', async () => {
    server.record(DM, bob.id, { kind: 'reaction_added', target_seq: 2, emoji: '❤️' });
    const next = server.store(DM, bob.id, 'after the lost reaction');
    deliver(live(next));
    await settle();
    expect(seqs()).toEqual([1, 2, 4]);
    expect(engine.getState().timelines[DM]!.messages[1]!.reactions?.[0]?.emoji).toBe('❤️');
    expect(server.eventFetches.at(-1)).toEqual({ conversation: DM, after_seq: 2 });
  });

  it('shows my edit at once, and drops it with a visible reason when the server refuses', () => {
    const mine = server.store(DM, alice.id, 'tpyo');
    deliver(live(mine));
    const id = engine.edit(DM, mine.seq, 'typo');
    expect(server.received.at(-1)).toEqual({ type: 'event', conversation_id: DM, client_msg_id: id, kind: 'edit', target_seq: mine.seq, body: 'typo' });
    expect(bodies().at(-1)).toBe('typo');
    deliver({ type: 'error', code: 'forbidden', message: 'you may not', client_msg_id: id });
    expect(bodies().at(-1)).toBe('tpyo');
    expect(engine.getState().notices.map((n) => n.text)).toEqual(['Could not edit the message: you may not']);
    engine.dismissNotice(engine.getState().notices[0]!.id);
    expect(engine.getState().notices).toEqual([]);
  });

  it('is pending until its event comes back, then shows the stored state', () => {
    engine.toggleReaction(DM, 1, '👍');
    expect(engine.getState().timelines[DM]!.messages[0]!.reactions).toEqual([{ emoji: '👍', user_ids: [alice.id] }]);
    deliver(...server.processSends(alice.id));
    expect(engine.getState().timelines[DM]!.messages[0]!.reactions).toEqual([{ emoji: '👍', user_ids: [alice.id] }]);
    // Toggling again takes it back.
    const id = engine.toggleReaction(DM, 1, '👍');
    expect(server.received.at(-1)).toMatchObject({ type: 'event', client_msg_id: id, kind: 'reaction_removed', emoji: '👍' });
    deliver(...server.processSends(alice.id));
    expect(engine.getState().timelines[DM]!.messages[0]!.reactions).toBeUndefined();
  });

  it('resends a change after a reconnect with the same client_msg_id', async () => {
    const id = engine.deleteMessage(DM, 2);
    server.received.splice(0);
    disconnect();
    await connect();
    expect(server.received.filter((f) => f.type === 'event')).toEqual([
      { type: 'event', conversation_id: DM, client_msg_id: id, kind: 'delete', target_seq: 2 },
    ]);
  });

  it('sends a reply with the seq it answers', () => {
    const id = engine.send(DM, 'answer', 1);
    expect(server.received.at(-1)).toEqual({ type: 'event', conversation_id: DM, client_msg_id: id, kind: 'message', body: 'answer', reply_to_seq: 1 });
    expect(engine.getState().timelines[DM]!.pending[0]!.replyToSeq).toBe(1);
    deliver(...server.processSends(alice.id));
    expect(engine.getState().timelines[DM]!.messages.at(-1)!.reply_to).toEqual({ seq: 1, sender_id: bob.id, excerpt: 'msg 1' });
  });

  it('pages history in until a replied-to message is held', async () => {
    server.storeMany(DM, bob.id, 120, 'more');
    disconnect();
    await connect();
    engine.setActive(null);
    engine.setActive(DM);
    await settle();
    expect(await engine.loadUntil(DM, 1)).toBe(true);
    expect(seqs()[0]).toBe(1);
  });
});

describe('events: members, titles, roles, mute', () => {
  beforeEach(async () => {
    await engine.start();
    await connect();
  });

  it('updates members, roles and the title of a chat that is not open', () => {
    deliver(event(server.record(GROUP, alice.id, { kind: 'title_changed', title: 'Dream team' })));
    expect(chat(GROUP).title).toBe('Dream team');
    deliver(event(server.record(GROUP, alice.id, { kind: 'role_changed', user_id: bob.id, role: 'admin' })));
    expect(member(GROUP, bob.id)!.role).toBe('admin');
    deliver(event(server.record(GROUP, carol.id, { kind: 'member_left' })));
    expect(chat(GROUP).members.map((m) => m.username)).toEqual(['alice', 'bob']);
    expect(chat(GROUP).isAdmin).toBe(true);
  });

  it('shows member and title events as notices in an open timeline', async () => {
    await open(GROUP);
    deliver(event(server.record(GROUP, alice.id, { kind: 'title_changed', title: 'Dream team' })));
    expect(engine.getState().timelines[GROUP]!.notices.map((n) => n.kind)).toEqual(['title_changed']);
  });

  it('catches up events after the newest message when a chat opens', async () => {
    server.store(GROUP, bob.id, 'hello');
    server.record(GROUP, alice.id, { kind: 'title_changed', title: 'Renamed' });
    disconnect();
    await connect();
    await open(GROUP);
    expect(engine.getState().timelines[GROUP]!.notices.map((n) => n.seq)).toEqual([2]);
    expect(server.eventFetches).toContainEqual({ conversation: GROUP, after_seq: 1 });
  });

  it('shows the member and title events between the messages of a page as notices', async () => {
    server.store(GROUP, bob.id, 'first');
    server.record(GROUP, alice.id, { kind: 'title_changed', title: 'Renamed' });
    server.store(GROUP, bob.id, 'second');
    disconnect();
    await connect();
    await open(GROUP);
    expect(engine.getState().timelines[GROUP]!.notices.map((n) => n.seq)).toEqual([2]);
  });

  it('adds a row from a conversation frame', () => {
    const row = server.addConversation('c-live', [carol.id, alice.id], { kind: 'group', title: 'Live' });
    deliver({ type: 'conversation', conversation: row });
    expect(chat('c-live').title).toBe('Live');
    expect(engine.getState().chats[0]!.id).toBe('c-live');
  });

  it('fetches and adds a conversation I was added to', async () => {
    server.addConversation('c-added', [carol.id, bob.id], { kind: 'group', title: 'Added' });
    const added = server.record('c-added', carol.id, { kind: 'member_added', user_id: alice.id });
    deliver(event(added));
    await settle();
    expect(chat('c-added').members.map((m) => m.id)).toContain(alice.id);
  });

  it('drops a conversation I was removed from, says so, and forgets its timeline', async () => {
    await open(GROUP);
    deliver(event(server.record(GROUP, bob.id, { kind: 'member_removed', user_id: alice.id })));
    expect(engine.getState().chats.map((c) => c.id)).toEqual([DM]);
    expect(engine.getState().timelines[GROUP]).toBeUndefined();
    expect(engine.getState().notices.map((n) => n.text)).toEqual(['bob removed you from Team.']);
  });

  it('drops a group I left, without a notice', () => {
    engine.leave(GROUP);
    deliver(...server.processSends(alice.id));
    expect(engine.getState().chats.map((c) => c.id)).toEqual([DM]);
    expect(engine.getState().notices).toEqual([]);
  });

  it('follows mute from this and other devices, and undoes a refused one', async () => {
    engine.setMuted(DM, true);
    expect(chat(DM).muted).toBe(true);
    await settle();
    expect(server.muted.has(`${DM}/${alice.id}`)).toBe(true);
    deliver({ type: 'muted', conversation_id: DM, muted: false });
    expect(chat(DM).muted).toBe(false);
    server.httpUp = false;
    engine.setMuted(DM, true);
    await settle();
    expect(chat(DM).muted).toBe(false);
    expect(engine.getState().notices).toHaveLength(1);
  });
});

describe('mentions', () => {
  it('counts unread mentions from the list and live, clears them on reading, and says so to listeners', async () => {
    server.store(GROUP, bob.id, 'hey @alice');
    server.store(GROUP, bob.id, 'no mention');
    await engine.start();
    await connect();
    expect(chat(GROUP)).toMatchObject({ unread: 2, unreadMentions: 1 });
    deliver(live(server.store(GROUP, carol.id, '@alice look')));
    expect(chat(GROUP)).toMatchObject({ unread: 3, unreadMentions: 2 });
    expect(incoming.at(-1)!.mentionsMe).toBe(true);
    await open(GROUP);
    expect(chat(GROUP)).toMatchObject({ unread: 0, unreadMentions: 0 });
  });
});

describe('delivered and read markers', () => {
  beforeEach(async () => {
    server.storeMany(DM, bob.id, 2);
    await engine.start();
  });

  function delivered() {
    return server.received.filter((f) => f.type === 'delivered');
  }

  it('announces the newest seq received per conversation, once per burst', async () => {
    await connect();
    clock.advance(SYNC_LIMITS.deliveredCoalesceMs);
    expect(delivered()).toEqual([{ type: 'delivered', conversation_id: DM, seq: 2 }]);
    deliver(live(server.store(DM, bob.id, 'a')), live(server.store(DM, bob.id, 'b')));
    clock.advance(SYNC_LIMITS.deliveredCoalesceMs - 1);
    expect(delivered()).toHaveLength(1);
    clock.advance(1);
    expect(delivered().at(-1)).toEqual({ type: 'delivered', conversation_id: DM, seq: 4 });
    expect(delivered()).toHaveLength(2);
    clock.advance(SYNC_LIMITS.deliveredCoalesceMs * 4);
    expect(delivered()).toHaveLength(2);
  });

  it('does not announce what was read already, and waits for a connection to announce', async () => {
    await connect();
    await open(DM);
    clock.advance(SYNC_LIMITS.deliveredCoalesceMs);
    expect(delivered()).toEqual([]);
    engine.setActive(null);
    disconnect();
    deliver(live(server.store(DM, bob.id, 'while the socket drops')));
    clock.advance(SYNC_LIMITS.deliveredCoalesceMs);
    expect(delivered()).toEqual([]);
    await connect();
    clock.advance(SYNC_LIMITS.deliveredCoalesceMs);
    expect(delivered()).toEqual([{ type: 'delivered', conversation_id: DM, seq: 3 }]);
  });

  it('keeps the members\' markers of the chat list, so "Seen" survives a reload', async () => {
    server.store(DM, alice.id, 'mine');
    server.readMarkers.set(`${DM}/${bob.id}`, 3);
    await engine.refreshChats();
    expect(member(DM, bob.id)).toMatchObject({ last_read_seq: 3, last_delivered_seq: 3 });
    deliver({ type: 'read', conversation_id: DM, user_id: bob.id, seq: 4 });
    server.readMarkers.set(`${DM}/${bob.id}`, 2);
    await engine.refreshChats();
    expect(member(DM, bob.id)!.last_read_seq).toBe(4);
  });
});

describe('snapshots', () => {
  it('keeps unchanged parts identical so React can skip them', async () => {
    server.storeMany(GROUP, bob.id, 2);
    await engine.start();
    await connect();
    await open(GROUP);
    await open(DM);
    const before = engine.getState();
    deliver(live(server.store(DM, bob.id, 'only the dm changes')));
    const after = engine.getState();
    expect(after).not.toBe(before);
    expect(after.timelines[GROUP]).toBe(before.timelines[GROUP]);
    expect(after.timelines[DM]).not.toBe(before.timelines[DM]);
    expect(engine.getState()).toBe(after);
  });
});

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}
