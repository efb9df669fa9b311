import { memo, useCallback, useLayoutEffect, useRef, useState } from 'react';

import { dayLabel, clockTime, longWhen, sameDay } from '../../components/ui/format.ts';
import { Icon } from '../../components/ui/Icon.tsx';
import type { ConversationKind, Member, Message, UserId } from '../../lib/api/types.ts';
import type { PendingMessage, TimelineView } from '../../lib/sync/engine.ts';
import { MessageBody } from './MessageBody.tsx';

/** The conversation's timeline as the sync engine shows it, plus what the list needs around it. */
interface MessageListProps extends TimelineView {
  title: string;
  kind: ConversationKind;
  members: readonly Member[];
  meId: UserId;
  readByOthersSeq: number;
  onLoadOlder: () => void;
  onRetry: (clientMsgId: string) => void;
  onDiscard: (clientMsgId: string) => void;
}

/** Within this many pixels of the bottom counts as "at the bottom": new messages follow. */
const STICKY_PX = 48;
/** Within this many pixels of the top, the next older page is requested. */
const LOAD_OLDER_PX = 240;

type Item =
  | { kind: 'stored'; key: string; message: Message }
  | { kind: 'pending'; key: string; pending: PendingMessage };

/**
 * The messages of one conversation, oldest at the top. Keeps the reader's place: follows
 * new messages only when already at the bottom, and keeps the view still when older pages
 * are put in front (the scroll offset grows by exactly what was added).
 */
export function MessageList(props: MessageListProps) {
  const { messages, pending, hasOlder, loadingOlder, status, onLoadOlder, meId } = props;
  const scrollRef = useRef<HTMLDivElement>(null);
  const place = useRef({ atBottom: true, firstKey: '', lastKey: '', scrollHeight: 0 });
  const [unseenBelow, setUnseenBelow] = useState(false);

  const items: Item[] = [
    ...messages.map((message): Item => ({ kind: 'stored', key: `${message.sender_id}:${message.client_msg_id}`, message })),
    ...pending.map((p): Item => ({ kind: 'pending', key: `${meId}:${p.clientMsgId}`, pending: p })),
  ];
  const firstKey = items[0]?.key ?? '';
  const lastItem = items.at(-1);
  const lastKey = lastItem?.key ?? '';
  const lastIsMine = lastItem?.kind === 'pending' || lastItem?.message.sender_id === meId;

  useLayoutEffect(() => {
    const el = scrollRef.current;
    if (!el) return;
    const before = place.current;
    if (before.firstKey !== '' && firstKey !== before.firstKey && before.lastKey === lastKey) {
      // An older page went in front: keep what the reader was looking at where it was.
      el.scrollTop += el.scrollHeight - before.scrollHeight;
    } else if (before.atBottom || (lastKey !== before.lastKey && lastIsMine)) {
      el.scrollTop = el.scrollHeight;
      place.current.atBottom = true;
      setUnseenBelow(false);
    } else if (lastKey !== before.lastKey) {
      setUnseenBelow(true);
    }
    place.current = { ...place.current, firstKey, lastKey, scrollHeight: el.scrollHeight };
  }, [firstKey, lastKey, lastIsMine, items.length]);

  // A short history may not fill the view; then nothing scrolls, so load until it does.
  useLayoutEffect(() => {
    const el = scrollRef.current;
    if (el && status === 'ready' && hasOlder && !loadingOlder && el.scrollHeight <= el.clientHeight + LOAD_OLDER_PX) {
      onLoadOlder();
    }
  }, [status, hasOlder, loadingOlder, onLoadOlder]);

  const onScroll = useCallback(() => {
    const el = scrollRef.current;
    if (!el) return;
    const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight <= STICKY_PX;
    place.current.atBottom = atBottom;
    place.current.scrollHeight = el.scrollHeight;
    if (atBottom) setUnseenBelow(false);
    if (el.scrollTop <= LOAD_OLDER_PX && hasOlder && !loadingOlder && status === 'ready') onLoadOlder();
  }, [hasOlder, loadingOlder, status, onLoadOlder]);

  const jumpToBottom = () => {
    const el = scrollRef.current;
    if (!el) return;
    el.scrollTop = el.scrollHeight;
    place.current.atBottom = true;
    setUnseenBelow(false);
  };

  return (
    <div className="messages-pane">
      <div
        ref={scrollRef}
        className="messages-scroll"
        onScroll={onScroll}
        aria-busy={status === 'loading' || loadingOlder}
      >
        <HistoryEdge {...props} />
        <ol className="messages" aria-label="Messages">
          {items.map((item, i) => {
            const previous = items[i - 1];
            const when = item.kind === 'stored' ? item.message.created_at : item.pending.createdAt;
            const previousWhen =
              previous === undefined ? null : previous.kind === 'stored' ? previous.message.created_at : previous.pending.createdAt;
            const sender = item.kind === 'stored' ? item.message.sender_id : meId;
            const previousSender = previous === undefined ? null : previous.kind === 'stored' ? previous.message.sender_id : meId;
            const newDay = previousWhen === null || !sameDay(previousWhen, when);
            return (
              <MessageItem
                key={item.key}
                item={item}
                meId={meId}
                kind={props.kind}
                sender={nameOf(props.members, sender, meId)}
                dayHeading={newDay ? dayLabel(when) : null}
                startsRun={newDay || previousSender !== sender}
                seen={item.kind === 'stored' && item.message.sender_id === meId && item.message.seq <= props.readByOthersSeq}
                onRetry={props.onRetry}
                onDiscard={props.onDiscard}
              />
            );
          })}
        </ol>
      </div>
      {unseenBelow ? (
        <button type="button" className="jump-button" onClick={jumpToBottom}>
          <Icon name="down" /> New messages
        </button>
      ) : null}
    </div>
  );
}

