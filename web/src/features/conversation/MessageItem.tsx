import { memo, useEffect, useRef, useState } from 'react';

import { clockTime, longWhen } from '../../components/ui/format.ts';
import { Icon } from '../../components/ui/Icon.tsx';
import { Menu, type MenuItem } from '../../components/ui/Menu.tsx';
import type { ConversationKind, FileInfo, Message, ReplyPreview, UserId } from '../../lib/api/types.ts';
import type { PendingMessage } from '../../lib/sync/engine.ts';
import { emojiName, QUICK_REACTIONS } from './emoji.ts';
import { EmojiPicker } from './EmojiPicker.tsx';
import { plainText } from './markdown.ts';
import { MessageBody } from './MessageBody.tsx';
import { MessageFiles } from './MessageFiles.tsx';

export type Item =
  | { kind: 'stored'; key: string; message: Message }
  | { kind: 'pending'; key: string; pending: PendingMessage };

/** How far my message got: stored, on the others' devices, read by them. */
export type ReceiptState = 'sent' | 'delivered' | 'read';

export interface MessageActions {
  onReply: (seq: number) => void;
  onEdit: (seq: number) => void;
  onDelete: (seq: number) => void;
  onReact: (seq: number, emoji: string) => void;
  onJumpTo: (seq: number) => void;
  onRetry: (clientMsgId: string) => void;
  onDiscard: (clientMsgId: string) => void;
  /** Opens the full-size viewer on a message's images. */
  onOpenImage: (images: readonly FileInfo[], index: number) => void;
}

interface MessageItemProps {
  item: Item;
  meId: UserId;
  kind: ConversationKind;
  sender: string;
  /** Names of the people this message's reactions and quote mention. */
  names: Readonly<Record<UserId, string>>;
  dayHeading: string | null;
  /** Above the first unread message: "3 unread messages". */
  unreadDivider: string | null;
  startsRun: boolean;
  receipt: ReceiptState;
  /** "Seen by Ann, Ben. Delivered to Carl." for assistive tech and the tooltip. */
  receiptDetail: string;
  /** Shown under my newest message in a group. */
  seenBy: string | null;
  highlighted: boolean;
  /** For a pending reply: what it answers (stored messages carry their own `reply_to`). */
  pendingQuote: ReplyPreview | null;
  canDelete: boolean;
  actions: MessageActions;
}

const LONG_PRESS_MS = 500;

