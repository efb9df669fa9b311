import { useEffect, useState } from 'react';

import { searchMessages } from '../../lib/api/client.ts';
import { IDLE_SEARCH, MessageSearch, type SearchState, type Timers } from '../../lib/search/messageSearch.ts';

const browserTimers: Timers = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => window.setTimeout(fn, ms),
  clearTimeout: (handle) => window.clearTimeout(handle as number),
};

/**
 * One message search for as long as the caller is mounted (the app keeps it, so that the
 * results are still there when the search opens again), and its state.
 */
export function useMessageSearch(): [SearchState, MessageSearch] {
  const [state, setState] = useState<SearchState>(IDLE_SEARCH);
  const [search] = useState(() => new MessageSearch((query, signal) => searchMessages(query, signal), browserTimers, setState));
  // Unmounted: nothing in flight may land. (Stopped, not disposed: a remount may use it again.)
  useEffect(() => () => search.stop(), [search]);
  return [state, search];
}
