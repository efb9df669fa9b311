// @vitest-environment jsdom
import { cleanup, fireEvent, render, screen, within } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';

import type { SearchHit } from '../../lib/api/types.ts';
import { IDLE_SEARCH, MessageSearch, type SearchInput, type SearchState } from '../../lib/search/messageSearch.ts';
import type { ChatView } from '../../lib/sync/engine.ts';
import { FakeClock } from '../../test/fakeClock.ts';
import { SearchDialog } from './SearchDialog.tsx';
import { Snippet } from './Snippet.tsx';

afterEach(cleanup);

// jsdom has no <dialog> methods.
HTMLDialogElement.prototype.showModal ??= function (this: HTMLDialogElement) {
  this.open = true;
};
HTMLDialogElement.prototype.close ??= function (this: HTMLDialogElement) {
  this.open = false;
};

const ME = 'u-me';
const INPUT: SearchInput = { text: 'deploy', conversationId: null, senderId: null, range: 'any', sort: 'relevance' };

function chat(id: string, title: string): ChatView {
  return {
    id,
    kind: 'group',
    title,
    members: [
      { id: ME, username: 'me', online: false, role: 'member', last_delivered_seq: 0, last_read_seq: 0 },
      { id: 'u-ann', username: 'ann', online: false, role: 'member', last_delivered_seq: 0, last_read_seq: 0 },
    ],
    peerId: null,
    lastMessage: null,
    lastSeq: 0,
    unread: 0,
    unreadMentions: 0,
    readSeq: 0,
    muted: false,
    isAdmin: false,
  };
}

const hits: SearchHit[] = [
  { conversation_id: 'c1', seq: 7, sender_id: 'u-ann', created_at: '2026-12-01T10:00:00Z', snippet: [{ text: 'we should ' }, { text: 'deploy', hit: true }, { text: ' on friday' }] },
  { conversation_id: 'c2', seq: 3, sender_id: ME, created_at: '2026-11-30T10:00:00Z', edited_at: '2026-11-30T11:00:00Z', snippet: [{ text: 'deployed', hit: true }] },
];

function dialog(state: SearchState, onOpen = vi.fn(), onInput = vi.fn()) {
  const search = new MessageSearch(() => new Promise(() => {}), new FakeClock(), () => {});
  render(
    <SearchDialog
      input={INPUT}
      onInput={onInput}
      state={state}
      search={search}
      chats={[chat('c1', 'Release train'), chat('c2', 'Ops')]}
      names={{ 'u-ann': 'ann', [ME]: 'me' }}
      meId={ME}
      lastOpened={null}
      onOpen={onOpen}
      onClose={() => {}}
    />,
  );
  return { onOpen, onInput, search, field: screen.getByRole('combobox', { name: 'Search messages' }) };
}

const READY: SearchState = { ...IDLE_SEARCH, status: 'ready', query: { q: 'deploy' }, hits, nextCursor: '2' };

describe('Snippet', () => {
  it('marks the matched words and keeps markup as text', () => {
    const { container } = render(<Snippet segments={[{ text: '<b>not bold</b> ' }, { text: 'found', hit: true }]} />);
    expect(container.querySelectorAll('mark')).toHaveLength(1);
    expect(container.querySelector('mark')!.textContent).toBe('found');
    expect(container.querySelector('b')).toBeNull();
    expect(container.textContent).toBe('<b>not bold</b> found');
  });
});

describe('SearchDialog', () => {
  it('shows each result with its chat, sender, time and marked snippet', () => {
    dialog(READY);
    const options = within(screen.getByRole('listbox', { name: 'Results' })).getAllByRole('option');
    expect(options).toHaveLength(2);
    expect(options[0]!.textContent).toContain('Release train');
    expect(options[0]!.textContent).toContain('ann');
    expect(options[0]!.querySelector('mark')!.textContent).toBe('deploy');
    expect(options[1]!.textContent).toContain('You');
    expect(options[1]!.textContent).toContain('(edited)');
    expect(screen.getByText('2+ messages found')).toBeTruthy();
    expect(screen.getByRole('button', { name: 'Load more' })).toBeTruthy();
  });

  it('moves through the results with the arrows, keeping the focus in the field, and opens with Enter', () => {
    const { field, onOpen } = dialog(READY);
    fireEvent.keyDown(field, { key: 'ArrowDown' });
    fireEvent.keyDown(field, { key: 'ArrowDown' });
    const options = within(screen.getByRole('listbox', { name: 'Results' })).getAllByRole('option');
    expect(options[1]!.getAttribute('aria-selected')).toBe('true');
    expect(field.getAttribute('aria-activedescendant')).toBe(options[1]!.id);
    fireEvent.keyDown(field, { key: 'ArrowDown' });
    expect(options[1]!.getAttribute('aria-selected')).toBe('true');
    fireEvent.keyDown(field, { key: 'Enter' });
    expect(onOpen).toHaveBeenCalledWith(hits[1]);
    fireEvent.click(options[0]!);
    expect(onOpen).toHaveBeenLastCalledWith(hits[0]);
  });

  it('says when nothing matches, when search is not available, and when it failed', () => {
    dialog({ ...READY, hits: [], nextCursor: null });
    expect(screen.getByText('No messages match “deploy”.')).toBeTruthy();
    cleanup();
    dialog({ ...READY, status: 'unavailable', hits: [], error: 'search is not available on this deployment' });
    expect(screen.getByText('Search is not available on this server.')).toBeTruthy();
    expect(screen.queryByRole('alert')).toBeNull();
    cleanup();
    dialog({ ...READY, status: 'error', hits: [], error: 'Cannot reach the server.' });
    expect(screen.getByRole('alert').textContent).toContain('Cannot reach the server.');
    expect(screen.getByRole('button', { name: 'Retry' })).toBeTruthy();
  });

  it('asks again at once when a filter changes', () => {
    const { onInput, search } = dialog(READY);
    const setQuery = vi.spyOn(search, 'setQuery');
    fireEvent.change(screen.getByLabelText('In'), { target: { value: 'c2' } });
    expect(onInput).toHaveBeenCalledWith({ ...INPUT, conversationId: 'c2' });
    expect(setQuery).toHaveBeenCalledWith(expect.objectContaining({ q: 'deploy', conversation_id: 'c2' }), true);
    fireEvent.click(screen.getByRole('button', { name: 'Newest' }));
    expect(setQuery).toHaveBeenLastCalledWith(expect.objectContaining({ sort: 'recent' }), true);
  });
});
