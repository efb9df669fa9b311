import { useCallback, useEffect, useMemo, useRef, useState, useSyncExternalStore, type DragEvent, type ReactNode } from 'react';

import { Avatar } from '../../components/ui/Avatar.tsx';
import { ConfirmDialog } from '../../components/ui/ConfirmDialog.tsx';
import { Icon } from '../../components/ui/Icon.tsx';
import type { FileInfo, UserId } from '../../lib/api/types.ts';
import { filesSummary } from '../../lib/files/format.ts';
import type { UploadQueue } from '../../lib/files/uploads.ts';
import type { ChatView, TimelineView } from '../../lib/sync/engine.ts';
import { Composer, type ComposerContext } from './Composer.tsx';
import { ImageViewer } from './ImageViewer.tsx';
import { plainText } from './markdown.ts';
import type { MessageActions } from './MessageItem.tsx';
import { MessageList } from './MessageList.tsx';

interface ConversationViewProps {
  chat: ChatView;
  timeline: TimelineView | undefined;
  meId: UserId;
  names: Readonly<Record<UserId, string>>;
  /** Names of the people typing here now. */
  typing: readonly string[];
  /** Under the title: presence of a direct chat's peer, or the group's members. */
  status: ReactNode;
  /** The avatar's corner (a presence dot), if any. */
  badge: ReactNode;
  /** The avatar's colour: the peer's id for a direct chat, so it matches everywhere. */
  avatarSeed: string;
  backHref: string;
  /** The files chosen for the next message here, uploading as they are chosen. */
  uploads: UploadQueue;
  onSend: (body: string, replyToSeq: number | null, files: FileInfo[]) => void;
  onEdit: (seq: number, body: string) => void;
  onDelete: (seq: number) => void;
  onReact: (seq: number, emoji: string) => void;
  onLoadUntil: (seq: number) => Promise<boolean>;
  /** Makes the message at `seq` held (paged in, or a window around it); resolves with whether it is. */
  onJumpTo: (seq: number) => Promise<boolean>;
  onTyping: () => void;
  onLoadOlder: () => void;
  /** Pages newer messages into a window away from the newest. */
  onLoadNewer: () => void;
  /** Replaces a window away from the newest with the newest messages. */
  onJumpToLatest: () => Promise<void>;
  /**
   * A message to show in context, asked from outside (a search result): scrolled to and
   * highlighted. A new `token` asks again for the same seq.
   */
  jump: { seq: number; token: number } | null;
  /** The jump asked for started: the caller forgets it, so that reopening the chat later does not jump again. */
  onJumpStarted: () => void;
  /** More buttons in the header, before "Chat info" (search in this chat). */
  headerActions?: ReactNode;
  onRetry: (clientMsgId: string) => void;
  onDiscard: (clientMsgId: string) => void;
  /** Opens the members, mute and settings panel. */
  onOpenInfo: () => void;
}

const EMPTY_TIMELINE: TimelineView = {
  status: 'loading',
  error: null,
  messages: [],
  notices: [],
  pending: [],
  hasOlder: false,
  loadingOlder: false,
  hasNewer: false,
  loadingNewer: false,
};

const HIGHLIGHT_MS = 2_500;

