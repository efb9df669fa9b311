// Message search as the person types: one query at a time against `GET /search`, debounced,
// the latest query winning (a newer query aborts the request in flight, and an answer to
// anything but the latest query is dropped, even one that arrives after the abort), paged
// with `next_cursor`. Plain TypeScript: the fetch and the timers are injected, so the unit
// tests drive it with a fake clock and hand-made answers.

import { ApiError } from '../api/client.ts';
import type { ConversationId, SearchHit, SearchPage, SearchQuery, SearchSort, UserId } from '../api/types.ts';
import { LIMITS } from '../api/types.ts';

export interface Timers {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const SEARCH_LIMITS = {
  /** Typing pauses this long before a query goes out. */
  debounceMs: 250,
  /** Fewer characters than this wait for Enter (one letter matches nearly everything). */
  typedCharsMin: 2,
  pageHits: 20,
} as const;

/** How far back a search looks. */
export type DateRange = 'any' | 'week' | 'month' | 'year';

const RANGE_DAYS: Record<Exclude<DateRange, 'any'>, number> = { week: 7, month: 30, year: 365 };
const DAY_MS = 24 * 60 * 60 * 1000;

/** What the person asked for, before it becomes a query. */
export interface SearchInput {
  text: string;
  /** Only this conversation; null for all of mine. */
  conversationId: ConversationId | null;
  /** Only messages of this person; null for anyone. */
  senderId: UserId | null;
  range: DateRange;
  sort: SearchSort;
}

/** The query for `input` at `nowMs` (the date range is relative to now); null if there is nothing to ask. */
export function queryOf(input: SearchInput, nowMs: number): SearchQuery | null {
  // A space after the last word is kept: the server then matches it whole, not as a prefix.
  const q = input.text.trimStart().replace(/\s+$/, ' ').slice(0, LIMITS.searchQueryCharsMax);
  if (q.trim() === '') return null;
  const query: SearchQuery = { q, sort: input.sort, limit: SEARCH_LIMITS.pageHits };
  if (input.conversationId !== null) query.conversation_id = input.conversationId;
  if (input.senderId !== null) query.sender_id = input.senderId;
  if (input.range !== 'any') query.after = new Date(nowMs - RANGE_DAYS[input.range] * DAY_MS).toISOString();
  return query;
}

/** Two queries ask the same (ignoring where paging is). */
export function sameQuery(a: SearchQuery | null, b: SearchQuery | null): boolean {
  if (a === null || b === null) return a === b;
  return (
    a.q === b.q &&
    a.conversation_id === b.conversation_id &&
    a.sender_id === b.sender_id &&
    a.after === b.after &&
    a.before === b.before &&
    a.sort === b.sort
  );
}

export type SearchStatus =
  /** Nothing asked yet. */
  | 'idle'
  /** Waiting for typing to pause, or for the first page. */
  | 'searching'
  | 'ready'
  | 'error'
  /** The server has no search (501 `not_available`). */
  | 'unavailable';

export interface SearchState {
  status: SearchStatus;
  /** The query asked; while `searching`, `hits` are still those of the query before. */
  query: SearchQuery | null;
  hits: readonly SearchHit[];
  nextCursor: string | null;
  loadingMore: boolean;
  /** Why the last request failed (the first page's, or a later page's). */
  error: string | null;
}

export const IDLE_SEARCH: SearchState = { status: 'idle', query: null, hits: [], nextCursor: null, loadingMore: false, error: null };

export type SearchFetch = (query: SearchQuery, signal: AbortSignal) => Promise<SearchPage>;

export class MessageSearch {
  private readonly fetch: SearchFetch;
  private readonly timers: Timers;
  private readonly onChange: (state: SearchState) => void;
  private current: SearchState = IDLE_SEARCH;
  /** Bumped by every new query: an answer for an older generation is dropped. */
  private generation = 0;
  private controller: AbortController | null = null;
  private timer: unknown = null;
  private disposed = false;

