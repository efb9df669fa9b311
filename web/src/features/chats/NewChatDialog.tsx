import { useEffect, useState } from 'react';

import { Avatar } from '../../components/ui/Avatar.tsx';
import { Dialog } from '../../components/ui/Dialog.tsx';
import { ApiError, createDirect } from '../../lib/api/client.ts';
import type { Conversation, Member, UserId } from '../../lib/api/types.ts';
import { SearchFeedback } from './SearchFeedback.tsx';
import { useUserSearch } from './useUserSearch.ts';

interface NewChatDialogProps {
  meId: UserId;
  onClose: () => void;
  onCreated: (conversation: Conversation) => void;
  onPresence: (members: Member[]) => void;
}

/** Finds a person by name and opens the one direct chat with them. */
export function NewChatDialog({ meId, onClose, onCreated, onPresence }: NewChatDialogProps) {
  const [query, setQuery] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const search = useUserSearch(query, meId);
  /** Enter was pressed while the search was still running: open the first match once it answers. */
  const [enterPending, setEnterPending] = useState(false);
  const first = search.searching ? undefined : search.results[0];
  useEffect(() => {
    if (!enterPending || search.searching) return;
    setEnterPending(false);
    if (first) void start(first);
    // `start` is stable enough: it only reads state set by this dialog.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [enterPending, search.searching, first]);

  async function start(user: Member) {
    if (busy) return;
    setBusy(true);
    setError(null);
    onPresence([user]);
    try {
      onCreated(await createDirect(user.id));
    } catch (cause) {
      setError(cause instanceof ApiError ? cause.message : 'Could not start the chat.');
      setBusy(false);
    }
  }

  return (
    <Dialog title="New chat" onClose={onClose}>
      <form
        onSubmit={(event) => {
          // Enter opens the chat with the first match: finding someone needs no mouse.
          event.preventDefault();
          if (query.trim() !== '') setEnterPending(true);
        }}
      >
      <label className="field">
        <span className="field-label">Search users</span>
        <input
          type="search"
          autoComplete="off"
          autoCapitalize="none"
          spellCheck={false}
          placeholder="Start typing a username"
          value={query}
          onChange={(e) => setQuery(e.target.value)}
          data-autofocus
        />
      </label>
      </form>
      <SearchFeedback query={query} searching={search.searching} error={error ?? search.error} count={search.results.length} />
      {search.results.length > 0 ? (
        <ul className="user-results" aria-label="Users">
          {search.results.map((user) => (
            <li key={user.id}>
              <button type="button" className="user-result" onClick={() => void start(user)} aria-disabled={busy}>
                <Avatar name={user.username} seed={user.id} size="sm" />
                <span className="user-name">{user.username}</span>
                <span className="user-online">{user.online ? 'online' : ''}</span>
              </button>
            </li>
          ))}
        </ul>
      ) : null}
    </Dialog>
  );
}
