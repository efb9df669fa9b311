import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState } from 'react';

import { clockTime, dayLabel, longWhen, sameDay } from '../../components/ui/format.ts';
import { Icon } from '../../components/ui/Icon.tsx';
import type { ConversationEvent, ReplyPreview, UserId } from '../../lib/api/types.ts';
import { plainText } from './markdown.ts';
import type { ChatView, TimelineView } from '../../lib/sync/engine.ts';
import { MessageItem, type Item, type MessageActions, type ReceiptState } from './MessageItem.tsx';
import { systemText } from './systemText.ts';

interface MessageListProps {
  chat: ChatView;
  timeline: TimelineView;
  meId: UserId;
  names: Readonly<Record<UserId, string>>;
  /** My read marker when the chat was opened with unread messages: the divider goes after it. */
  unreadAfterSeq: number | null;
  /** How many were unread then. */
  unreadCount: number;
  /** The message to scroll to and highlight (a reply's original). */
  highlightSeq: number | null;
  onLoadOlder: () => void;
  /** Pages newer messages into a window away from the newest. */
  onLoadNewer: () => void;
  onJumpToLatest: () => Promise<void>;
  /** Pages history in until everything from `seq` on is loaded. */
  onLoadUntil: (seq: number) => Promise<boolean>;
  actions: MessageActions;
}

/** Within this many pixels of the bottom counts as "at the bottom": new messages follow. */
const STICKY_PX = 48;
/** Within this many pixels of the top, the next older page is requested. */
const LOAD_OLDER_PX = 240;

type Row = Item | { kind: 'notice'; key: string; event: ConversationEvent };

/**
 * The messages of one conversation, oldest at the top, with system lines for member and
 * title events. Keeps the reader's place: follows new messages only when already at the
 * bottom, keeps the view still when older pages are put in front, opens at the first
 * unread message when there are some.
 */
