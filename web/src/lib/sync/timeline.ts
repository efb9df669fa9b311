// One conversation's loaded history: the messages held (ascending `seq`; messages skip the
// seqs of other events), the member and title events seen since the oldest of them (shown
// as system lines), and what arrived beyond a gap. Pure data, no IO: the engine decides
// when to fetch.
//
// Invariants:
// - `lastSeq` is the highest event seq applied: every event up to it is reflected in
//   `messages` (an event is applied only when its seq is `lastSeq + 1`, so never twice
//   in a row and never out of order).
// - `messages` is sorted by seq, one message per seq; so is `notices`.
// - every key of `ahead` is greater than `lastSeq + 1` (otherwise it would have been applied).
// - `ahead` holds at most AHEAD_MAX entries; beyond that the store is asked instead.

import type { ConversationEvent, Message } from '../api/types.ts';
import { MEMBERSHIP_KINDS } from '../api/types.ts';
import { applyToMessage, requote } from './apply.ts';

export const AHEAD_MAX = 1000;
/** Older messages beyond this many are dropped from memory (and can be paged in again). */
export const TIMELINE_MESSAGES_MAX = 5000;

export type InsertResult =
  /** Applied (possibly with buffered followers); nothing is missing. */
  | 'appended'
  /** Kept aside: there is a gap before it that only the store can fill. */
  | 'gap'
  /** Already applied: ignored. */
  | 'duplicate';

export class Timeline {
  messages: Message[] = [];
  /** Member, role and title events, for the system lines between messages. */
  notices: ConversationEvent[] = [];
  ahead = new Map<number, ConversationEvent>();
  private appliedSeq = 0;
  /** The store answered an older page with less than was asked: nothing older exists. */
  private olderExhausted = false;

  /** The highest event seq applied: everything up to it is here. */
  get lastSeq(): number {
    return this.appliedSeq;
  }

  /** The seq to page backwards from: the oldest message held, or lastSeq + 1 when none is. */
  get firstSeq(): number {
    return this.messages[0]?.seq ?? this.appliedSeq + 1;
  }

  get hasOlder(): boolean {
    return !this.olderExhausted && this.firstSeq > 1;
  }

  get hasGap(): boolean {
    return this.ahead.size > 0;
  }

  /**
   * Replaces the contents with one page of messages from the store (the newest, in their
   * current state), asked with `limit`. The page reflects at least its newest seq, so that
   * is where applying resumes; events the page already reflects may be applied again by a
   * catch-up, which ends at the same state.
   */
  reset(page: readonly Message[], limit: number): void {
    this.messages = dedupeSorted(page);
    this.appliedSeq = this.messages.at(-1)?.seq ?? 0;
    this.olderExhausted = page.length < limit;
    const first = this.firstSeq;
    this.notices = this.notices.filter((n) => n.seq >= first && n.seq <= this.appliedSeq);
    this.drainAhead();
  }

  /** Applies one event from the live stream or from a catch-up page, if it is the next one. */
  insert(event: ConversationEvent): InsertResult {
    if (event.seq <= this.appliedSeq) return 'duplicate';
    if (event.seq === this.appliedSeq + 1) {
      this.apply(event);
      this.ahead.delete(event.seq);
      this.drainAhead();
      this.trim();
      return 'appended';
    }
    if (this.ahead.has(event.seq)) return 'gap';
    if (this.ahead.size >= AHEAD_MAX) {
      // The store has all of these; a catch-up will bring them back in order.
      this.ahead.clear();
    }
    this.ahead.set(event.seq, event);
    return 'gap';
  }

  /** Keeps an event aside while the timeline is (re)loading; `reset` applies it. */
  buffer(event: ConversationEvent): void {
    if (this.ahead.size < AHEAD_MAX) this.ahead.set(event.seq, event);
  }

  /**
   * Puts an older page of messages (from `before_seq = firstSeq`, asked with `limit`) in
   * front. Returns how many messages were added.
   */
  prepend(page: readonly Message[], limit: number): number {
    const first = this.firstSeq;
    const older = dedupeSorted(page).filter((m) => m.seq < first);
    if (older.length === 0 || page.length < limit) this.olderExhausted = true;
    this.messages = older.concat(this.messages);
    return older.length;
  }

  /**
   * Member and title events from a catch-up page of the history already held (messages
   * come in their current state, without the events between them): the system lines.
   */
  addNotices(events: readonly ConversationEvent[]): void {
    const first = this.firstSeq;
    const known = new Set(this.notices.map((n) => n.seq));
    const fresh = events.filter((e) => MEMBERSHIP_KINDS.has(e.kind) && e.seq >= first && e.seq <= this.appliedSeq && !known.has(e.seq));
    if (fresh.length > 0) this.notices = [...this.notices, ...fresh].sort((a, b) => a.seq - b.seq);
  }

  /** The message at `seq`, if it is held. */
  messageAt(seq: number): Message | undefined {
    const index = this.indexOf(seq);
    return index < 0 ? undefined : this.messages[index];
  }

  private apply(event: ConversationEvent): void {
    this.appliedSeq = event.seq;
    switch (event.kind) {
      case 'message':
        if (event.message.seq === event.seq) this.messages.push(event.message);
        return;
      case 'edit':
      case 'delete':
      case 'reaction_added':
      case 'reaction_removed': {
        const index = this.indexOf(event.target_seq);
        if (index < 0) return; // Not held: when paged in, it comes in its current state.
        const before = this.messages[index]!;
        const after = applyToMessage(before, event, event.sender_id, event.created_at);
        if (after === before) return;
        this.messages[index] = after;
        if (event.kind === 'edit' || event.kind === 'delete') {
          for (let i = index + 1; i < this.messages.length; i++) {
            this.messages[i] = requote(this.messages[i]!, after);
          }
        }
        return;
      }
      default:
        if (MEMBERSHIP_KINDS.has(event.kind)) this.notices.push(event);
    }
  }

  private indexOf(seq: number): number {
    let low = 0;
    let high = this.messages.length - 1;
    while (low <= high) {
      const mid = (low + high) >> 1;
      const at = this.messages[mid]!.seq;
      if (at === seq) return mid;
      if (at < seq) low = mid + 1;
      else high = mid - 1;
    }
    return -1;
  }

  private drainAhead(): void {
    for (const seq of [...this.ahead.keys()]) if (seq <= this.appliedSeq) this.ahead.delete(seq);
    let next = this.ahead.get(this.appliedSeq + 1);
    while (next) {
      this.apply(next);
      this.ahead.delete(next.seq);
      next = this.ahead.get(this.appliedSeq + 1);
    }
  }

  private trim(): void {
    const excess = this.messages.length - TIMELINE_MESSAGES_MAX;
    if (excess <= 0) return;
    this.olderExhausted = false;
    this.messages = this.messages.slice(excess);
    const first = this.firstSeq;
    this.notices = this.notices.filter((n) => n.seq >= first);
  }
}

/** Sorted by seq, one message per seq (the first seen wins). */
function dedupeSorted(page: readonly Message[]): Message[] {
  const bySeq = new Map<number, Message>();
  for (const m of page) if (!bySeq.has(m.seq)) bySeq.set(m.seq, m);
  return [...bySeq.values()].sort((a, b) => a.seq - b.seq);
}
