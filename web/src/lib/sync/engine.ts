// The sync engine: everything the client knows about chats, messages, presence and typing,
// kept consistent with the server whatever the network does. Plain TypeScript, no React:
// the UI subscribes to immutable snapshots (`getState`) and calls methods.
//
// How it stays correct (the store is the truth, the socket is the fast path):
// - Per conversation, loaded messages are a contiguous run by `seq` (see Timeline). A live
//   message beyond a gap is kept aside and the gap is filled with `after_seq` pages.
// - Duplicates are dropped by `seq` (one message per seq) and by (sender, client_msg_id).
// - A message typed here is *pending* until the server pushes it back with a `seq`
//   (it is then *sent*). Pending messages are resent with the same client_msg_id after every
//   reconnect; the server stores a repeated client_msg_id once.
// - On every `hello` (each (re)connect) the chat list is refetched and every loaded
//   conversation catches up from its last seq before pending messages are resent.
//
// IO is injected (`SyncTransport`, `Clock`), so tests run it against a fake server.
//
// The engine composes one module per concern and owns what crosses them (frames in,
// `absorb`, resync, snapshots): `chats.ts` the chat list, `timelines.ts` the loaded
// conversations and their catch-up (each a `Timeline`, timeline.ts), `outbox.ts` pending →
// sent, `receipts.ts` read markers, `typing.ts`, `presence.ts`; `core.ts` holds the injected
// IO, timers and change notification they share, `types.ts` the public types.

import type { Conversation, ConversationId, Member, Message, ServerFrame } from '../api/types.ts';
import { Chats } from './chats.ts';
import { SyncCore } from './core.ts';
import { Outbox } from './outbox.ts';
import { Presence } from './presence.ts';
import { Receipts } from './receipts.ts';
import { Timelines } from './timelines.ts';
import type { EngineOptions, EngineState, IncomingMessage, TimelineView } from './types.ts';
import { systemClock } from './types.ts';
import { Typing } from './typing.ts';

export type {
  ChatView,
  Clock,
  ConnectionState,
  EngineOptions,
  EngineState,
  IncomingMessage,
  LoadStatus,
  PendingMessage,
  PendingState,
  PresenceView,
  SyncTransport,
  TimelineView,
} from './types.ts';
export { SendRejected, SYNC_LIMITS, systemClock } from './types.ts';

export class SyncEngine {
  private readonly core: SyncCore;
  private readonly presence: Presence;
  private readonly typing: Typing;
  private readonly chats: Chats;
  private readonly timelines: Timelines;
  private readonly receipts: Receipts;
  private readonly outbox: Outbox;
  private readonly incomingListeners = new Set<(incoming: IncomingMessage) => void>();

  constructor(options: EngineOptions) {
    const core = new SyncCore(
      options.me,
      options.transport,
      options.clock ?? systemClock,
      options.random ?? Math.random,
    );
    this.core = core;
    this.presence = new Presence(core);
    this.typing = new Typing(core);
    this.chats = new Chats(core, this.presence, {
      absorb: (message) => this.absorb(message),
      emitIncoming: (message) => this.emitIncoming(message),
      catchUpBehind: () => this.timelines.catchUpBehind(),
      maybeMarkRead: () => this.receipts.maybeMarkRead(),
    });
    this.timelines = new Timelines(core, this.chats, {
      absorb: (message) => this.absorb(message),
      maybeMarkRead: () => this.receipts.maybeMarkRead(),
    });
    this.receipts = new Receipts(core, this.chats, this.timelines);
    this.outbox = new Outbox(core, options.newClientMsgId ?? (() => crypto.randomUUID()), {
      queued: (id) => this.typing.forgetSent(id),
      catchUp: (id) => this.timelines.catchUp(id),
    });
  }

  // ---- Subscription -------------------------------------------------------------------

  subscribe = (listener: () => void): (() => void) => {
    this.core.listeners.add(listener);
    return () => this.core.listeners.delete(listener);
  };

  getState = (): EngineState => {
    const core = this.core;
    if (core.snapshot) return core.snapshot;
    const timelines: Record<ConversationId, TimelineView> = {};
    for (const id of this.timelines.records.keys()) timelines[id] = this.timelines.view(id, this.outbox.of(id));
    core.snapshot = {
      me: core.me,
      connection: core.connection,
      chatsStatus: this.chats.status,
      chats: this.chats.list(),
      timelines,
      presence: this.presence.view(),
      typing: this.typing.view(),
      activeId: core.activeId,
    };
    return core.snapshot;
  };

  /** Messages from others that arrived live (for browser notifications). */
  onIncoming(listener: (incoming: IncomingMessage) => void): () => void {
    this.incomingListeners.add(listener);
    return () => this.incomingListeners.delete(listener);
  }

  // ---- Lifecycle ----------------------------------------------------------------------

  /** Loads the chat list. Live updates begin with the socket's `hello`. */
  start(): Promise<void> {
    return this.refreshChats();
  }

  dispose(): void {
    this.core.dispose();
    this.incomingListeners.clear();
  }

  /** The socket's status: `open` becomes `online` only with the server's `hello`. */
  setSocketStatus(status: 'connecting' | 'open' | 'closed'): void {
    if (status === 'open') return;
    this.outbox.requeueInFlight();
    const next = status === 'closed' ? 'offline' : 'connecting';
    if (next === this.core.connection) return;
    this.core.connection = next;
    this.core.changed();
  }

