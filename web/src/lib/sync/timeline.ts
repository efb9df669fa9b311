// One conversation's loaded history: a contiguous run of messages by `seq`, plus what
// arrived beyond a gap. Pure data, no IO: the engine decides when to fetch.
//
// Invariants:
// - `messages` is sorted by `seq` with no holes and no repeats: messages[i+1].seq = messages[i].seq + 1.
// - every key of `ahead` is greater than `lastSeq + 1` (otherwise it would have been appended).
// - `ahead` holds at most AHEAD_MAX entries; beyond that the store is asked instead.

import type { Message } from '../api/types.ts';

export const AHEAD_MAX = 1000;
/** Older messages beyond this many are dropped from memory (and can be paged in again). */
export const TIMELINE_MESSAGES_MAX = 5000;

export type InsertResult =
  /** Appended (possibly with buffered followers); nothing is missing. */
  | 'appended'
  /** Kept aside: there is a gap before it that only the store can fill. */
  | 'gap'
  /** Already known, or older than what is loaded: ignored. */
  | 'duplicate';

export class Timeline {
  messages: Message[] = [];
  ahead = new Map<number, Message>();
  /** The seq before the first loaded message: 0 when the whole history is loaded. */
  private floorSeq = 0;
  /** The store answered an older page with nothing usable: stop asking. */
  private olderExhausted = false;

  /** The highest seq such that everything from the first loaded message up to it is here. */
  get lastSeq(): number {
    return this.messages.at(-1)?.seq ?? this.floorSeq;
  }

  /** The seq of the oldest loaded message, or lastSeq + 1 when none is loaded. */
  get firstSeq(): number {
    return this.messages[0]?.seq ?? this.floorSeq + 1;
  }

  get hasOlder(): boolean {
    return !this.olderExhausted && this.firstSeq > 1;
  }

  get hasGap(): boolean {
    return this.ahead.size > 0;
  }

  /**
   * Replaces the contents with one page from the store (the newest, usually). Keeps the
   * contiguous tail of `page` ending at its highest seq, then absorbs what was buffered.
   */
  reset(page: readonly Message[]): void {
    const sorted = dedupeSorted(page);
    const tail = contiguousTail(sorted);
    this.messages = tail;
    this.floorSeq = tail.length > 0 ? tail[0]!.seq - 1 : 0;
    this.olderExhausted = false;
    this.drainAhead();
  }

  /** Like `reset` for an empty page when the conversation is known to end at `lastSeq`. */
  resetEmptyAt(lastSeq: number): void {
    this.messages = [];
    this.floorSeq = Math.max(0, lastSeq);
    this.olderExhausted = false;
    this.drainAhead();
  }

  /** Adds one message from the live stream or from a forward page of the store. */
  insert(message: Message): InsertResult {
    const last = this.lastSeq;
    if (message.seq <= last) return 'duplicate';
    if (message.seq === last + 1) {
      this.messages.push(message);
      this.ahead.delete(message.seq);
      this.drainAhead();
      this.trim();
      return 'appended';
    }
    if (this.ahead.has(message.seq)) return 'gap';
    if (this.ahead.size >= AHEAD_MAX) {
      // The store has all of these; a catch-up will bring them back in order.
      this.ahead.clear();
    }
    this.ahead.set(message.seq, message);
    return 'gap';
  }

  /** Keeps a message aside while the timeline is (re)loading; `reset` absorbs it. */
  buffer(message: Message): void {
    if (this.ahead.size < AHEAD_MAX) this.ahead.set(message.seq, message);
  }

  /**
   * Puts an older page (from `before_seq = firstSeq`) in front. Only the part that ends
   * exactly at firstSeq - 1 and is contiguous is used, so the invariant holds whatever the
   * page holds. Returns how many messages were added.
   */
  prepend(page: readonly Message[]): number {
    const first = this.firstSeq;
    const older = dedupeSorted(page).filter((m) => m.seq < first);
    const tail = contiguousTail(older);
    if (tail.length === 0 || tail.at(-1)!.seq !== first - 1) {
      // Nothing usable (the store has nothing older, or answered nonsense): stop paging.
      this.olderExhausted = true;
      return 0;
    }
    this.messages = tail.concat(this.messages);
    this.floorSeq = tail[0]!.seq - 1;
    return tail.length;
  }

  /** The lowest seq buffered beyond the gap, if any. */
  get aheadMinSeq(): number | null {
    let min: number | null = null;
    for (const seq of this.ahead.keys()) if (min === null || seq < min) min = seq;
    return min;
  }

  private drainAhead(): void {
    for (const seq of [...this.ahead.keys()]) if (seq <= this.lastSeq) this.ahead.delete(seq);
    let next = this.ahead.get(this.lastSeq + 1);
    while (next) {
      this.messages.push(next);
      this.ahead.delete(next.seq);
      next = this.ahead.get(this.lastSeq + 1);
    }
  }

  private trim(): void {
    const excess = this.messages.length - TIMELINE_MESSAGES_MAX;
    if (excess <= 0) return;
    this.floorSeq = this.messages[excess - 1]!.seq;
    this.olderExhausted = false;
    this.messages = this.messages.slice(excess);
  }
}

/** Sorted by seq, one message per seq (the first seen wins). */
function dedupeSorted(page: readonly Message[]): Message[] {
  const bySeq = new Map<number, Message>();
  for (const m of page) if (!bySeq.has(m.seq)) bySeq.set(m.seq, m);
  return [...bySeq.values()].sort((a, b) => a.seq - b.seq);
}

/** The longest run at the end of a sorted list whose seqs follow each other. */
function contiguousTail(sorted: Message[]): Message[] {
  let start = sorted.length - 1;
  while (start > 0 && sorted[start - 1]!.seq === sorted[start]!.seq - 1) start -= 1;
  return start < 0 ? [] : sorted.slice(start);
}
