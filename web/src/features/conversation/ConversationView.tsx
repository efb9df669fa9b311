import { useCallback, type ReactNode } from 'react';

import { Avatar } from '../../components/ui/Avatar.tsx';
import { Icon } from '../../components/ui/Icon.tsx';
import type { UserId } from '../../lib/api/types.ts';
import type { ChatView, TimelineView } from '../../lib/sync/engine.ts';
import { Composer } from './Composer.tsx';
import { MessageList } from './MessageList.tsx';

interface ConversationViewProps {
  chat: ChatView;
  timeline: TimelineView | undefined;
  meId: UserId;
  /** Names of the people typing here now. */
  typing: readonly string[];
  /** Under the title: presence of a direct chat's peer, or the group's members. */
  status: ReactNode;
  /** The avatar's corner (a presence dot), if any. */
  badge: ReactNode;
  backHref: string;
  onSend: (body: string) => void;
  onTyping: () => void;
  onLoadOlder: () => void;
  onRetry: (clientMsgId: string) => void;
  onDiscard: (clientMsgId: string) => void;
}

const EMPTY_TIMELINE: TimelineView = {
  status: 'loading',
  error: null,
  messages: [],
  pending: [],
  hasOlder: false,
  loadingOlder: false,
  notices: [],
};

export function ConversationView(props: ConversationViewProps) {
  const { chat, meId, typing, onLoadOlder } = props;
  const timeline = props.timeline ?? EMPTY_TIMELINE;
  const loadOlder = useCallback(() => onLoadOlder(), [onLoadOlder]);

  return (
    <section className="conversation" aria-labelledby="conversation-title">
      <header className="conversation-header">
        <a className="icon-button back-button" href={props.backHref} aria-label="Back to chats">
          <Icon name="back" />
        </a>
        <Avatar name={chat.title} seed={chat.id} badge={props.badge} />
        <div className="conversation-heading">
          <h2 id="conversation-title">{chat.title}</h2>
          <div className="conversation-status">{props.status}</div>
        </div>
      </header>
      <MessageList
        title={chat.title}
        kind={chat.kind}
        members={chat.members}
        meId={meId}
        status={timeline.status}
        error={timeline.error}
        messages={timeline.messages}
        notices={timeline.notices}
        pending={timeline.pending}
        hasOlder={timeline.hasOlder}
        loadingOlder={timeline.loadingOlder}
        readByOthersSeq={Math.max(0, ...chat.members.filter((m) => m.id !== meId).map((m) => m.last_read_seq))}
        onLoadOlder={loadOlder}
        onRetry={props.onRetry}
        onDiscard={props.onDiscard}
      />
      <p className="typing-indicator" aria-live="polite">
        {typingText(typing)}
      </p>
      <Composer placeholder={`Message ${chat.title}`} onSend={props.onSend} onTyping={props.onTyping} />
    </section>
  );
}

function typingText(names: readonly string[]): string {
  if (names.length === 0) return '';
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return 'Several people are typing…';
}
