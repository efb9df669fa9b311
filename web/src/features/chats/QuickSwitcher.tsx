import { useEffect, useId, useMemo, useState, type KeyboardEvent, type ReactNode } from 'react';

import { Avatar } from '../../components/ui/Avatar.tsx';
import { Dialog } from '../../components/ui/Dialog.tsx';
import { moveActive } from '../../components/ui/listNavigation.ts';
import { ApiError, createDirect } from '../../lib/api/client.ts';
import type { Conversation, ConversationId, Member, UserId } from '../../lib/api/types.ts';
import type { ChatView } from '../../lib/sync/engine.ts';
import { newPeople, rankChats } from './chatMatch.ts';
import { useUserSearch } from './useUserSearch.ts';

interface QuickSwitcherProps {
  chats: readonly ChatView[];
  meId: UserId;
  /** The presence dot of a direct chat's other member. */
  renderPresence: (userId: UserId) => ReactNode;
  onOpenChat: (id: ConversationId) => void;
  /** A direct chat with a person was opened (made if needed), as the New chat dialog does. */
  onCreated: (conversation: Conversation) => void;
  onPresence: (members: Member[]) => void;
  onClose: () => void;
}

/** Chats shown before anything is typed (the most recent), and matches shown after. */
const RECENT_SHOWN = 8;
const CHATS_SHOWN = 10;
const PEOPLE_SHOWN = 5;

type Option = { kind: 'chat'; key: string; chat: ChatView } | { kind: 'person'; key: string; person: Member };

/**
 * Jump to a chat or a person by name (Ctrl/Cmd+K): chats by title or member names, best
 * match first, then people found by name with whom there is no direct chat yet. The first
 * option is active; arrows move, Enter opens, Escape closes.
 */
export function QuickSwitcher({ chats, meId, renderPresence, onOpenChat, onCreated, onPresence, onClose }: QuickSwitcherProps) {
  const ids = useId();
  const [query, setQuery] = useState('');
  const [activeKey, setActiveKey] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const people = useUserSearch(query, meId);

  const options = useMemo<Option[]>(() => {
    const typed = query.trim() !== '';
    const matched = typed ? rankChats(chats, query, meId).slice(0, CHATS_SHOWN) : chats.slice(0, RECENT_SHOWN);
    const found = typed ? newPeople(people.results, chats, meId).slice(0, PEOPLE_SHOWN) : [];
    return [
      ...matched.map((chat): Option => ({ kind: 'chat', key: `chat:${chat.id}`, chat })),
      ...found.map((person): Option => ({ kind: 'person', key: `person:${person.id}`, person })),
    ];
  }, [chats, query, meId, people.results]);

  const found = options.findIndex((o) => o.key === activeKey);
  const activeIndex = found >= 0 ? found : options.length > 0 ? 0 : -1;
  const optionId = (index: number) => `${ids}-option-${index}`;

  useEffect(() => {
    if (activeIndex >= 0) document.getElementById(`${ids}-option-${activeIndex}`)?.scrollIntoView?.({ block: 'nearest' });
  }, [activeIndex, ids]);

  async function choose(option: Option) {
    if (option.kind === 'chat') return onOpenChat(option.chat.id);
    if (busy) return;
    setBusy(true);
    setError(null);
    onPresence([option.person]);
    try {
      onCreated(await createDirect(option.person.id));
    } catch (cause) {
      setError(cause instanceof ApiError ? cause.message : 'Could not start the chat.');
      setBusy(false);
    }
  }

  const onKeyDown = (event: KeyboardEvent<HTMLInputElement>) => {
    const next = moveActive(event.key, activeIndex, options.length);
    if (next !== null) {
      event.preventDefault();
      setActiveKey(options[next]!.key);
    } else if (event.key === 'Enter') {
      event.preventDefault();
      const option = options[activeIndex];
      if (option) void choose(option);
    }
  };

  const typed = query.trim() !== '';
  const hint = error
    ? null
    : !typed
      ? chats.length === 0
        ? 'No chats yet: type a name to find someone.'
        : 'Recent chats. Type to find a chat or a person.'
      : options.length === 0
        ? people.searching
          ? 'Searching…'
          : `No chat or person matches “${query.trim()}”.`
        : people.searching
          ? 'Looking for more people…'
          : '';

  return (
    <Dialog title="Jump to" onClose={onClose}>
      <label className="field">
        <span className="visually-hidden">Jump to a chat or person</span>
        <input
          // Not type="search": there Escape only empties the field, and here it must close.
          type="text"
          enterKeyHint="go"
          role="combobox"
          aria-label="Jump to a chat or person"
          aria-expanded={options.length > 0}
          aria-controls={`${ids}-list`}
          aria-autocomplete="list"
          aria-activedescendant={activeIndex >= 0 ? optionId(activeIndex) : undefined}
          autoComplete="off"
          autoCapitalize="none"
          spellCheck={false}
          placeholder="Chat or person"
          value={query}
          onChange={(e) => {
            setQuery(e.target.value);
            setActiveKey(null);
          }}
          onKeyDown={onKeyDown}
          data-autofocus
        />
      </label>
      {error ? (
        <p className="form-error" role="alert">
          {error}
        </p>
      ) : (
        <output className="field-hint search-feedback">{hint}</output>
      )}
      {/* A listbox, not a <select>: the field keeps the focus and points at the active option. */}
      {/* oxlint-disable-next-line jsx-a11y/prefer-tag-over-role, jsx-a11y/no-noninteractive-element-to-interactive-role */}
      <ul id={`${ids}-list`} role="listbox" aria-label="Chats and people" className="switcher-options">
        {options.map((option, index) => {
          const active = index === activeIndex;
          const title = option.kind === 'chat' ? option.chat.title : option.person.username;
          const unread = option.kind === 'chat' ? (option.chat.muted ? option.chat.unreadMentions : option.chat.unread) : 0;
          return (
            // The field keeps the focus (aria-activedescendant); Enter there opens the active option.
            // oxlint-disable-next-line jsx-a11y/prefer-tag-over-role, jsx-a11y/no-noninteractive-element-to-interactive-role, jsx-a11y/click-events-have-key-events
            <li role="option"
              key={option.key}
              id={optionId(index)}
              aria-selected={active}
              className={active ? 'switcher-option is-active' : 'switcher-option'}
              onClick={() => void choose(option)}
            >
              <Avatar
                name={title}
                seed={option.kind === 'chat' ? (option.chat.peerId ?? option.chat.id) : option.person.id}
                size="sm"
                badge={option.kind === 'chat' && option.chat.peerId ? renderPresence(option.chat.peerId) : null}
              />
              <span className="switcher-main">
                <span className="switcher-title">{title}</span>
                <span className="switcher-detail">
                  {option.kind === 'person'
                    ? 'Start a direct chat'
                    : option.chat.kind === 'group'
                      ? `Group · ${option.chat.members.length} members`
                      : 'Direct chat'}
                </span>
              </span>
              {unread > 0 ? (
                <span className="badge" aria-label={`${unread} unread`}>
                  {unread > 99 ? '99+' : unread}
                </span>
              ) : null}
            </li>
          );
        })}
      </ul>
    </Dialog>
  );
}
