import { describe, expect, it } from 'vitest';

import { FakeClock } from '../../test/fakeClock.ts';
import { ApiError } from '../api/client.ts';
import type { SearchHit, SearchPage, SearchQuery } from '../api/types.ts';
import { MessageSearch, queryOf, SEARCH_LIMITS, type SearchInput, type SearchState } from './messageSearch.ts';

interface Call {
  query: SearchQuery;
  signal: AbortSignal;
  resolve: (page: SearchPage) => void;
  reject: (error: unknown) => void;
}

function hit(seq: number, text = `hit ${seq}`): SearchHit {
  return { conversation_id: 'c', seq, sender_id: 'u', created_at: '2026-12-01T10:00:00Z', snippet: [{ text, hit: true }] };
}

function harness() {
  const clock = new FakeClock();
  const calls: Call[] = [];
  const states: SearchState[] = [];
  const search = new MessageSearch(
    (query, signal) => new Promise<SearchPage>((resolve, reject) => calls.push({ query, signal, resolve, reject })),
    clock,
    (state) => states.push(state),
  );
  return { clock, calls, states, search };
}

const q = (text: string, extra: Partial<SearchQuery> = {}): SearchQuery => ({ q: text, sort: 'relevance', limit: 20, ...extra });

async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

describe('queryOf', () => {
  const input: SearchInput = { text: '  deploy friday ', conversationId: null, senderId: null, range: 'any', sort: 'recent' };

  it('trims the text, keeping one space after the last word (then matched whole), and leaves unset filters out', () => {
    expect(queryOf(input, 0)).toEqual({ q: 'deploy friday ', sort: 'recent', limit: SEARCH_LIMITS.pageHits });
    expect(queryOf({ ...input, text: '  deploy fri' }, 0)!.q).toBe('deploy fri');
    expect(queryOf({ ...input, text: '   ' }, 0)).toBeNull();
  });

  it('turns the filters into the API parameters, the date range relative to now', () => {
    const now = Date.UTC(2026, 11, 8, 12);
    expect(queryOf({ ...input, conversationId: 'c1', senderId: 'u1', range: 'week' }, now)).toMatchObject({
      conversation_id: 'c1',
      sender_id: 'u1',
      after: '2026-12-01T12:00:00.000Z',
    });
  });

  it('cuts an overlong text to what the server takes', () => {
    expect(queryOf({ ...input, text: 'x'.repeat(500) }, 0)!.q).toHaveLength(200);
  });
});

