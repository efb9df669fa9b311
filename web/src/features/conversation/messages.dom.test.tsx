// @vitest-environment jsdom
import { cleanup, fireEvent, render, screen, within } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';

import type { ConversationEvent, ConversationMember, Message } from '../../lib/api/types.ts';
import type { ChatView, TimelineView } from '../../lib/sync/engine.ts';
import type { MessageActions } from './MessageItem.tsx';
import { MessageList } from './MessageList.tsx';

afterEach(cleanup);

const ME = 'u-me';
const AT = '2026-11-28T12:00:00Z';
const names = { 'u-me': 'me', 'u-ann': 'ann', 'u-ben': 'ben' };

function member(id: string, read: number, delivered: number): ConversationMember {
  return { id, username: names[id as keyof typeof names], online: false, role: 'member', last_read_seq: read, last_delivered_seq: delivered };
}

function msg(seq: number, sender: string, body: string, extra: Partial<Message> = {}): Message {
  return { id: `m${seq}`, conversation_id: 'c', seq, sender_id: sender, client_msg_id: `c${seq}`, body, created_at: AT, ...extra };
}

function chat(kind: 'direct' | 'group', members: ConversationMember[], extra: Partial<ChatView> = {}): ChatView {
  return { id: 'c', kind, title: 'Chat', members, peerId: null, lastMessage: null, lastSeq: 9, unread: 0, unreadMentions: 0, readSeq: 9, muted: false, isAdmin: false, ...extra };
}

function timeline(messages: Message[], notices: ConversationEvent[] = []): TimelineView {
  return { status: 'ready', error: null, messages, notices, pending: [], hasOlder: false, loadingOlder: false, hasNewer: false, loadingNewer: false };
}

function actions(): MessageActions {
  return { onReply: vi.fn(), onEdit: vi.fn(), onDelete: vi.fn(), onReact: vi.fn(), onJumpTo: vi.fn(), onRetry: vi.fn(), onDiscard: vi.fn(), onOpenImage: vi.fn() };
}

function list(c: ChatView, t: TimelineView, a = actions(), unreadAfterSeq: number | null = null, window = { onLoadNewer: () => {}, onJumpToLatest: () => Promise.resolve() }) {
  render(
    <MessageList
      chat={c}
      timeline={t}
      meId={ME}
      names={names}
      unreadAfterSeq={unreadAfterSeq}
      unreadCount={2}
      highlightSeq={null}
      onLoadOlder={() => {}}
      onLoadNewer={window.onLoadNewer}
      onJumpToLatest={window.onJumpToLatest}
      onLoadUntil={() => Promise.resolve(true)}
      actions={a}
    />,
  );
  return screen.getAllByRole('listitem');
}

