import { useEffect, useId, useMemo, useState, type KeyboardEvent } from 'react';

import { Dialog } from '../../components/ui/Dialog.tsx';
import { longWhen, shortWhen } from '../../components/ui/format.ts';
import { moveActive } from '../../components/ui/listNavigation.ts';
import type { SearchHit, SearchSort, UserId } from '../../lib/api/types.ts';
import { hitKey, queryOf, type DateRange, type MessageSearch, type SearchInput, type SearchState } from '../../lib/search/messageSearch.ts';
import type { ChatView } from '../../lib/sync/engine.ts';
import { Snippet } from './Snippet.tsx';

interface SearchDialogProps {
  /** What was asked, kept by the caller so that reopening shows the same search. */
  input: SearchInput;
  onInput: (input: SearchInput) => void;
  state: SearchState;
  search: MessageSearch;
  chats: readonly ChatView[];
  names: Readonly<Record<UserId, string>>;
  meId: UserId;
  /** The hit opened last (`hitKey`): active again when the search reopens. */
  lastOpened: string | null;
  onOpen: (hit: SearchHit) => void;
  onClose: () => void;
}

const RANGES: ReadonlyArray<{ value: DateRange; label: string }> = [
  { value: 'any', label: 'Any time' },
  { value: 'week', label: 'Past week' },
  { value: 'month', label: 'Past month' },
  { value: 'year', label: 'Past year' },
];

const SORTS: ReadonlyArray<{ value: SearchSort; label: string }> = [
  { value: 'relevance', label: 'Most relevant' },
  { value: 'recent', label: 'Newest' },
];

/**
 * Message search: the words, where, from whom, since when and in which order; results as
 * you type (debounced, the latest query winning), each with its chat, sender, time and the
 * matched words marked. Arrows move through the results while the focus stays in the field,
 * Enter opens one in its conversation, Escape closes.
 */
