import { useId, useState, type FormEvent, type ReactNode } from 'react';

import { Avatar } from '../../components/ui/Avatar.tsx';
import { ConfirmDialog } from '../../components/ui/ConfirmDialog.tsx';
import { Dialog } from '../../components/ui/Dialog.tsx';
import type { Member, Role, UserId } from '../../lib/api/types.ts';
import { LIMITS } from '../../lib/api/types.ts';
import type { ChatView } from '../../lib/sync/engine.ts';
import { SearchFeedback } from './SearchFeedback.tsx';
import { useUserSearch } from './useUserSearch.ts';

interface ChatInfoDialogProps {
  chat: ChatView;
  meId: UserId;
  /** A member's presence dot, and their "online" / "last seen …" line. */
  renderPresence: (userId: UserId) => ReactNode;
  renderLastSeen: (userId: UserId) => ReactNode;
  onClose: () => void;
  onMute: (muted: boolean) => void;
  /** Throws with a readable reason when the title cannot be used. */
  onRename: (title: string) => void;
  onAdd: (user: Member) => void;
  onRemove: (userId: UserId) => void;
  onSetRole: (userId: UserId, role: Role) => void;
  onLeave: () => void;
}

type Confirm = { kind: 'leave' } | { kind: 'remove'; userId: UserId; username: string };

/**
 * A chat's members and settings: everyone sees the members (presence, role, last seen),
 * mutes and leaves; a group's admins also rename it, add and remove people and give roles.
 */
export function ChatInfoDialog(props: ChatInfoDialogProps) {
  const { chat, meId } = props;
  const group = chat.kind === 'group';
  const [renaming, setRenaming] = useState(false);
  const [confirm, setConfirm] = useState<Confirm | null>(null);
  const muteId = useId();

  return (
    <Dialog title={group ? 'Group info' : 'Chat info'} onClose={props.onClose}>
      {group && renaming ? (
        <RenameForm title={chat.title} onRename={props.onRename} onDone={() => setRenaming(false)} />
      ) : (
        <div className="info-title">
          <Avatar name={chat.title} seed={chat.peerId ?? chat.id} />
          <span className="info-title-text">{chat.title}</span>
          {group && chat.isAdmin ? (
            <button type="button" className="button" onClick={() => setRenaming(true)} data-autofocus>
              Rename
            </button>
          ) : null}
        </div>
      )}

      <div className="switch">
        <input
          id={muteId}
          type="checkbox"
          role="switch"
          aria-checked={chat.muted}
          aria-describedby={`${muteId}-hint`}
          checked={chat.muted}
          onChange={(e) => props.onMute(e.target.checked)}
          data-autofocus={!group || !chat.isAdmin ? true : undefined}
        />
        <span className="switch-text">
          <label htmlFor={muteId}>Mute notifications</label>
          <span id={`${muteId}-hint`} className="field-hint">
            {chat.muted ? 'Only mentions of you notify you.' : 'Every message notifies you.'}
          </span>
        </span>
      </div>

      <section className="info-section" aria-labelledby="members-heading">
        <h3 id="members-heading">{group ? `${chat.members.length} members` : 'Members'}</h3>
        <ul className="member-list" aria-label="Members">
          {chat.members.map((member) => {
            const me = member.id === meId;
            return (
              <li key={member.id} className="member-row" aria-label={member.username}>
                <Avatar name={member.username} seed={member.id} size="sm" badge={me ? null : props.renderPresence(member.id)} />
                <span className="member-main">
                  <span className="member-name">
                    {member.username}
                    {me ? ' (you)' : ''}
                    {group && member.role === 'admin' ? <span className="role-badge">Admin</span> : null}
                  </span>
                  {me ? null : <span className="member-status">{props.renderLastSeen(member.id)}</span>}
                </span>
                {group && chat.isAdmin && !me ? (
                  <span className="member-actions">
                    <button
                      type="button"
                      className="link-button"
                      aria-label={member.role === 'admin' ? `Remove ${member.username} as admin` : `Make ${member.username} an admin`}
                      onClick={() => props.onSetRole(member.id, member.role === 'admin' ? 'member' : 'admin')}
                    >
                      {member.role === 'admin' ? 'Remove admin' : 'Make admin'}
                    </button>
                    <button
                      type="button"
                      className="link-button is-danger"
                      aria-label={`Remove ${member.username}`}
                      onClick={() => setConfirm({ kind: 'remove', userId: member.id, username: member.username })}
                    >
                      Remove
                    </button>
                  </span>
                ) : null}
              </li>
            );
          })}
        </ul>
      </section>

      {group && chat.isAdmin ? <AddMembers chat={chat} meId={meId} onAdd={props.onAdd} /> : null}

      {group ? (
        <div className="dialog-actions is-end">
          <button type="button" className="button danger" onClick={() => setConfirm({ kind: 'leave' })}>
            Leave group
          </button>
        </div>
      ) : null}

      {confirm?.kind === 'leave' ? (
        <ConfirmDialog
          title="Leave group?"
          message={`You will no longer get messages from ${chat.title}. An admin can add you again.`}
          confirmLabel="Leave"
          onConfirm={() => {
            props.onLeave();
            props.onClose();
          }}
          onClose={() => setConfirm(null)}
        />
      ) : null}
      {confirm?.kind === 'remove' ? (
        <ConfirmDialog
          title={`Remove ${confirm.username}?`}
          message={`${confirm.username} will no longer see new messages in ${chat.title}.`}
          confirmLabel="Remove"
          onConfirm={() => props.onRemove(confirm.userId)}
          onClose={() => setConfirm(null)}
        />
      ) : null}
    </Dialog>
  );
}

