import { useEffect, useState } from 'react';

import { ApiError, searchUsers } from '../../lib/api/client.ts';
import type { Member, UserId } from '../../lib/api/types.ts';

const DEBOUNCE_MS = 200;

export interface UserSearch {
  results: Member[];
  searching: boolean;
  error: string | null;
}

interface Answer {
  prefix: string;
  results: Member[];
  error: string | null;
}

const NOTHING: UserSearch = { results: [], searching: false, error: null };

/** Users whose name starts with `query`, without `meId`; debounced, stale answers dropped. */
export function useUserSearch(query: string, meId: UserId): UserSearch {
  const [answer, setAnswer] = useState<Answer | null>(null);
  const prefix = query.trim();

  useEffect(() => {
    if (prefix === '') return;
    const controller = new AbortController();
    const timer = setTimeout(() => {
      searchUsers(prefix, controller.signal).then(
        (users) => setAnswer({ prefix, results: users.filter((u) => u.id !== meId), error: null }),
        (error: unknown) => {
          if (controller.signal.aborted) return;
          setAnswer({ prefix, results: [], error: error instanceof ApiError ? error.message : 'Search failed.' });
        },
      );
    }, DEBOUNCE_MS);
    return () => {
      clearTimeout(timer);
      controller.abort();
    };
  }, [prefix, meId]);

  if (prefix === '') return NOTHING;
  if (answer?.prefix !== prefix) return { results: answer?.results ?? [], searching: true, error: null };
  return { results: answer.results, searching: false, error: answer.error };
}