describe('MessageSearch', () => {
  it('waits for typing to pause, then asks once for the latest text', async () => {
    const { clock, calls, search } = harness();
    search.setQuery(q('de'));
    clock.advance(100);
    search.setQuery(q('depl'));
    clock.advance(100);
    search.setQuery(q('deploy'));
    expect(calls).toHaveLength(0);
    expect(search.state.status).toBe('searching');
    clock.advance(SEARCH_LIMITS.debounceMs);
    expect(calls.map((c) => c.query.q)).toEqual(['deploy']);
    calls[0]!.resolve({ hits: [hit(3)], next_cursor: null });
    await flush();
    expect(search.state).toMatchObject({ status: 'ready', hits: [hit(3)], nextCursor: null });
  });

  it('drops the answer to an older query, even one that arrives after the newer one', async () => {
    const { clock, calls, search } = harness();
    search.setQuery(q('old'));
    clock.advance(SEARCH_LIMITS.debounceMs);
    search.setQuery(q('new'));
    expect(calls[0]!.signal.aborted).toBe(true);
    clock.advance(SEARCH_LIMITS.debounceMs);
    calls[1]!.resolve({ hits: [hit(2, 'new')] });
    await flush();
    // A server that ignored the abort answers late: nothing changes.
    calls[0]!.resolve({ hits: [hit(1, 'old')] });
    await flush();
    expect(search.state.hits).toEqual([hit(2, 'new')]);
    expect(search.state.query?.q).toBe('new');
  });

  it('keeps the hits shown while the next query runs, so typing does not flicker', async () => {
    const { clock, calls, search } = harness();
    search.setQuery(q('deploy'), true);
    calls[0]!.resolve({ hits: [hit(1)] });
    await flush();
    search.setQuery(q('deploys'));
    expect(search.state).toMatchObject({ status: 'searching', hits: [hit(1)] });
    clock.advance(SEARCH_LIMITS.debounceMs);
    calls[1]!.resolve({ hits: [] });
    await flush();
    expect(search.state).toMatchObject({ status: 'ready', hits: [] });
  });

  it('asks at once on Enter, and waits for Enter below the typed minimum', () => {
    const { calls, search } = harness();
    search.setQuery(q('x'));
    expect(search.state.status).toBe('idle');
    expect(calls).toHaveLength(0);
    search.setQuery(q('x'), true);
    expect(calls.map((c) => c.query.q)).toEqual(['x']);
  });

  it('pages with next_cursor, appending each hit once', async () => {
    const { calls, search } = harness();
    search.setQuery(q('deploy'), true);
    calls[0]!.resolve({ hits: [hit(9), hit(8)], next_cursor: '2' });
    await flush();
    search.loadMore();
    search.loadMore(); // a second click while the page runs asks nothing more
    expect(calls).toHaveLength(2);
    expect(calls[1]!.query).toMatchObject({ q: 'deploy', cursor: '2' });
    expect(search.state.loadingMore).toBe(true);
    calls[1]!.resolve({ hits: [hit(8), hit(7)], next_cursor: null });
    await flush();
    expect(search.state.hits.map((h) => h.seq)).toEqual([9, 8, 7]);
    expect(search.state).toMatchObject({ nextCursor: null, loadingMore: false });
    search.loadMore();
    expect(calls).toHaveLength(2);
  });

  it('drops a page of an older query when the text changed meanwhile', async () => {
    const { clock, calls, search } = harness();
    search.setQuery(q('deploy'), true);
    calls[0]!.resolve({ hits: [hit(9)], next_cursor: '1' });
    await flush();
    search.loadMore();
    search.setQuery(q('release'));
    clock.advance(SEARCH_LIMITS.debounceMs);
    calls[1]!.resolve({ hits: [hit(8)], next_cursor: null });
    calls[2]!.resolve({ hits: [hit(4, 'release')] });
    await flush();
    expect(search.state.hits).toEqual([hit(4, 'release')]);
  });

  it('says when the server has no search, and when a request failed', async () => {
    const { calls, search } = harness();
    search.setQuery(q('deploy'), true);
    calls[0]!.reject(new ApiError(501, 'not_available', 'search is not available on this deployment'));
    await flush();
    expect(search.state.status).toBe('unavailable');

    search.setQuery(q('other'), true);
    calls[1]!.reject(new ApiError(0, 'network', 'Cannot reach the server. Check your connection.'));
    await flush();
    expect(search.state).toMatchObject({ status: 'error', error: 'Cannot reach the server. Check your connection.' });
    search.retry();
    expect(calls).toHaveLength(3);
    calls[2]!.resolve({ hits: [hit(1)] });
    await flush();
    expect(search.state).toMatchObject({ status: 'ready', error: null });
  });

  it('keeps what it has when a later page fails, and retries that page', async () => {
    const { calls, search } = harness();
    search.setQuery(q('deploy'), true);
    calls[0]!.resolve({ hits: [hit(9)], next_cursor: '1' });
    await flush();
    search.loadMore();
    calls[1]!.reject(new ApiError(429, 'rate_limited', 'Too many requests.'));
    await flush();
    expect(search.state).toMatchObject({ status: 'ready', hits: [hit(9)], nextCursor: '1', error: 'Too many requests.' });
    search.retry();
    expect(calls[2]!.query.cursor).toBe('1');
  });

  it('clears everything for an empty text and stops on dispose', async () => {
    const { clock, calls, search, states } = harness();
    search.setQuery(q('deploy'));
    search.setQuery(null);
    clock.advance(SEARCH_LIMITS.debounceMs);
    expect(calls).toHaveLength(0);
    expect(search.state.status).toBe('idle');
    search.setQuery(q('deploy'), true);
    search.dispose();
    expect(calls[0]!.signal.aborted).toBe(true);
    const heard = states.length;
    calls[0]!.resolve({ hits: [hit(1)] });
    await flush();
    expect(states).toHaveLength(heard);
  });
});