export const MessageItem = memo(function MessageItem(props: MessageItemProps) {
  const { item, meId, kind, sender, names, actions } = props;
  const mine = item.kind === 'pending' || item.message.sender_id === meId;
  const stored = item.kind === 'stored' ? item.message : null;
  const deleted = stored?.deleted ?? false;
  const body = stored ? stored.body : item.kind === 'pending' ? item.pending.body : '';
  const files = deleted ? [] : ((stored ? stored.files : item.kind === 'pending' ? item.pending.files : undefined) ?? []);
  const when = stored ? stored.created_at : item.kind === 'pending' ? item.pending.createdAt : '';
  const failed = item.kind === 'pending' && item.pending.state === 'failed';
  const mentionsMe = !mine && (stored?.mentions?.includes(meId) ?? false);
  const [menuAnchor, setMenuAnchor] = useState<HTMLElement | null>(null);
  const [pickerAnchor, setPickerAnchor] = useState<HTMLElement | null>(null);
  const [selected, setSelected] = useState(false);
  const bubble = useRef<HTMLDivElement>(null);

  const mentions = new Map<string, boolean>();
  for (const id of stored?.mentions ?? []) {
    const username = names[id];
    if (username) mentions.set(username, id === meId);
  }

  const classes = [
    'message',
    mine ? 'is-mine' : 'is-theirs',
    files.length > 0 ? 'has-files' : '',
    props.startsRun ? 'starts-run' : '',
    item.kind === 'pending' ? 'is-pending' : '',
    failed ? 'is-failed' : '',
    deleted ? 'is-deleted' : '',
    mentionsMe ? 'mentions-me' : '',
    props.highlighted ? 'is-highlighted' : '',
    selected ? 'is-selected' : '',
  ]
    .filter(Boolean)
    .join(' ');

  const seq = stored?.seq ?? null;
  const actionable = seq !== null && !deleted;
  const menuItems: MenuItem[] = [];
  if (actionable) {
    menuItems.push({ label: 'Reply', onSelect: () => actions.onReply(seq) });
    menuItems.push({ label: 'React…', onSelect: () => setPickerAnchor(menuAnchor) });
    if (mine) menuItems.push({ label: 'Edit', onSelect: () => actions.onEdit(seq) });
    menuItems.push({ label: 'Copy text', onSelect: () => void navigator.clipboard?.writeText(body).catch(() => {}) });
    if (props.canDelete) menuItems.push({ label: 'Delete', onSelect: () => actions.onDelete(seq), danger: true });
  }

  // Pointer shortcuts to the same actions the toolbar offers from the keyboard: a right
  // click or a long press opens the menu; a tap on a touch screen (no hover there) shows
  // the toolbar.
  useEffect(() => {
    const el = bubble.current;
    if (!el || !actionable) return;
    let timer: number | null = null;
    let longPressed = false;
    const cancel = () => {
      if (timer !== null) window.clearTimeout(timer);
      timer = null;
    };
    const onContextMenu = (event: MouseEvent) => {
      event.preventDefault();
      setMenuAnchor(el);
    };
    const onPointerDown = (event: PointerEvent) => {
      if (event.pointerType !== 'touch') return;
      longPressed = false;
      timer = window.setTimeout(() => {
        longPressed = true;
        setMenuAnchor(el);
      }, LONG_PRESS_MS);
    };
    const onClick = (event: MouseEvent) => {
      if (longPressed) {
        longPressed = false;
        return;
      }
      if ((event as PointerEvent).pointerType === 'touch') setSelected((s) => !s);
    };
    el.addEventListener('contextmenu', onContextMenu);
    el.addEventListener('pointerdown', onPointerDown);
    el.addEventListener('pointerup', cancel);
    el.addEventListener('pointercancel', cancel);
    el.addEventListener('pointermove', cancel);
    el.addEventListener('click', onClick);
    return () => {
      cancel();
      el.removeEventListener('contextmenu', onContextMenu);
      el.removeEventListener('pointerdown', onPointerDown);
      el.removeEventListener('pointerup', cancel);
      el.removeEventListener('pointercancel', cancel);
      el.removeEventListener('pointermove', cancel);
      el.removeEventListener('click', onClick);
    };
  }, [actionable]);

  return (
    <li className={classes} data-seq={seq ?? undefined} tabIndex={-1}>
      {props.dayHeading ? (
        <div className="day-heading" aria-hidden="true">
          <span>{props.dayHeading}</span>
        </div>
      ) : null}
      {props.unreadDivider ? (
        <div className="unread-divider">
          <span>{props.unreadDivider}</span>
        </div>
      ) : null}
      <div className="message-row">
        <div ref={bubble} className="bubble">
          {kind === 'group' && !mine && props.startsRun ? (
            <div className="sender" aria-hidden="true">
              {sender}
            </div>
          ) : null}
          <span className="visually-hidden">
            {sender}
            {mentionsMe ? ', mentioning you' : ''}:{' '}
          </span>
          {stored?.reply_to ? <ReplyQuote quote={stored.reply_to} meId={meId} names={names} onJumpTo={actions.onJumpTo} /> : null}
          {props.pendingQuote ? <ReplyQuote quote={props.pendingQuote} meId={meId} names={names} onJumpTo={actions.onJumpTo} /> : null}
          {deleted ? (
            <div className="message-body is-deleted">
              <Icon name="trash" /> This message was deleted
            </div>
          ) : (
            <>
              {files.length > 0 ? <MessageFiles files={files} onOpenImage={actions.onOpenImage} /> : null}
              {body !== '' || files.length === 0 ? <MessageBody body={body} mentions={mentions} /> : null}
            </>
          )}{' '}
          <div className="meta">
            {stored?.edited_at && !deleted ? (
              <span className="edited" title={`Edited ${longWhen(stored.edited_at)}`}>
                edited
              </span>
            ) : null}
            <time dateTime={when} title={longWhen(when)}>
              {clockTime(when)}
            </time>
            {mine && !deleted ? <DeliveryState item={item} receipt={props.receipt} detail={props.receiptDetail} /> : null}
          </div>
        </div>
        {actionable ? (
          <fieldset className="message-actions">
            <legend className="visually-hidden">Actions for the message from {sender}</legend>
            {QUICK_REACTIONS.slice(0, 1).map(({ emoji, name }) => (
              <button
                key={emoji}
                type="button"
                className="icon-button small"
                aria-label={`React with ${name}`}
                title={`React with ${name}`}
                onClick={() => actions.onReact(seq, emoji)}
              >
                <span aria-hidden="true">{emoji}</span>
              </button>
            ))}
            <button
              type="button"
              className="icon-button small"
              aria-label="Add reaction"
              title="Add reaction"
              onClick={(event) => setPickerAnchor(event.currentTarget)}
            >
              <Icon name="smile" />
            </button>
            <button type="button" className="icon-button small" aria-label="Reply" title="Reply" onClick={() => actions.onReply(seq)}>
              <Icon name="reply" />
            </button>
            <button
              type="button"
              className="icon-button small"
              aria-label="More actions"
              title="More actions"
              aria-haspopup="menu"
              aria-expanded={menuAnchor !== null}
              onClick={(event) => setMenuAnchor(event.currentTarget)}
            >
              <Icon name="more" />
            </button>
          </fieldset>
        ) : null}
      </div>
      {stored?.reactions && stored.reactions.length > 0 && !deleted ? (
        <ReactionBar message={stored} meId={meId} names={names} onReact={actions.onReact} onAdd={setPickerAnchor} />
      ) : null}
      {props.seenBy ? <div className="seen-by">{props.seenBy}</div> : null}
      {failed ? (
        <div className="failed-actions">
          <span className="form-error">Not sent{item.pending.error ? `: ${item.pending.error}` : ''}</span>
          <button type="button" className="link-button" onClick={() => actions.onRetry(item.pending.clientMsgId)}>
            Retry
          </button>
          <button type="button" className="link-button" onClick={() => actions.onDiscard(item.pending.clientMsgId)}>
            Discard
          </button>
        </div>
      ) : null}
      {menuAnchor && actionable ? (
        <Menu anchor={menuAnchor} label="Message actions" items={menuItems} onClose={() => setMenuAnchor(null)} />
      ) : null}
      {pickerAnchor && actionable ? (
        <EmojiPicker anchor={pickerAnchor} onPick={(emoji) => actions.onReact(seq, emoji)} onClose={() => setPickerAnchor(null)} />
      ) : null}
    </li>
  );
});