function nameOf(members: readonly Member[], sender: UserId, meId: UserId): string {
  if (sender === meId) return 'You';
  return members.find((m) => m.id === sender)?.username ?? 'Former member';
}

function HistoryEdge({ status, error, hasOlder, loadingOlder, onLoadOlder, title, kind, messages, pending }: MessageListProps) {
  if (status === 'loading') return <p className="history-edge">Loading messages…</p>;
  if (status === 'error') {
    return (
      <p className="history-edge" role="alert">
        Could not load messages{error ? `: ${error}` : ''}. Retrying when the connection is back.
      </p>
    );
  }
  if (hasOlder) {
    return (
      <div className="history-edge">
        <button type="button" className="link-button" onClick={onLoadOlder} aria-disabled={loadingOlder}>
          {loadingOlder ? 'Loading older messages…' : 'Load older messages'}
        </button>
      </div>
    );
  }
  const empty = messages.length === 0 && pending.length === 0;
  return (
    <p className="history-edge">
      {empty
        ? kind === 'group'
          ? `This is the start of ${title}. Say hello!`
          : `This is the start of your conversation with ${title}. Say hello!`
        : kind === 'group'
          ? `The beginning of ${title}`
          : `The beginning of your conversation with ${title}`}
    </p>
  );
}

interface MessageItemProps {
  item: Item;
  meId: UserId;
  kind: ConversationKind;
  sender: string;
  dayHeading: string | null;
  startsRun: boolean;
  seen: boolean;
  onRetry: (clientMsgId: string) => void;
  onDiscard: (clientMsgId: string) => void;
}

const MessageItem = memo(function MessageItem({
  item,
  meId,
  kind,
  sender,
  dayHeading,
  startsRun,
  seen,
  onRetry,
  onDiscard,
}: MessageItemProps) {
  const mine = item.kind === 'pending' || item.message.sender_id === meId;
  const body = item.kind === 'stored' ? item.message.body : item.pending.body;
  const when = item.kind === 'stored' ? item.message.created_at : item.pending.createdAt;
  const failed = item.kind === 'pending' && item.pending.state === 'failed';
  const classes = ['message', mine ? 'is-mine' : 'is-theirs', startsRun ? 'starts-run' : '', item.kind === 'pending' ? 'is-pending' : '', failed ? 'is-failed' : '']
    .filter(Boolean)
    .join(' ');

  return (
    <li className={classes} data-seq={item.kind === 'stored' ? item.message.seq : undefined}>
      {dayHeading ? (
        <div className="day-heading" aria-hidden="true">
          <span>{dayHeading}</span>
        </div>
      ) : null}
      <div className="bubble">
        {kind === 'group' && !mine && startsRun ? (
          <div className="sender" aria-hidden="true">
            {sender}
          </div>
        ) : null}
        <span className="visually-hidden">{sender}: </span>
        <MessageBody body={body} />{' '}
        <div className="meta">
          <time dateTime={when} title={longWhen(when)}>
            {clockTime(when)}
          </time>
          {mine ? <DeliveryState item={item} seen={seen} /> : null}
        </div>
      </div>
      {failed ? (
        <div className="failed-actions">
          <span className="form-error">Not sent{item.pending.error ? `: ${item.pending.error}` : ''}</span>
          <button type="button" className="link-button" onClick={() => onRetry(item.pending.clientMsgId)}>
            Retry
          </button>
          <button type="button" className="link-button" onClick={() => onDiscard(item.pending.clientMsgId)}>
            Discard
          </button>
        </div>
      ) : null}
    </li>
  );
});

function DeliveryState({ item, seen }: { item: Item; seen: boolean }) {
  if (item.kind === 'pending') {
    if (item.pending.state === 'failed') {
      return (
        <span className="delivery is-failed">
          <Icon name="alert" /> Failed
        </span>
      );
    }
    return (
      <span className="delivery is-pending">
        <Icon name="clock" /> Sending
      </span>
    );
  }
  return (
    <span className={seen ? 'delivery is-seen' : 'delivery is-sent'}>
      <Icon name="check" /> {seen ? 'Seen' : 'Sent'}
    </span>
  );
}
