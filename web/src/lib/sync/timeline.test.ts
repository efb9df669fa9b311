import { describe, expect, it } from 'vitest';

import type { ConversationEvent, Message } from '../api/types.ts';
import { messageEvent } from '../api/types.ts';
import { AHEAD_MAX, Timeline, TIMELINE_MESSAGES_MAX } from './timeline.ts';

const AT = '2026-11-28T12:00:00Z';

function msg(seq: number, extra: Partial<Message> = {}): Message {
  return {
    id: `m${seq}`,
    conversation_id: 'c',
    seq,
    sender_id: 'u',
    client_msg_id: `cm${seq}`,
    body: `body ${seq}`,
    created_at: AT,
    ...extra,
  };
}

function ev(seq: number): ConversationEvent {
  return messageEvent(msg(seq));
}

function change(seq: number, data: Record<string, unknown>, sender = 'u'): ConversationEvent {
  return { conversation_id: 'c', seq, sender_id: sender, client_msg_id: `e${seq}`, created_at: AT, ...data } as ConversationEvent;
}

function seqs(t: Timeline): number[] {
  return t.messages.map((m) => m.seq);
}

describe('Timeline', () => {
  it('starts empty with the whole (empty) history loaded', () => {
    const t = new Timeline();
    expect(t.lastSeq).toBe(0);
    expect(t.hasOlder).toBe(false);
    expect(t.insert(ev(1))).toBe('appended');
    expect(seqs(t)).toEqual([1]);
  });

  it('keeps an event beyond a gap aside and applies it once the gap is filled', () => {
    const t = new Timeline();
    t.reset([msg(1), msg(2)], 50);
    expect(t.insert(ev(5))).toBe('gap');
    expect(t.insert(change(4, { kind: 'reaction_added', target_seq: 2, emoji: '👍' }))).toBe('gap');
    expect(seqs(t)).toEqual([1, 2]);
    expect(t.insert(change(3, { kind: 'edit', target_seq: 1, body: 'fixed' }))).toBe('appended');
    expect(seqs(t)).toEqual([1, 2, 5]);
    expect(t.lastSeq).toBe(5);
    expect(t.messages[0]).toMatchObject({ body: 'fixed', edited_at: AT });
    expect(t.messages[1]!.reactions).toEqual([{ emoji: '👍', user_ids: ['u'] }]);
    expect(t.hasGap).toBe(false);
  });

  it('ignores repeats and events it already applied', () => {
    const t = new Timeline();
    t.reset([msg(10), msg(11)], 50);
    expect(t.insert(ev(11))).toBe('duplicate');
    expect(t.insert(ev(3))).toBe('duplicate');
    t.insert(ev(13));
    expect(t.insert(ev(13))).toBe('gap');
    expect(t.ahead.size).toBe(1);
  });

  it('pages messages that skip seqs in front, and stops when a page is short', () => {
    const t = new Timeline();
    t.reset([msg(20), msg(22)], 2);
    expect(t.hasOlder).toBe(true);
    expect(t.prepend([msg(15), msg(18)], 2)).toBe(2);
    expect(seqs(t)).toEqual([15, 18, 20, 22]);
    expect(t.hasOlder).toBe(true);
    expect(t.prepend([msg(3)], 2)).toBe(1);
    expect(t.hasOlder).toBe(false);
  });

  it('applies reactions as sets, deletes erase the body and requote replies', () => {
    const t = new Timeline();
    t.reset([msg(1), msg(2, { reply_to: { seq: 1, sender_id: 'u', excerpt: 'body 1' } })], 50);
    t.insert(change(3, { kind: 'reaction_added', target_seq: 1, emoji: '🎉' }, 'a'));
    t.insert(change(4, { kind: 'reaction_added', target_seq: 1, emoji: '🎉' }, 'b'));
    t.insert(change(5, { kind: 'reaction_removed', target_seq: 1, emoji: '🎉' }, 'a'));
    expect(t.messages[0]!.reactions).toEqual([{ emoji: '🎉', user_ids: ['b'] }]);
    t.insert(change(6, { kind: 'edit', target_seq: 1, body: 'new words' }));
    expect(t.messages[1]!.reply_to).toEqual({ seq: 1, sender_id: 'u', excerpt: 'new words' });
    t.insert(change(7, { kind: 'delete', target_seq: 1 }));
    expect(t.messages[0]).toMatchObject({ body: '', deleted: true });
    expect(t.messages[0]!.reactions).toBeUndefined();
    expect(t.messages[1]!.reply_to).toEqual({ seq: 1, sender_id: 'u', excerpt: '', deleted: true });
  });

  it('keeps member and title events as notices, and an edit of a message not held changes nothing', () => {
    const t = new Timeline();
    t.reset([msg(5)], 50);
    t.insert(change(6, { kind: 'title_changed', title: 'Renamed' }));
    t.insert(change(7, { kind: 'edit', target_seq: 2, body: 'not here' }));
    t.insert(change(8, { kind: 'member_left', user_id: 'x' }));
    expect(t.notices.map((n) => n.kind)).toEqual(['title_changed', 'member_left']);
    expect(seqs(t)).toEqual([5]);
    expect(t.lastSeq).toBe(8);
  });

  it('bounds what it keeps aside and what it holds', () => {
    const t = new Timeline();
    t.reset([msg(1)], 50);
    for (let i = 0; i <= AHEAD_MAX; i++) t.insert(ev(3 + i));
    expect(t.ahead.size).toBeLessThanOrEqual(AHEAD_MAX);

    const long = new Timeline();
    long.reset([], 50);
    for (let seq = 1; seq <= TIMELINE_MESSAGES_MAX + 10; seq++) long.insert(ev(seq));
    expect(long.messages).toHaveLength(TIMELINE_MESSAGES_MAX);
    expect(long.hasOlder).toBe(true);
    expect(long.firstSeq).toBe(11);
  });
});
