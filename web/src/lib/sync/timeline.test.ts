import { describe, expect, it } from 'vitest';

import type { Message } from '../api/types.ts';
import { AHEAD_MAX, Timeline, TIMELINE_MESSAGES_MAX } from './timeline.ts';

function msg(seq: number): Message {
  return {
    id: `m${seq}`,
    conversation_id: 'c',
    seq,
    sender_id: 'u',
    client_msg_id: `cm${seq}`,
    body: `body ${seq}`,
    created_at: '2026-11-28T12:00:00Z',
  };
}

function seqs(t: Timeline): number[] {
  return t.messages.map((m) => m.seq);
}

describe('Timeline', () => {
  it('starts empty with the whole (empty) history loaded', () => {
    const t = new Timeline();
    expect(t.lastSeq).toBe(0);
    expect(t.hasOlder).toBe(false);
    expect(t.insert(msg(1))).toBe('appended');
    expect(seqs(t)).toEqual([1]);
  });

  it('keeps a message beyond a gap aside and drains it once the gap is filled', () => {
    const t = new Timeline();
    t.reset([msg(1), msg(2)]);
    expect(t.insert(msg(5))).toBe('gap');
    expect(t.insert(msg(4))).toBe('gap');
    expect(seqs(t)).toEqual([1, 2]);
    expect(t.aheadMinSeq).toBe(4);
    expect(t.insert(msg(3))).toBe('appended');
    expect(seqs(t)).toEqual([1, 2, 3, 4, 5]);
    expect(t.hasGap).toBe(false);
  });

  it('ignores repeats and messages older than what is loaded', () => {
    const t = new Timeline();
    t.reset([msg(10), msg(11)]);
    expect(t.insert(msg(11))).toBe('duplicate');
    expect(t.insert(msg(3))).toBe('duplicate');
    t.insert(msg(13));
    expect(t.insert(msg(13))).toBe('gap');
    expect(t.ahead.size).toBe(1);
  });

  it('uses only the contiguous tail of a page that has holes', () => {
    const t = new Timeline();
    t.reset([msg(3), msg(1), msg(5), msg(6), msg(6)]);
    expect(seqs(t)).toEqual([5, 6]);
    expect(t.firstSeq).toBe(5);
    expect(t.hasOlder).toBe(true);
  });

  it('absorbs what was buffered while loading', () => {
    const t = new Timeline();
    t.buffer(msg(51));
    t.buffer(msg(49));
    t.reset([msg(48), msg(49), msg(50)]);
    expect(seqs(t)).toEqual([48, 49, 50, 51]);
    expect(t.hasGap).toBe(false);
  });

  it('prepends an older page only where it joins', () => {
    const t = new Timeline();
    t.reset([msg(51), msg(52)]);
    expect(t.prepend([msg(10), msg(11)])).toBe(0); // does not join: refused
    expect(t.hasOlder).toBe(false); // and paging stops rather than looping
    const u = new Timeline();
    u.reset([msg(51), msg(52)]);
    expect(u.prepend([msg(49), msg(50), msg(51)])).toBe(2);
    expect(seqs(u)).toEqual([49, 50, 51, 52]);
    expect(u.hasOlder).toBe(true);
  });

  it('starts an empty page at a known seq', () => {
    const t = new Timeline();
    t.resetEmptyAt(7);
    expect(t.lastSeq).toBe(7);
    expect(t.insert(msg(8))).toBe('appended');
    expect(t.hasOlder).toBe(true);
  });

  it('bounds memory: old messages are dropped, and can be paged in again', () => {
    const t = new Timeline();
    t.reset([msg(1)]);
    for (let seq = 2; seq <= TIMELINE_MESSAGES_MAX + 10; seq++) t.insert(msg(seq));
    expect(t.messages).toHaveLength(TIMELINE_MESSAGES_MAX);
    expect(t.firstSeq).toBe(11);
    expect(t.hasOlder).toBe(true);
  });

  it('bounds what waits beyond a gap', () => {
    const t = new Timeline();
    for (let seq = 3; seq < 3 + AHEAD_MAX + 5; seq++) t.insert(msg(seq));
    expect(t.ahead.size).toBeLessThanOrEqual(AHEAD_MAX);
  });
});