export function SearchDialog(props: SearchDialogProps) {
  const { input, state, search, chats, names, meId, onOpen } = props;
  const ids = useId();
  const listId = `${ids}-results`;
  const [activeKey, setActiveKey] = useState<string | null>(props.lastOpened);
  const hits = state.hits;
  const activeIndex = activeKey === null ? -1 : hits.findIndex((hit) => hitKey(hit) === activeKey);
  const optionId = (index: number) => `${ids}-hit-${index}`;

  const titles = useMemo(() => new Map(chats.map((c) => [c.id, c.title])), [chats]);
  const people = useMemo(() => {
    const byId = new Map<UserId, string>();
    for (const chat of chats) for (const m of chat.members) byId.set(m.id, m.username);
    return [...byId].sort((a, b) => a[1].localeCompare(b[1]));
  }, [chats]);
  const titleOf = (hit: SearchHit) => titles.get(hit.conversation_id) ?? 'A chat you left';
  const senderName = (id: UserId) => (id === meId ? 'You' : (names[id] ?? 'Former member'));

  /** A new text waits for typing to pause; a new filter, Enter and Retry ask at once. */
  const change = (next: SearchInput, immediate: boolean) => {
    props.onInput(next);
    search.setQuery(queryOf(next, Date.now()), immediate);
  };

  useEffect(() => {
    if (activeIndex >= 0) document.getElementById(optionId(activeIndex))?.scrollIntoView?.({ block: 'nearest' });
    // optionId is derived from `ids`, which never changes.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [activeIndex]);

  const onKeyDown = (event: KeyboardEvent<HTMLInputElement>) => {
    const next = moveActive(event.key, activeIndex, hits.length);
    if (next !== null) {
      event.preventDefault();
      setActiveKey(hitKey(hits[next]!));
      return;
    }
    if (event.key === 'Enter') {
      event.preventDefault();
      const hit = hits[activeIndex];
      if (hit && state.status !== 'searching') onOpen(hit);
      else change(input, true);
    }
  };

  const query = input.text.trim();
  let status: string;
  switch (state.status) {
    case 'idle':
      status = query === '' ? 'Every word must match; the last one may be the start of a word.' : `Press Enter to search for “${query}”.`;
      break;
    case 'searching':
      status = 'Searching…';
      break;
    case 'ready':
      status =
        hits.length === 0
          ? `No messages match “${state.query?.q.trim() ?? query}”${filtered(input) ? ' with these filters' : ''}.`
          : `${hits.length}${state.nextCursor ? '+' : ''} message${hits.length === 1 && !state.nextCursor ? '' : 's'} found`;
      break;
    case 'unavailable':
      status = 'Search is not available on this server.';
      break;
    case 'error':
      status = '';
      break;
  }

  return (
    <Dialog title="Search messages" onClose={props.onClose} className="is-wide">
      <div className="search-form">
        <label className="field">
          <span className="visually-hidden">Search messages</span>
          <input
            type="text"
            enterKeyHint="search"
            role="combobox"
            aria-label="Search messages"
            aria-expanded={hits.length > 0}
            aria-controls={listId}
            aria-autocomplete="list"
            aria-activedescendant={activeIndex >= 0 ? optionId(activeIndex) : undefined}
            autoComplete="off"
            spellCheck={false}
            placeholder="Search messages"
            maxLength={200}
            value={input.text}
            onChange={(e) => change({ ...input, text: e.target.value }, false)}
            onKeyDown={onKeyDown}
            data-autofocus
          />
        </label>
        <div className="search-filters">
          <label className="select-field">
            <span id={`${ids}-in`}>In</span>
            <select aria-labelledby={`${ids}-in`} value={input.conversationId ?? ''} onChange={(e) => change({ ...input, conversationId: e.target.value || null }, true)}>
              <option value="">All chats</option>
              {chats.map((chat) => (
                <option key={chat.id} value={chat.id}>
                  {chat.title}
                </option>
              ))}
            </select>
          </label>
          <label className="select-field">
            <span id={`${ids}-from`}>From</span>
            <select aria-labelledby={`${ids}-from`} value={input.senderId ?? ''} onChange={(e) => change({ ...input, senderId: e.target.value || null }, true)}>
              <option value="">Anyone</option>
              {people.map(([id, username]) => (
                <option key={id} value={id}>
                  {id === meId ? `${username} (you)` : username}
                </option>
              ))}
            </select>
          </label>
          <label className="select-field">
            <span id={`${ids}-when`}>When</span>
            <select aria-labelledby={`${ids}-when`} value={input.range} onChange={(e) => change({ ...input, range: e.target.value as DateRange }, true)}>
              {RANGES.map((range) => (
                <option key={range.value} value={range.value}>
                  {range.label}
                </option>
              ))}
            </select>
          </label>
        </div>
      </div>

      <div className="search-summary">
        {state.status === 'error' ? (
          <p className="form-error search-status" role="alert">
            Could not search: {state.error}{' '}
            <button type="button" className="link-button" onClick={() => search.retry()}>
              Retry
            </button>
          </p>
        ) : (
          <output className={state.status === 'unavailable' ? 'search-status is-unavailable' : 'search-status'}>{status}</output>
        )}
        {state.status === 'unavailable' ? null : (
        <fieldset className="segmented">
          <legend className="visually-hidden">Sort</legend>
          {SORTS.map((sort) => (
            <button
              key={sort.value}
              type="button"
              aria-pressed={input.sort === sort.value}
              onClick={() => change({ ...input, sort: sort.value }, true)}
            >
              {sort.label}
            </button>
          ))}
        </fieldset>
        )}
      </div>

      {/* A listbox, not a <select>: the field keeps the focus and points at the active result. */}
      {/* oxlint-disable-next-line jsx-a11y/prefer-tag-over-role, jsx-a11y/no-noninteractive-element-to-interactive-role */}
      <ul id={listId} role="listbox" aria-label="Results" className="search-results" aria-busy={state.status === 'searching'}>
        {hits.map((hit, index) => (
          // The field keeps the focus (aria-activedescendant); Enter there opens the active result.
          // oxlint-disable-next-line jsx-a11y/prefer-tag-over-role, jsx-a11y/no-noninteractive-element-to-interactive-role, jsx-a11y/click-events-have-key-events
          <li role="option"
            key={hitKey(hit)}
            id={optionId(index)}
            aria-selected={index === activeIndex}
            className={index === activeIndex ? 'search-hit is-active' : 'search-hit'}
            onClick={() => onOpen(hit)}
          >
            <span className="search-hit-head">
              <span className="search-hit-chat">{titleOf(hit)}</span>
              {/* In a direct chat the title is the other person: said once. */}
              <span className="search-hit-sender">{senderName(hit.sender_id) === titleOf(hit) ? '' : senderName(hit.sender_id)}</span>
              <time dateTime={hit.created_at} title={longWhen(hit.created_at)}>
                {shortWhen(hit.created_at)}
              </time>
            </span>
            <span className="search-hit-body">
              <Snippet segments={hit.snippet} />
              {hit.edited_at ? <span className="edited"> (edited)</span> : null}
            </span>
          </li>
        ))}
      </ul>
      {state.status === 'ready' && state.nextCursor !== null ? (
        <div className="search-more">
          {state.error ? (
            <span className="form-error" role="alert">
              Could not load more: {state.error}
            </span>
          ) : null}
          <button type="button" className="button" onClick={() => (state.error ? search.retry() : search.loadMore())} aria-disabled={state.loadingMore}>
            {state.loadingMore ? 'Loading…' : 'Load more'}
          </button>
        </div>
      ) : null}
    </Dialog>
  );
}

function filtered(input: SearchInput): boolean {
  return input.conversationId !== null || input.senderId !== null || input.range !== 'any';
}