describe('MessageList', () => {
  it('offers newer messages and the way back to the latest in a window of older history', () => {
    const onLoadNewer = vi.fn();
    const onJumpToLatest = vi.fn(() => Promise.resolve());
    const t = { ...timeline([msg(1, 'u-ann', 'old one')]), hasNewer: true };
    list(chat('direct', [member(ME, 9, 9), member('u-ann', 9, 9)]), t, actions(), null, { onLoadNewer, onJumpToLatest });
    fireEvent.click(screen.getByRole('button', { name: 'Load newer messages' }));
    expect(onLoadNewer).toHaveBeenCalled();
    fireEvent.click(screen.getByRole('button', { name: 'Jump to latest' }));
    expect(onJumpToLatest).toHaveBeenCalledTimes(1);
  });

  it('shows sent, delivered and seen in a direct chat from the peer’s markers', () => {
    const items = list(chat('direct', [member(ME, 3, 3), member('u-ann', 1, 2)]), timeline([msg(1, ME, 'one'), msg(2, ME, 'two'), msg(3, ME, 'three')]));
    expect(within(items[0]!).getByText('Seen')).toBeTruthy();
    expect(within(items[1]!).getByText('Delivered')).toBeTruthy();
    expect(within(items[2]!).getByText('Sent')).toBeTruthy();
  });

  it('says who saw my newest message in a group, and who only received it', () => {
    const items = list(chat('group', [member(ME, 1, 1), member('u-ann', 1, 1), member('u-ben', 0, 1)]), timeline([msg(1, ME, 'news')]));
    expect(within(items[0]!).getByText('Seen by ann')).toBeTruthy();
    expect(items[0]!.querySelector('.delivery')!.textContent).toBe(' Delivered. Seen by ann. Delivered to ben');
  });

  it('shows system lines, the unread divider, edits and deleted messages', () => {
    const notice = { conversation_id: 'c', seq: 2, sender_id: 'u-ann', client_msg_id: 'e', created_at: AT, kind: 'member_added', user: { id: 'u-ben', username: 'ben' }, role: 'member' } as ConversationEvent;
    const items = list(
      chat('group', [member(ME, 9, 9), member('u-ann', 9, 9)]),
      timeline([msg(1, 'u-ann', 'hello', { edited_at: AT }), msg(3, 'u-ann', '', { deleted: true }), msg(4, 'u-ann', 'new')], [notice]),
      actions(),
      3,
    );
    expect(items.map((li) => li.className.includes('system-line'))).toEqual([false, true, false, false]);
    expect(items[1]!.textContent).toContain('ann added ben');
    expect(items[0]!.textContent).toContain('edited');
    expect(items[2]!.textContent).toContain('This message was deleted');
    expect(within(items[2]!).queryByRole('button', { name: 'More actions' })).toBeNull();
    expect(within(items[3]!).getByText('2 unread messages')).toBeTruthy();
  });

  it('opens the actions menu from the keyboard and gives the focus back when it closes', () => {
    const a = actions();
    const items = list(chat('direct', [member(ME, 0, 0), member('u-ann', 0, 0)]), timeline([msg(1, ME, 'mine')]), a);
    const more = within(items[0]!).getByRole('button', { name: 'More actions' });
    fireEvent.click(more);
    const menu = screen.getByRole('menu', { name: 'Message actions' });
    const entries = within(menu).getAllByRole('menuitem');
    expect(entries.map((e) => e.textContent)).toEqual(['Reply', 'React…', 'Edit', 'Copy text', 'Delete']);
    expect(document.activeElement).toBe(entries[0]);
    fireEvent.keyDown(entries[0]!, { key: 'ArrowDown' });
    expect(document.activeElement).toBe(entries[1]);
    fireEvent.keyDown(entries[1]!, { key: 'End' });
    expect(document.activeElement).toBe(entries[4]);
    fireEvent.click(entries[4]!);
    expect(a.onDelete).toHaveBeenCalledWith(1);
    expect(screen.queryByRole('menu')).toBeNull();
    expect(document.activeElement).toBe(more);
  });

  it('lists who reacted and toggles mine', () => {
    const a = actions();
    const items = list(
      chat('direct', [member(ME, 0, 0), member('u-ann', 0, 0)]),
      timeline([msg(1, 'u-ann', 'hi', { reactions: [{ emoji: '👍', user_ids: ['u-ann', ME] }] })]),
      a,
    );
    const reaction = within(items[0]!).getByRole('button', { name: /^thumbs up: 2 \(ann, you\)/ });
    expect(reaction.getAttribute('aria-pressed')).toBe('true');
    fireEvent.click(reaction);
    expect(a.onReact).toHaveBeenCalledWith(1, '👍');
    // Theirs cannot be edited or deleted by a member.
    fireEvent.click(within(items[0]!).getByRole('button', { name: 'More actions' }));
    expect(within(screen.getByRole('menu')).getAllByRole('menuitem').map((e) => e.textContent)).toEqual(['Reply', 'React…', 'Copy text']);
  });

  it('picks a reaction with the arrow keys', () => {
    const a = actions();
    const items = list(chat('direct', [member(ME, 0, 0), member('u-ann', 0, 0)]), timeline([msg(1, 'u-ann', 'hi')]), a);
    fireEvent.click(within(items[0]!).getByRole('button', { name: 'Add reaction' }));
    const picker = screen.getByRole('dialog', { name: 'Pick a reaction' });
    const first = within(picker).getByRole('button', { name: 'thumbs up' });
    expect(document.activeElement).toBe(first);
    fireEvent.keyDown(first, { key: 'ArrowDown' });
    expect(document.activeElement).toBe(within(picker).getByRole('button', { name: 'eyes' }));
    fireEvent.click(document.activeElement!);
    expect(a.onReact).toHaveBeenCalledWith(1, '👀');
  });
});

describe('MessageList with files', () => {
  const photo = { id: 'f1', name: 'photo.jpg', content_type: 'image/jpeg', size: 2048, image: { width: 640, height: 480 } };
  const doc = { id: 'f2', name: 'notes.txt', content_type: 'text/plain', size: 10 };

  it('shows a message of files alone without an empty body, a caption under them, and a deleted one without its files', () => {
    const a = actions();
    const items = list(
      chat('direct', [member(ME, 3, 3), member('u-ann', 3, 3)]),
      timeline([msg(1, 'u-ann', '', { files: [photo] }), msg(2, 'u-ann', 'the notes', { files: [doc] }), msg(3, 'u-ann', '', { deleted: true, files: [doc] })]),
      a,
    );
    expect(within(items[0]!).getByRole('img', { name: 'photo.jpg' })).toBeTruthy();
    expect(items[0]!.querySelector('.message-body')).toBeNull();
    fireEvent.click(within(items[0]!).getByRole('link', { name: 'photo.jpg' }));
    expect(a.onOpenImage).toHaveBeenCalledWith([photo], 0);
    expect(within(items[1]!).getByRole('link', { name: /Download notes\.txt/ })).toBeTruthy();
    expect(items[1]!.querySelector('.message-body')?.textContent).toBe('the notes');
    expect(within(items[2]!).queryByRole('link')).toBeNull();
    expect(items[2]!.textContent).toContain('This message was deleted');
  });
});