export function ConversationView(props: ConversationViewProps) {
  const { chat, meId, names, typing, onLoadOlder, onLoadUntil } = props;
  const timeline = props.timeline ?? EMPTY_TIMELINE;
  const loadOlder = useCallback(() => onLoadOlder(), [onLoadOlder]);
  // Where the divider goes: my read marker as the chat opened, if there was anything unread.
  const [unreadAfterSeq] = useState(() => (chat.unread > 0 ? chat.readSeq : null));
  const [unreadCount] = useState(chat.unread);
  const [replyToSeq, setReplyToSeq] = useState<number | null>(null);
  const [editingSeq, setEditingSeq] = useState<number | null>(null);
  const [deletingSeq, setDeletingSeq] = useState<number | null>(null);
  const [highlightSeq, setHighlightSeq] = useState<number | null>(null);
  const highlightTimer = useRef<number | null>(null);
  const [viewing, setViewing] = useState<{ images: readonly FileInfo[]; index: number } | null>(null);
  const { uploads } = props;
  const chosen = useSyncExternalStore(uploads.subscribe, uploads.getSnapshot);
  const [dropping, setDropping] = useState(false);
  const dragDepth = useRef(0);
  const [fileNotice, setFileNotice] = useState<string | null>(null);
  useEffect(() => () => void (highlightTimer.current !== null && window.clearTimeout(highlightTimer.current)), []);

  const messageAt = (seq: number | null) => (seq === null ? undefined : timeline.messages.find((m) => m.seq === seq));
  const nameOf = (id: UserId) => (id === meId ? 'yourself' : (names[id] ?? 'Former member'));

  const replyMessage = messageAt(replyToSeq);
  const editMessage = messageAt(editingSeq);
  const context: ComposerContext = {
    replyTo:
      replyMessage && !replyMessage.deleted
        ? { seq: replyMessage.seq, sender: nameOf(replyMessage.sender_id), excerpt: plainText(replyMessage.body).trim() || filesSummary(replyMessage.files ?? []) }
        : null,
    editing: editMessage && !editMessage.deleted ? { seq: editMessage.seq, body: editMessage.body } : null,
  };

  // The message items are memoised: their callbacks must not change with every render of
  // the app, so they call whatever the latest props say.
  const latest = useRef(props);
  useEffect(() => {
    latest.current = props;
  });
  const actions: MessageActions = useMemo(
    () => ({
      onReply: (seq) => {
        setEditingSeq(null);
        setReplyToSeq(seq);
      },
      onEdit: (seq) => {
        setReplyToSeq(null);
        setEditingSeq(seq);
      },
      onDelete: (seq) => setDeletingSeq(seq),
      onReact: (seq, emoji) => latest.current.onReact(seq, emoji),
      onJumpTo: (seq) => {
        void latest.current.onJumpTo(seq).then((held) => {
          if (!held) return;
          setHighlightSeq(seq);
          if (highlightTimer.current !== null) window.clearTimeout(highlightTimer.current);
          highlightTimer.current = window.setTimeout(() => setHighlightSeq(null), HIGHLIGHT_MS);
        });
      },
      onRetry: (id) => latest.current.onRetry(id),
      onDiscard: (id) => latest.current.onDiscard(id),
      onOpenImage: (images, index) => setViewing({ images, index }),
    }),
    [],
  );

  // A jump asked from outside runs once per token (when this mounts with it, too).
  const jumpSeq = props.jump?.seq ?? null;
  const jumpToken = props.jump?.token ?? null;
  useEffect(() => {
    if (jumpSeq === null || jumpToken === null) return;
    actions.onJumpTo(jumpSeq);
    latest.current.onJumpStarted();
  }, [jumpSeq, jumpToken, actions]);

  const editLast = () => {
    for (let i = timeline.messages.length - 1; i >= 0; i--) {
      const m = timeline.messages[i]!;
      if (m.sender_id === meId && !m.deleted) return actions.onEdit(m.seq);
    }
  };

  const addFiles = (files: readonly File[]) => {
    if (files.length === 0) return;
    setFileNotice(uploads.add(files));
  };

  // Files dragged over the conversation: an overlay says where they go. Entering and
  // leaving child elements fire pairs of events, so the overlay follows their depth.
  const carriesFiles = (event: DragEvent) => Array.from(event.dataTransfer?.types ?? []).includes('Files');
  const dropHandlers = {
    onDragEnter: (event: DragEvent) => {
      if (!carriesFiles(event)) return;
      event.preventDefault();
      dragDepth.current += 1;
      setDropping(true);
    },
    onDragOver: (event: DragEvent) => {
      if (!carriesFiles(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = 'copy';
    },
    onDragLeave: (event: DragEvent) => {
      if (!carriesFiles(event)) return;
      dragDepth.current = Math.max(0, dragDepth.current - 1);
      if (dragDepth.current === 0) setDropping(false);
    },
    onDrop: (event: DragEvent) => {
      if (!carriesFiles(event) && (event.dataTransfer?.files.length ?? 0) === 0) return;
      event.preventDefault();
      dragDepth.current = 0;
      setDropping(false);
      addFiles(Array.from(event.dataTransfer.files));
    },
  };

  const mentionable = useMemo(() => chat.members.filter((m) => m.id !== meId), [chat.members, meId]);

  return (
    <section className="conversation" aria-labelledby="conversation-title" {...dropHandlers}>
      <header className="conversation-header">
        <a className="icon-button back-button" href={props.backHref} aria-label="Back to chats">
          <Icon name="back" />
        </a>
        <button type="button" className="conversation-heading-button" onClick={props.onOpenInfo} aria-label={`${chat.title}: chat info`}>
          <Avatar name={chat.title} seed={props.avatarSeed} badge={props.badge} />
          <span className="conversation-heading">
            <h2 id="conversation-title">
              {chat.title}
              {chat.muted ? (
                <span className="muted-mark" title="Muted">
                  <Icon name="mute" />
                  <span className="visually-hidden">muted</span>
                </span>
              ) : null}
            </h2>
            <span className="conversation-status">{props.status}</span>
          </span>
        </button>
        {props.headerActions}
        <button type="button" className="icon-button" aria-label="Chat info" title="Chat info" onClick={props.onOpenInfo}>
          <Icon name="info" />
        </button>
      </header>
      <MessageList
        chat={chat}
        timeline={timeline}
        meId={meId}
        names={names}
        unreadAfterSeq={unreadAfterSeq}
        unreadCount={unreadCount}
        highlightSeq={highlightSeq}
        onLoadOlder={loadOlder}
        onLoadNewer={props.onLoadNewer}
        onJumpToLatest={props.onJumpToLatest}
        onLoadUntil={onLoadUntil}
        actions={actions}
      />
      <p className="typing-indicator" aria-live="polite">
        {typingText(typing)}
      </p>
      <Composer
        userId={meId}
        chatId={chat.id}
        placeholder={`Message ${chat.title}`}
        members={mentionable}
        replyTo={context.replyTo}
        editing={context.editing}
        uploads={chosen}
        fileNotice={fileNotice}
        onAddFiles={addFiles}
        onRemoveFile={(key) => {
          uploads.remove(key);
          setFileNotice(null);
        }}
        onRetryFile={(key) => uploads.retry(key)}
        onSend={(body) => {
          if (uploads.size > 0 && !uploads.ready) return;
          // Forgotten only once the message is queued: a refused message keeps its files.
          props.onSend(body, context.replyTo?.seq ?? null, uploads.readyFiles());
          uploads.take();
          setReplyToSeq(null);
          setFileNotice(null);
        }}
        onSaveEdit={(seq, body) => {
          props.onEdit(seq, body);
          setEditingSeq(null);
        }}
        onEditLast={editLast}
        onCancel={() => {
          setEditingSeq(null);
          setReplyToSeq(null);
        }}
        onTyping={props.onTyping}
      />
      {dropping ? (
        <div className="drop-overlay" aria-hidden="true">
          <div className="drop-overlay-box">
            <Icon name="paperclip" />
            <span>Drop files to share them in {chat.title}</span>
          </div>
        </div>
      ) : null}
      {viewing ? <ImageViewer images={viewing.images} index={viewing.index} onClose={() => setViewing(null)} /> : null}
      {deletingSeq !== null ? (
        <ConfirmDialog
          title="Delete message?"
          message={
            messageAt(deletingSeq)?.sender_id === meId
              ? 'It will be deleted for everyone in this chat. This cannot be undone.'
              : `This message from ${nameOf(messageAt(deletingSeq)?.sender_id ?? '')} will be deleted for everyone. This cannot be undone.`
          }
          confirmLabel="Delete"
          onConfirm={() => props.onDelete(deletingSeq)}
          onClose={() => setDeletingSeq(null)}
        />
      ) : null}
    </section>
  );
}

function typingText(names: readonly string[]): string {
  if (names.length === 0) return '';
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return 'Several people are typing…';
}