function RenameForm({ title, onRename, onDone }: { title: string; onRename: (title: string) => void; onDone: () => void }) {
  const [value, setValue] = useState(title);
  const [error, setError] = useState<string | null>(null);
  function submit(event: FormEvent) {
    event.preventDefault();
    try {
      if (value.trim() !== title) onRename(value);
      onDone();
    } catch (cause) {
      setError(cause instanceof Error ? cause.message : 'Could not rename the group.');
    }
  }
  return (
    <form className="rename-form" onSubmit={submit}>
      <label className="field">
        <span className="field-label">Group title</span>
        <input value={value} maxLength={LIMITS.titleCharsMax} onChange={(e) => setValue(e.target.value)} data-autofocus />
      </label>
      <p className="form-error" role="alert">
        {error}
      </p>
      <div className="dialog-actions is-end">
        <button type="button" className="button" onClick={onDone}>
          Cancel
        </button>
        <button type="submit" className="button primary" disabled={value.trim() === ''}>
          Save
        </button>
      </div>
    </form>
  );
}

function AddMembers({ chat, meId, onAdd }: { chat: ChatView; meId: UserId; onAdd: (user: Member) => void }) {
  const [query, setQuery] = useState('');
  const search = useUserSearch(query, meId);
  const results = search.results.filter((u) => !chat.members.some((m) => m.id === u.id));
  return (
    <section className="info-section" aria-labelledby="add-heading">
      <h3 id="add-heading">Add people</h3>
      <form
        onSubmit={(event) => {
          // Enter adds the first match, as in the new-chat search.
          event.preventDefault();
          if (results[0]) {
            onAdd(results[0]);
            setQuery('');
          }
        }}
      >
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
      </form>
      <SearchFeedback query={query} searching={search.searching} error={search.error} count={results.length} />
      {results.length > 0 ? (
        <ul className="user-results" aria-label="Users">
          {results.map((user) => (
            <li key={user.id}>
              <button
                type="button"
                className="user-result"
                aria-label={`Add ${user.username}`}
                onClick={() => {
                  onAdd(user);
                  setQuery('');
                }}
              >
                <Avatar name={user.username} seed={user.id} size="sm" />
                <span className="user-name">{user.username}</span>
                <span className="user-online">{user.online ? 'online' : ''}</span>
              </button>
            </li>
          ))}
        </ul>
      ) : null}
    </section>
  );
}
