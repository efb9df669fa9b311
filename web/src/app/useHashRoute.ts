import { useCallback, useSyncExternalStore } from 'react';

import type { ConversationId } from '../lib/api/types.ts';

// The open conversation lives in the URL hash (#/c/ID): reload keeps it, the browser's
// back button returns to the list on a phone, and links are plain <a href>.

const PREFIX = '#/c/';

function subscribe(onChange: () => void): () => void {
  window.addEventListener('hashchange', onChange);
  return () => window.removeEventListener('hashchange', onChange);
}

function read(): ConversationId | null {
  const hash = window.location.hash;
  if (!hash.startsWith(PREFIX)) return null;
  const id = decodeURIComponent(hash.slice(PREFIX.length));
  return id === '' ? null : id;
}

export function conversationHref(id: ConversationId | null): string {
  return id === null ? '#/' : PREFIX + encodeURIComponent(id);
}

export function useHashRoute(): [ConversationId | null, (id: ConversationId | null) => void] {
  const current = useSyncExternalStore(subscribe, read);
  const navigate = useCallback((id: ConversationId | null) => {
    window.location.hash = conversationHref(id);
  }, []);
  return [current, navigate];
}