export function MessageList(props: MessageListProps) {
  const { chat, timeline, meId, names, unreadAfterSeq, highlightSeq, onLoadOlder, onLoadNewer, onJumpToLatest, onLoadUntil, actions } = props;
  const { messages, notices, pending, hasOlder, loadingOlder, hasNewer, loadingNewer, status } = timeline;
  const scrollRef = useRef<HTMLDivElement>(null);
  const place = useRef({ atBottom: true, firstKey: '', lastKey: '', scrollHeight: 0, opened: false });
  const [unseenBelow, setUnseenBelow] = useState(false);
  const [unreadAbove, setUnreadAbove] = useState(false);

  const rows = useMemo(() => {
    const stored: Row[] = [
      ...messages.map((message): Row => ({ kind: 'stored', key: `${message.sender_id}:${message.client_msg_id}`, message })),
      ...notices.map((event): Row => ({ kind: 'notice', key: `event:${event.seq}`, event })),
    ].sort((a, b) => seqOf(a) - seqOf(b));
    return [...stored, ...pending.map((p): Row => ({ kind: 'pending', key: `${meId}:${p.clientMsgId}`, pending: p }))];
  }, [messages, notices, pending, meId]);

  // The divider marks the first unread message only once it is loaded: the oldest message
  // held is already read, or there is nothing older. Until then, a button pages it in.
  const unreadLoaded = unreadAfterSeq !== null && (!hasOlder || (messages[0]?.seq ?? Infinity) <= unreadAfterSeq);
  const firstUnreadSeq = useMemo(() => {
    if (unreadAfterSeq === null || !unreadLoaded) return null;
    return messages.find((m) => m.seq > unreadAfterSeq && m.sender_id !== meId)?.seq ?? null;
  }, [messages, unreadAfterSeq, unreadLoaded, meId]);
  const unreadNotLoaded = unreadAfterSeq !== null && !unreadLoaded;

  const receipts = useReceipts(chat, messages, meId, names);
  const newestMineSeq = useMemo(() => {
    for (let i = messages.length - 1; i >= 0; i--) if (messages[i]!.sender_id === meId && !messages[i]!.deleted) return messages[i]!.seq;
    return null;
  }, [messages, meId]);

  const firstKey = rows[0]?.key ?? '';
  const lastRow = rows.at(-1);
  const lastKey = lastRow?.key ?? '';
  const lastIsMine = lastRow?.kind === 'pending' || (lastRow?.kind === 'stored' && lastRow.message.sender_id === meId);

  const checkUnreadAbove = useCallback(() => {
    const el = scrollRef.current;
    if (!el || unreadAfterSeq === null) return setUnreadAbove(false);
    const divider = el.querySelector('.unread-divider');
    if (!divider) return setUnreadAbove(unreadNotLoaded);
    setUnreadAbove(divider.getBoundingClientRect().bottom < el.getBoundingClientRect().top);
  }, [unreadAfterSeq, unreadNotLoaded]);

  useLayoutEffect(() => {
    const el = scrollRef.current;
    if (!el) return;
    const before = place.current;
    const divider = el.querySelector<HTMLElement>('.unread-divider');
    if (!before.opened && status === 'ready' && rows.length > 0) {
      // Opening: at the first unread message if there are some, else at the newest.
      place.current.opened = true;
      if (divider) {
        scrollToTop(el, divider);
        place.current.atBottom = el.scrollHeight - el.scrollTop - el.clientHeight <= STICKY_PX;
      } else if (hasNewer) {
        // Opened at a message far back (a search result): the jump scrolls to it. At the
        // bottom, this window's end, the next newer page would be asked for at once.
        place.current.atBottom = false;
      } else {
        el.scrollTop = el.scrollHeight;
        place.current.atBottom = true;
      }
    } else if (before.firstKey !== '' && firstKey !== before.firstKey && before.lastKey === lastKey) {
      // An older page went in front: keep what the reader was looking at where it was.
      el.scrollTop += el.scrollHeight - before.scrollHeight;
    } else if (hasNewer) {
      // A window of older history: newer pages go in below, the reader stays where they are.
    } else if (before.atBottom || (lastKey !== before.lastKey && lastIsMine)) {
      el.scrollTop = el.scrollHeight;
      place.current.atBottom = true;
      setUnseenBelow(false);
    } else if (lastKey !== before.lastKey) {
      setUnseenBelow(true);
    }
    place.current = { ...place.current, firstKey, lastKey, scrollHeight: el.scrollHeight };
    checkUnreadAbove();
  }, [firstKey, lastKey, lastIsMine, rows.length, status, hasNewer, checkUnreadAbove]);

  // A short history may not fill the view; then nothing scrolls, so load until it does.
  useLayoutEffect(() => {
    const el = scrollRef.current;
    if (el && status === 'ready' && hasOlder && !loadingOlder && el.scrollHeight <= el.clientHeight + LOAD_OLDER_PX) {
      onLoadOlder();
    }
  }, [status, hasOlder, loadingOlder, onLoadOlder]);

  // The pane shrinks when the reply banner or the suggestions open, or the box grows: a
  // reader at the bottom stays at the bottom.
  useEffect(() => {
    const el = scrollRef.current;
    if (!el || typeof ResizeObserver === 'undefined') return;
    const observer = new ResizeObserver(() => {
      if (place.current.atBottom) el.scrollTop = el.scrollHeight;
    });
    observer.observe(el);
    return () => observer.disconnect();
  }, []);

  // Jumping to a message: scroll it to the middle and give it the focus, so it is announced.
  useEffect(() => {
    if (highlightSeq === null) return;
    const target = scrollRef.current?.querySelector<HTMLElement>(`[data-seq="${highlightSeq}"]`);
    if (!target) return;
    target.scrollIntoView?.({ block: 'center' });
    target.focus({ preventScroll: true });
    // The scroll event comes later; until then, what follows must not think the reader is at the bottom.
    const el = scrollRef.current;
    if (el) place.current.atBottom = el.scrollHeight - el.scrollTop - el.clientHeight <= STICKY_PX;
  }, [highlightSeq, messages]);

  const onScroll = useCallback(() => {
    const el = scrollRef.current;
    if (!el) return;
    const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight <= STICKY_PX;
    place.current.atBottom = atBottom;
    place.current.scrollHeight = el.scrollHeight;
    if (atBottom) setUnseenBelow(false);
    checkUnreadAbove();
    if (el.scrollTop <= LOAD_OLDER_PX && hasOlder && !loadingOlder && status === 'ready') onLoadOlder();
    const fromBottom = el.scrollHeight - el.scrollTop - el.clientHeight;
    if (fromBottom <= LOAD_OLDER_PX && hasNewer && !loadingNewer && status === 'ready') onLoadNewer();
  }, [hasOlder, loadingOlder, hasNewer, loadingNewer, status, onLoadOlder, onLoadNewer, checkUnreadAbove]);

  const jumpToBottom = () => {
    const el = scrollRef.current;
    if (!el) return;
    el.scrollTop = el.scrollHeight;
    place.current.atBottom = true;
    setUnseenBelow(false);
  };

  const jumpToLatest = async () => {
    await onJumpToLatest();
    requestAnimationFrame(jumpToBottom);
  };

  const jumpToUnread = async () => {
    if (unreadAfterSeq === null) return;
    await onLoadUntil(unreadAfterSeq + 1);
    // The page rendered: the divider exists now.
    requestAnimationFrame(() => {
      const el = scrollRef.current;
      const divider = el?.querySelector<HTMLElement>('.unread-divider');
      if (!el || !divider) return;
      scrollToTop(el, divider);
      setUnreadAbove(false);
    });
  };

  return (
    <div className="messages-pane">
      {unreadAbove ? (
        <button type="button" className="jump-button is-top" onClick={() => void jumpToUnread()}>
          <Icon name="up" /> Jump to first unread
        </button>
      ) : null}
      <div ref={scrollRef} className="messages-scroll" onScroll={onScroll} aria-busy={status === 'loading' || loadingOlder}>
        <HistoryEdge timeline={timeline} chat={chat} onLoadOlder={onLoadOlder} />
        <ol className="messages" aria-label="Messages">
          {rows.map((row, i) => {
            const previous = rows[i - 1];
            const when = whenOf(row);
            const previousWhen = previous === undefined ? null : whenOf(previous);
            const newDay = previousWhen === null || !sameDay(previousWhen, when);
            if (row.kind === 'notice') {
              return (
                <li key={row.key} className="system-line">
                  {newDay ? (
                    <div className="day-heading" aria-hidden="true">
                      <span>{dayLabel(when)}</span>
                    </div>
                  ) : null}
                  <span>
                    {systemText(row.event, meId, names)}{' '}
                    <time dateTime={when} title={longWhen(when)}>
                      {clockTime(when)}
                    </time>
                  </span>
                </li>
              );
            }
            const sender = row.kind === 'stored' ? row.message.sender_id : meId;
            const previousSender = previous === undefined || previous.kind === 'notice' ? null : previous.kind === 'stored' ? previous.message.sender_id : meId;
            const seq = row.kind === 'stored' ? row.message.seq : null;
            const mine = sender === meId;
            const receipt = (mine && seq !== null ? receipts.get(seq) : undefined) ?? NO_RECEIPT;
            return (
              <MessageItem
                key={row.key}
                item={row}
                meId={meId}
                kind={chat.kind}
                sender={sender === meId ? 'You' : (names[sender] ?? 'Former member')}
                names={names}
                dayHeading={newDay ? dayLabel(when) : null}
                unreadDivider={seq !== null && seq === firstUnreadSeq ? `${props.unreadCount} unread message${props.unreadCount === 1 ? '' : 's'}` : null}
                startsRun={newDay || previousSender !== sender}
                receipt={receipt.state}
                receiptDetail={receipt.detail}
                seenBy={chat.kind === 'group' && seq !== null && seq === newestMineSeq ? receipt.seenBy : null}
                highlighted={seq !== null && seq === highlightSeq}
                pendingQuote={row.kind === 'pending' ? quoteOf(messages, row.pending.replyToSeq) : null}
                canDelete={mine || chat.isAdmin}
                actions={actions}
              />
            );
          })}
        </ol>
        {hasNewer ? (
          <div className="history-edge is-newer">
            <button type="button" className="link-button" onClick={onLoadNewer} aria-disabled={loadingNewer}>
              {loadingNewer ? 'Loading newer messages…' : 'Load newer messages'}
            </button>
          </div>
        ) : null}
      </div>
      {hasNewer ? (
        <button type="button" className="jump-button" onClick={() => void jumpToLatest()}>
          <Icon name="down" /> Jump to latest
        </button>
      ) : unseenBelow ? (
        <button type="button" className="jump-button" onClick={jumpToBottom}>
          <Icon name="down" /> New messages
        </button>
      ) : null}
    </div>
  );
}

