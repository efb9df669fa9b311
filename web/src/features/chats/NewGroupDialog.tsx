import { useState, type FormEvent } from 'react';

import { Avatar } from '../../components/ui/Avatar.tsx';
import { Dialog } from '../../components/ui/Dialog.tsx';
import { ApiError, createGroup } from '../../lib/api/client.ts';
import type { Conversation, Member, UserId } from '../../lib/api/types.ts';
import { SearchFeedback } from './SearchFeedback.tsx';
import { useUserSearch } from './useUserSearch.ts';

interface NewGroupDialogProps {
  meId: UserId;
  onClose: () => void;
  onCreated: (conversation: Conversation) => void;
  onPresence: (members: Member[]) => void;
}

const TITLE_CHARS_MAX = 100;

/** A group needs a title and at least one other member. */
export function NewGroupDialog({ meId, onClose, onCreated, onPresence }: NewGroupDialogProps) {
  const [title, setTitle] = useState('');
  const [query, setQuery] = useState('');
  const [members, setMembers] = useState<Member[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const search = useUserSearch(query, meId);

  function toggle(user: Member) {
    setMembers((current) =>
      current.some((m) => m.id === user.id) ? current.filter((m) => m.id !== user.id) : [...current, user],
    );
  }

  async function submit(event: FormEvent) {
    event.preventDefault();
    if (busy) return;
    const name = title.trim();
    if (name === '') return setError('Give the group a title.');
    if (members.length === 0) return setError('Add at least one member.');
    setBusy(true);
    setError(null);
    onPresence(members);
    try {
      onCreated(
        await createGroup(
          name,
          members.map((m) => m.id),
        ),
      );
    } catch (cause) {
      setError(cause instanceof ApiError ? cause.message : 'Could not create the group.');
      setBusy(false);
    }
  }

  const shown = [...members, ...search.results.filter((u) => !members.some((m) => m.id === u.id))];

  return (
    <Dialog title="New group" onClose={onClose}>
      <form onSubmit={submit} noValidate className="group-form">
        <label className="field">
          <span className="field-label">Group title</span>
          <input value={title} maxLength={TITLE_CHARS_MAX} onChange={(e) => setTitle(e.target.value)} data-autofocus />
        </label>
        <label className="field">
          <span className="field-label">Search users</span>
          <input
            type="search"
            autoComplete="off"
            autoCapitalize="none"
            spellCheck={false}
            placeholder="Add people by username"
            value={query}
            onChange={(e) => setQuery(e.target.value)}
          />
        </label>
        <SearchFeedback query={query} searching={search.searching} error={search.error} count={search.results.length} />
        {shown.length > 0 ? (
          <fieldset className="member-picker">
            <legend className="visually-hidden">Members</legend>
            {shown.map((user) => (
              <label key={user.id} className="user-result">
                <input type="checkbox" checked={members.some((m) => m.id === user.id)} onChange={() => toggle(user)} />
                <Avatar name={user.username} seed={user.id} size="sm" />
                <span className="user-name">{user.username}</span>
              </label>
            ))}
          </fieldset>
        ) : null}
        <p className="form-error" role="alert">
          {error}
        </p>
        <div className="dialog-actions">
          <span className="field-hint">
            {members.length === 0 ? 'No members yet' : `${members.length} member${members.length === 1 ? '' : 's'} + you`}
          </span>
          <button type="submit" className="button primary" aria-disabled={busy}>
            Create group
          </button>
        </div>
      </form>
    </Dialog>
  );
}