  constructor(fetch: SearchFetch, timers: Timers, onChange: (state: SearchState) => void) {
    this.fetch = fetch;
    this.timers = timers;
    this.onChange = onChange;
  }

  get state(): SearchState {
    return this.current;
  }

  /**
   * The person changed the text or a filter. A new query waits for typing to pause
   * (`immediate`: Enter, a filter, Retry: at once); the same query as now changes nothing.
   */
  setQuery(query: SearchQuery | null, immediate = false): void {
    if (this.disposed) return;
    if (sameQuery(query, this.current.query) && this.timer === null && this.current.status !== 'error' && !immediate) return;
    this.cancel();
    if (query === null) return this.update(IDLE_SEARCH);
    const generation = this.generation;
    const short = !immediate && query.q.trim().length < SEARCH_LIMITS.typedCharsMin;
    // Too short to search as you type (one letter matches nearly everything): wait for Enter.
    // The hits shown stay until the answer replaces them, so that typing does not flicker.
    const hits = short ? [] : this.current.hits;
    this.update({ status: short ? 'idle' : 'searching', query, hits, nextCursor: null, loadingMore: false, error: null });
    if (short) return;
    if (immediate) {
      void this.run(generation, query, false);
      return;
    }
    this.timer = this.timers.setTimeout(() => {
      this.timer = null;
      void this.run(generation, query, false);
    }, SEARCH_LIMITS.debounceMs);
  }

  /** The next page of the current query, after the hits already shown. */
  loadMore(): void {
    const { status, query, nextCursor, loadingMore } = this.current;
    if (this.disposed || status !== 'ready' || query === null || nextCursor === null || loadingMore) return;
    this.update({ ...this.current, loadingMore: true, error: null });
    void this.run(this.generation, { ...query, cursor: nextCursor }, true);
  }

  /** Asks again after a failure. */
  retry(): void {
    const { status, query, error } = this.current;
    if (query === null) return;
    if (status === 'ready' && error !== null) return this.loadMore();
    this.setQuery(query, true);
  }

  /** Drops what is waiting or in flight; the state stays, and a new query works. */
  stop(): void {
    this.cancel();
  }

  /** Stops for good: nothing is asked or announced again. */
  dispose(): void {
    this.disposed = true;
    this.cancel();
  }

  private cancel(): void {
    this.generation += 1;
    if (this.timer !== null) this.timers.clearTimeout(this.timer);
    this.timer = null;
    this.controller?.abort();
    this.controller = null;
  }

  private async run(generation: number, query: SearchQuery, more: boolean): Promise<void> {
    const controller = new AbortController();
    this.controller = controller;
    try {
      const page = await this.fetch(query, controller.signal);
      if (generation !== this.generation || this.disposed) return;
      this.update({
        status: 'ready',
        query: this.current.query,
        hits: more ? dedupeHits([...this.current.hits, ...page.hits]) : page.hits,
        nextCursor: page.next_cursor ?? null,
        loadingMore: false,
        error: null,
      });
    } catch (cause) {
      if (generation !== this.generation || this.disposed) return;
      const unavailable = cause instanceof ApiError && (cause.status === 501 || cause.code === 'not_available');
      const error = cause instanceof ApiError ? cause.message : 'Search failed.';
      if (more) this.update({ ...this.current, loadingMore: false, error });
      else this.update({ ...this.current, status: unavailable ? 'unavailable' : 'error', loadingMore: false, error });
    } finally {
      if (this.controller === controller) this.controller = null;
    }
  }

  private update(state: SearchState): void {
    this.current = state;
    if (!this.disposed) this.onChange(state);
  }
}

/** Names a hit: its conversation and seq. */
export function hitKey(hit: SearchHit): string {
  return `${hit.conversation_id}/${hit.seq}`;
}

/** One hit per message: a page that overlaps the one before (new messages came) shows each once. */
function dedupeHits(hits: readonly SearchHit[]): SearchHit[] {
  const seen = new Set<string>();
  return hits.filter((hit) => {
    const key = hitKey(hit);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}