  setVisible(visible: boolean): void {
    this.core.visible = visible;
    if (visible) this.receipts.maybeMarkRead();
  }

  /** The conversation on screen (null for none). Loads it if needed and marks it read. */
  setActive(id: ConversationId | null): void {
    if (this.core.activeId === id) return;
    this.core.activeId = id;
    if (id !== null) {
      const record = this.timelines.records.get(id);
      if (!record || record.status === 'error') void this.timelines.load(id);
    }
    this.core.changed();
    this.receipts.maybeMarkRead();
  }

  // ---- Frames from the socket ---------------------------------------------------------

  handleFrame(frame: ServerFrame): void {
    if (this.core.disposed) return;
    switch (frame.type) {
      case 'hello':
        this.core.connection = 'online';
        this.core.changed();
        this.resync();
        return;
      case 'accepted':
        this.outbox.accepted(frame.client_msg_id);
        return;
      case 'message':
        this.absorbLive(frame.message);
        return;
      case 'presence':
        this.presence.update(frame.user_id, frame.online, frame.last_seen ?? null);
        this.core.changed();
        return;
      case 'typing':
        this.typing.someoneTyping(frame.conversation_id, frame.user_id);
        return;
      case 'read':
        this.receipts.someoneRead(frame.conversation_id, frame.user_id, frame.seq);
        return;
      case 'error':
        this.outbox.serverError(frame.code, frame.message, frame.client_msg_id, frame.retry_after_ms);
        return;
      case 'pong':
        return;
    }
  }

  // ---- Actions ------------------------------------------------------------------------

  /** Queues a message; it is pending until the server pushes it back with a seq. */
  send(conversationId: ConversationId, body: string): string {
    return this.outbox.send(conversationId, body);
  }

  /** Sends a failed message again, with the same client_msg_id. */
  retry(clientMsgId: string): void {
    this.outbox.retry(clientMsgId);
  }

  discard(clientMsgId: string): void {
    this.outbox.discard(clientMsgId);
  }

  /** Tells the others that this user is typing (at most once per interval). */
  typingIn(conversationId: ConversationId): void {
    this.typing.typingIn(conversationId);
  }

  /** Loads the next older page of an open conversation (infinite scroll upward). */
  loadOlder(id: ConversationId): Promise<void> {
    return this.timelines.loadOlder(id);
  }

  /** Adds or updates a conversation just created here, before the chat list is refetched. */
  upsertConversation(conversation: Conversation): void {
    this.chats.upsert(conversation);
  }

  /** Presence learned elsewhere (user search results). */
  notePresence(members: readonly Member[]): void {
    for (const m of members) this.presence.noteOnline(m.id, m.online);
    this.core.changed();
  }

  /** Refetches the chat list; concurrent calls share one request and rerun once after it. */
  refreshChats(): Promise<void> {
    return this.chats.refresh();
  }

  // ---- What crosses the concerns ------------------------------------------------------

  private absorbLive(message: Message): void {
    if (!this.chats.records.has(message.conversation_id)) {
      // A conversation that includes us was created elsewhere: its first message is how we learn.
      this.chats.bufferUnknown(message);
      return;
    }
    const isNew = this.absorb(message);
    this.timelines.live(message);
    if (isNew && message.sender_id !== this.core.me.id) this.emitIncoming(message);
    this.core.changed();
    this.receipts.maybeMarkRead();
  }

  /**
   * Bookkeeping for one message from any source: chat preview and order, unread count,
   * typing, pending. Returns whether the message is newer than anything known for its chat.
   */
  private absorb(message: Message): boolean {
    const id = message.conversation_id;
    const chat = this.chats.records.get(id);
    const mine = message.sender_id === this.core.me.id;
    let isNew = false;
    if (chat) {
      if (message.seq > chat.lastSeq) {
        isNew = true;
        chat.lastSeq = message.seq;
        chat.lastMessage = message;
        this.chats.moveToTop(id);
      }
      if (mine) {
        // The server moves the sender's read marker to their own message.
        this.receipts.readUpTo(chat, message.seq);
      } else if (message.seq > chat.baseSeq && message.seq > chat.readSeq && !this.core.isReading(id)) {
        chat.extraUnread.add(message.seq);
      }
      this.chats.invalidate();
    }
    if (mine) this.outbox.stored(message);
    else this.typing.messageFrom(id, message.sender_id);
    return isNew;
  }

  /** After a (re)connect: refetch the list, catch every loaded conversation up, resend. */
  private resync(): void {
    void this.chats.refresh();
    const ids = new Set<ConversationId>([...this.timelines.records.keys(), ...this.outbox.conversations()]);
    for (const id of ids) {
      const record = this.timelines.records.get(id);
      // A load in flight catches up by itself when it lands.
      const sync =
        record?.status === 'ready'
          ? this.timelines.catchUp(id)
          : record?.status === 'error'
            ? this.timelines.load(id)
            : Promise.resolve();
      void sync.finally(() => this.outbox.flush(id));
    }
    // Read markers the server may not have received.
    this.receipts.resendUnsent();
  }

  private emitIncoming(message: Message): void {
    const chat = this.chats.view(message.conversation_id);
    if (!chat) return;
    const sender = chat.members.find((m) => m.id === message.sender_id)?.username ?? 'Someone';
    for (const listener of this.incomingListeners) listener({ message, chat, sender });
  }
}
