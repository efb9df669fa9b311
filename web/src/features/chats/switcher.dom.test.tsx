// @vitest-environment jsdom
import { act, cleanup, fireEvent, render, screen, within } from '@testing-library/react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import type { ChatView } from '../../lib/sync/engine.ts';
import { QuickSwitcher } from './QuickSwitcher.tsx';

HTMLDialogElement.prototype.showModal ??= function (this: HTMLDialogElement) {
  this.open = true;
};
HTMLDialogElement.prototype.close ??= function (this: HTMLDialogElement) {
  this.open = false;
};

const ME = 'u-me';

function chat(id: string, title: string, others: string[], unread = 0): ChatView {
  const kind = others.length === 1 ? 'direct' : 'group';
  return {
    id,
    kind,
    title,
    members: [ME, ...others].map((name) => ({ id: name === ME ? ME : `u-${name}`, username: name === ME ? 'me' : name, online: false, role: 'member' as const, last_delivered_seq: 0, last_read_seq: 0 })),
    peerId: kind === 'direct' ? `u-${others[0]}` : null,
    lastMessage: null,
    lastSeq: 0,
    unread,
    unreadMentions: 0,
    readSeq: 0,
    muted: false,
    isAdmin: false,
  };
}

const chats = [chat('c1', 'bob', ['bob'], 3), chat('c2', 'Trip planning', ['bob', 'carol'])];

let fetchMock: ReturnType<typeof vi.fn>;

beforeEach(() => {
  vi.useFakeTimers();
  fetchMock = vi.fn((url: string, init?: RequestInit) => {
    if (url.startsWith('/api/v1/users')) {
      return Promise.resolve(new Response(JSON.stringify([{ id: 'u-bob', username: 'bob', online: true }, { id: 'u-bobby', username: 'bobby', online: false }]), { status: 200 }));
    }
    if (url === '/api/v1/conversations' && init?.method === 'POST') {
      return Promise.resolve(new Response(JSON.stringify({ id: 'c-new', kind: 'direct', title: null, members: [], last_message: null, last_seq: 0, unread_count: 0, unread_mentions: 0, last_read_seq: 0, muted: false }), { status: 201 }));
    }
    return Promise.reject(new Error(`unexpected ${url}`));
  });
  vi.stubGlobal('fetch', fetchMock);
});

afterEach(() => {
  cleanup();
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

function switcher() {
  const onOpenChat = vi.fn();
  const onCreated = vi.fn();
  render(<QuickSwitcher chats={chats} meId={ME} renderPresence={() => null} onOpenChat={onOpenChat} onCreated={onCreated} onPresence={() => {}} onClose={() => {}} />);
  const field = screen.getByRole('combobox', { name: 'Jump to a chat or person' });
  const options = () => within(screen.getByRole('listbox', { name: 'Chats and people' })).queryAllByRole('option');
  /** Each option as "title: detail". */
  const shown = () => options().map((o) => `${o.querySelector('.switcher-title')!.textContent}: ${o.querySelector('.switcher-detail')!.textContent}`);
  return { onOpenChat, onCreated, field, options, shown };
}

describe('QuickSwitcher', () => {
  it('lists the recent chats with their unread counts, the first one active', () => {
    const { options, shown, field, onOpenChat } = switcher();
    expect(shown()).toEqual(['bob: Direct chat', 'Trip planning: Group · 3 members']);
    expect(within(options()[0]!).getByLabelText('3 unread')).toBeTruthy();
    expect(options()[0]!.getAttribute('aria-selected')).toBe('true');
    fireEvent.keyDown(field, { key: 'Enter' });
    expect(onOpenChat).toHaveBeenCalledWith('c1');
  });

  it('ranks matching chats, then people found by name with no chat yet, and opens a person’s direct chat', async () => {
    const { shown, field, onCreated } = switcher();
    fireEvent.change(field, { target: { value: 'bob' } });
    expect(shown()).toEqual(['bob: Direct chat', 'Trip planning: Group · 3 members']);
    await act(async () => {
      await vi.advanceTimersByTimeAsync(300);
    });
    // bob has a direct chat already: found as the chat, not again as a person.
    expect(shown()).toEqual(['bob: Direct chat', 'Trip planning: Group · 3 members', 'bobby: Start a direct chat']);
    fireEvent.keyDown(field, { key: 'ArrowDown' });
    fireEvent.keyDown(field, { key: 'ArrowDown' });
    fireEvent.keyDown(field, { key: 'Enter' });
    await act(async () => {
      await vi.advanceTimersByTimeAsync(0);
    });
    expect(fetchMock).toHaveBeenCalledWith('/api/v1/conversations', expect.objectContaining({ method: 'POST', body: JSON.stringify({ kind: 'direct', members: ['u-bobby'] }) }));
    expect(onCreated).toHaveBeenCalledWith(expect.objectContaining({ id: 'c-new' }));
  });

  it('says when nothing matches', async () => {
    fetchMock.mockImplementation(() => Promise.resolve(new Response('[]', { status: 200 })));
    const { field, options } = switcher();
    fireEvent.change(field, { target: { value: 'zed' } });
    await act(async () => {
      await vi.advanceTimersByTimeAsync(300);
    });
    expect(options()).toHaveLength(0);
    expect(screen.getByText('No chat or person matches “zed”.')).toBeTruthy();
  });
});