/** Scrolls `el` so that `target` sits just below its top edge. */
function scrollToTop(el: HTMLElement, target: HTMLElement): void {
  el.scrollTop += target.getBoundingClientRect().top - el.getBoundingClientRect().top - 12;
}

interface Receipt {
  state: ReceiptState;
  detail: string;
  seenBy: string | null;
}

const NO_RECEIPT: Receipt = { state: 'sent', detail: '', seenBy: null };

/** How far each of my messages got, from the members' markers, by seq. */
function useReceipts(
  chat: ChatView,
  messages: TimelineView['messages'],
  meId: UserId,
  names: Readonly<Record<UserId, string>>,
): ReadonlyMap<number, Receipt> {
  return useMemo(() => {
    const others = chat.members.filter((m) => m.id !== meId);
    const name = (id: UserId) => names[id] ?? 'someone';
    const receipts = new Map<number, Receipt>();
    for (const message of messages) {
      if (message.sender_id !== meId) continue;
      const seq = message.seq;
      const readers = others.filter((m) => m.last_read_seq >= seq);
      const receivers = others.filter((m) => m.last_read_seq < seq && m.last_delivered_seq >= seq);
      const state: ReceiptState =
        others.length > 0 && readers.length === others.length
          ? 'read'
          : others.length > 0 && readers.length + receivers.length === others.length
            ? 'delivered'
            : 'sent';
      let detail = '';
      let seenBy: string | null = null;
      if (chat.kind === 'group') {
        const parts: string[] = [];
        if (readers.length > 0) parts.push(`Seen by ${readers.map((m) => name(m.id)).join(', ')}`);
        if (receivers.length > 0) parts.push(`Delivered to ${receivers.map((m) => name(m.id)).join(', ')}`);
        detail = parts.join('. ');
        seenBy = readers.length > 0 ? parts[0]! : null;
      }
      receipts.set(seq, { state, detail, seenBy });
    }
    return receipts;
  }, [chat.members, chat.kind, messages, meId, names]);
}

/** What a pending reply answers, from the messages held (the server sends its own later). */
function quoteOf(messages: TimelineView['messages'], seq: number | null): ReplyPreview | null {
  if (seq === null) return null;
  const original = messages.find((m) => m.seq === seq);
  if (!original) return { seq, sender_id: '', excerpt: '…' };
  return { seq, sender_id: original.sender_id, excerpt: plainText(original.body).slice(0, 120), ...(original.deleted ? { deleted: true } : {}) };
}

function seqOf(row: Row): number {
  return row.kind === 'stored' ? row.message.seq : row.kind === 'notice' ? row.event.seq : Number.MAX_SAFE_INTEGER;
}

function whenOf(row: Row): string {
  return row.kind === 'stored' ? row.message.created_at : row.kind === 'notice' ? row.event.created_at : row.pending.createdAt;
}

function HistoryEdge({ timeline, chat, onLoadOlder }: { timeline: TimelineView; chat: ChatView; onLoadOlder: () => void }) {
  const { status, error, hasOlder, loadingOlder, messages, pending } = timeline;
  const { title, kind } = chat;
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
