import { memo, useMemo, type ReactNode } from 'react';

import { Avatar } from '../../components/ui/Avatar.tsx';
import { shortWhen } from '../../components/ui/format.ts';
import { Icon } from '../../components/ui/Icon.tsx';
import type { ConversationId, UserId } from '../../lib/api/types.ts';
import { filesSummary } from '../../lib/files/format.ts';
import type { ChatView, LoadStatus } from '../../lib/sync/engine.ts';
import { filterChats } from './chatMatch.ts';

interface ChatListProps {
  chats: readonly ChatView[];
  status: LoadStatus;
  activeId: ConversationId | null;
  meId: UserId;
  /** Who is typing, per conversation (names, already resolved). */
  typing: Readonly<Record<ConversationId, readonly string[]>>;
  hrefOf: (id: ConversationId) => string;
  /** The presence dot of a direct chat's other member. */
  renderPresence: (userId: UserId) => ReactNode;
  /** A body as one line of plain text (markup dropped). */
  previewOf: (body: string) => string;
  /** Only the chats whose title or members' names contain these words (see ChatFilter). */
  filter: string;
}

/** The chat list: a list named "Chats" whose items are named with each chat's title. */
export function ChatList({ chats: all, status, activeId, meId, typing, hrefOf, renderPresence, previewOf, filter }: ChatListProps) {
  const chats = useMemo(() => filterChats(all, filter, meId), [all, filter, meId]);
  if (status === 'loading' && all.length === 0) {
    return <p className="chats-empty">Loading chats…</p>;
  }
  if (status === 'error' && all.length === 0) {
    return (
      <p className="chats-empty" role="alert">
        Could not load your chats. Retrying…
      </p>
    );
  }
  if (all.length === 0) {
    return <p className="chats-empty">No chats yet. Start one with “New chat”.</p>;
  }
  if (chats.length === 0) {
    return <p className="chats-empty">No chats match “{filter.trim()}”.</p>;
  }
  return (
    <ul className="chat-list" aria-label="Chats">
      {chats.map((chat) => (
        <ChatItem
          key={chat.id}
          chat={chat}
          active={chat.id === activeId}
          meId={meId}
          typing={typing[chat.id]}
          href={hrefOf(chat.id)}
          presence={chat.peerId ? renderPresence(chat.peerId) : null}
          previewOf={previewOf}
        />
      ))}
    </ul>
  );
}

interface ChatItemProps {
  chat: ChatView;
  active: boolean;
  meId: UserId;
  typing: readonly string[] | undefined;
  href: string;
  presence: ReactNode;
  previewOf: (body: string) => string;
}

const ChatItem = memo(function ChatItem({ chat, active, meId, typing, href, presence, previewOf }: ChatItemProps) {
  const last = chat.lastMessage;
  let preview: string;
  if (typing && typing.length > 0) {
    preview = chat.kind === 'group' ? `${typing[0]} is typing…` : 'typing…';
  } else if (last) {
    const text = last.deleted ? 'This message was deleted' : previewOf(last.body);
    // A message of files alone says what it carries; with a caption, the caption.
    const firstLine = !last.deleted && text.trim() === '' && last.files?.length ? filesSummary(last.files) : text;
    const sender =
      last.sender_id === meId
        ? 'You: '
        : chat.kind === 'group'
          ? `${chat.members.find((m) => m.id === last.sender_id)?.username ?? 'Someone'}: `
          : '';
    preview = sender + firstLine;
  } else {
    preview = chat.kind === 'group' ? `${chat.members.length} members` : 'No messages yet';
  }
  return (
    <li aria-label={chat.title} className={active ? 'chat-item is-active' : 'chat-item'}>
      <a href={href} aria-current={active ? 'page' : undefined} className="chat-link">
        <Avatar name={chat.title} seed={chat.peerId ?? chat.id} badge={presence} />
        <span className="chat-main">
          <span className="chat-row">
            <span className="chat-title">{chat.title}</span>
            {last ? (
              <time className="chat-time" dateTime={last.created_at}>
                {shortWhen(last.created_at)}
              </time>
            ) : null}
          </span>
          <span className="chat-row">
            <span className={typing?.length ? 'chat-preview is-typing' : 'chat-preview'}>{preview}</span>
            {chat.muted ? (
              <span className="muted-mark" title="Muted">
                <Icon name="mute" />
                <span className="visually-hidden">muted</span>
              </span>
            ) : null}
            {chat.unreadMentions > 0 ? (
              <output className="badge is-mention" aria-label={`${chat.unreadMentions} unread mention${chat.unreadMentions === 1 ? '' : 's'}`}>
                @
              </output>
            ) : null}
            {chat.unread > 0 ? (
              <output className={chat.muted ? 'badge is-muted' : 'badge'} aria-label={`${chat.unread} unread`}>
                {chat.unread > 99 ? '99+' : chat.unread}
              </output>
            ) : null}
          </span>
        </span>
      </a>
    </li>
  );
});