function ReplyQuote({
  quote,
  meId,
  names,
  onJumpTo,
}: {
  quote: ReplyPreview;
  meId: UserId;
  names: Readonly<Record<UserId, string>>;
  onJumpTo: (seq: number) => void;
}) {
  const who = quote.sender_id === meId ? 'You' : (names[quote.sender_id] ?? 'Former member');
  // Only a message of files alone has no text to quote.
  const text = quote.deleted ? 'This message was deleted' : plainText(quote.excerpt).trim() || '📎 Files';
  return (
    <button
      type="button"
      className={quote.deleted ? 'reply-quote is-deleted' : 'reply-quote'}
      onClick={() => onJumpTo(quote.seq)}
      aria-label={`Reply to ${who}: ${text}. Show the original`}
    >
      <span className="reply-sender">{who}</span>
      <span className="reply-excerpt">{text}</span>
    </button>
  );
}

function ReactionBar({
  message,
  meId,
  names,
  onReact,
  onAdd,
}: {
  message: Message;
  meId: UserId;
  names: Readonly<Record<UserId, string>>;
  onReact: (seq: number, emoji: string) => void;
  onAdd: (anchor: HTMLElement) => void;
}) {
  return (
    <fieldset className="reactions">
      <legend className="visually-hidden">Reactions</legend>
      {message.reactions!.map((reaction) => {
        const mine = reaction.user_ids.includes(meId);
        const who = reaction.user_ids.map((id) => (id === meId ? 'you' : (names[id] ?? 'a former member'))).join(', ');
        const label = `${emojiName(reaction.emoji)}: ${reaction.user_ids.length} (${who})${mine ? '. Press to take yours back' : ''}`;
        return (
          <button
            key={reaction.emoji}
            type="button"
            className={mine ? 'reaction is-mine' : 'reaction'}
            aria-pressed={mine}
            aria-label={label}
            title={`${reaction.emoji} ${who}`}
            onClick={() => onReact(message.seq, reaction.emoji)}
          >
            <span aria-hidden="true">{reaction.emoji}</span>
            <span aria-hidden="true" className="reaction-count">
              {reaction.user_ids.length}
            </span>
          </button>
        );
      })}
      <button
        type="button"
        className="reaction add-reaction"
        aria-label="Add reaction"
        title="Add reaction"
        onClick={(event) => onAdd(event.currentTarget)}
      >
        <Icon name="smile" />
      </button>
    </fieldset>
  );
}

function DeliveryState({ item, receipt, detail }: { item: Item; receipt: ReceiptState; detail: string }) {
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
  const word = receipt === 'read' ? 'Seen' : receipt === 'delivered' ? 'Delivered' : 'Sent';
  // The word is read out; in a group the names follow for screen readers (and as a tooltip).
  return (
    <span className={`delivery is-${receipt}`} title={detail || word}>
      <Icon name={receipt === 'sent' ? 'check' : 'checks'} /> <span>{word}</span>
      {detail ? <span className="visually-hidden">. {detail}</span> : null}
    </span>
  );
}
