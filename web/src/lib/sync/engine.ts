// The sync engine: everything the client knows about chats, messages, presence and typing,
// kept consistent with the server whatever the network does. Plain TypeScript, no React:
// the UI subscribes to immutable snapshots (`getState`) and calls methods.
//
// How it stays correct (the store is the truth, the socket is the fast path):
// - A conversation is a log of events with gap-free seqs. Per conversation, a loaded
//   timeline applies events strictly in seq order (see Timeline); a live event beyond a gap
//   is kept aside and the gap is filled with `events?after_seq=` pages. History backwards
//   comes as messages in their current state, which may skip seqs.
// - Duplicates are dropped by `seq` and by (sender, client_msg_id).
// - A change asked for here (a message, an edit, a reaction, a member change…) is *pending*
//   until the server pushes its event back. Pending changes are resent with the same
//   client_msg_id after every reconnect; the server stores a repeated client_msg_id once.
// - On every `hello` (each (re)connect) the chat list is refetched and every loaded
//   conversation catches up from its last seq before pending changes are resent.
//
// IO is injected (`SyncTransport`, `Clock`), so tests run it against a fake server.
//
// The engine composes one module per concern and owns what crosses them (frames in,
// `absorb`, resync, snapshots, notices): `chats.ts` the chat list, `timelines.ts` the loaded
// conversations and their catch-up (each a `Timeline`, timeline.ts), `apply.ts` what an
// event does to a message or a row, `outbox.ts` pending → stored, `receipts.ts` read and
// delivered markers, `typing.ts`, `presence.ts`; `core.ts` holds the injected IO, timers and
// change notification they share, `types.ts` the public types.

import type { Change, Conversation, ConversationEvent, ConversationId, FileInfo, Member, Message, Role, ServerFrame, UserId } from '../api/types.ts';
import { messageEvent } from '../api/types.ts';
import { Chats } from './chats.ts';
import { SyncCore } from './core.ts';
import { Outbox, type PendingRecord } from './outbox.ts';
import { Presence } from './presence.ts';
import { Receipts } from './receipts.ts';
import { Timelines } from './timelines.ts';
import type { ChatRecord } from './chats.ts';
import type { EngineOptions, EngineState, IncomingMessage, Notice, TimelineView } from './types.ts';
import { SYNC_LIMITS, systemClock } from './types.ts';
import { Typing } from './typing.ts';

export type {
  ChatView,
  Clock,
  ConnectionState,
  EngineOptions,
  EngineState,
  IncomingMessage,
  LoadStatus,
  Notice,
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
  private notices: readonly Notice[] = [];
  private nextNoticeId = 1;

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
      absorb: (event) => this.absorb(event),
      emitIncoming: (message) => this.emitIncoming(message),
      catchUpBehind: () => this.timelines.catchUpBehind(),
      maybeMarkRead: () => this.receipts.maybeMarkRead(),
      dropped: (id) => {
        this.timelines.drop(id);
        this.outbox.forget(id);
        this.receipts.forget(id);
      },
      received: (id, seq) => this.receipts.received(id, seq),
    });
    this.timelines = new Timelines(core, this.chats, {
      absorb: (event) => this.absorb(event),
      absorbMessage: (message) => void this.absorbMessage(message),
      maybeMarkRead: () => this.receipts.maybeMarkRead(),
    });
    this.receipts = new Receipts(core, this.chats, this.timelines);
    this.outbox = new Outbox(core, options.newClientMsgId ?? (() => crypto.randomUUID()), {
      queued: (id) => this.typing.forgetSent(id),
      catchUp: (id) => this.timelines.catchUp(id),
      refused: (record, reason) => this.notify(`${refusedWhat(record)}: ${reason}`),
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
      notices: this.notices,
      names: this.namesView(),
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
    const previous = this.core.activeId;
    if (previous === id) return;
    // A window away from the newest messages is not kept for later: the chat reopens at the newest.
    if (previous !== null && this.timelines.isDetached(previous)) this.timelines.drop(previous);
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
        this.absorbLive(messageEvent(frame.message));
        return;
      case 'event':
        this.absorbLive(frame.event);
        return;
      case 'conversation':
        this.chats.addRow(frame.conversation);
        return;
      case 'muted':
        this.chats.setMuted(frame.conversation_id, frame.muted);
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
      case 'delivered':
        this.receipts.someoneReceived(frame.conversation_id, frame.user_id, frame.seq);
        return;
      case 'error':
        this.outbox.serverError(frame.code, frame.message, frame.client_msg_id, frame.retry_after_ms);
        return;
      case 'pong':
        return;
    }
  }

  // ---- Actions ------------------------------------------------------------------------

  /**
   * Queues a message; it is pending until the server pushes it back with a seq. `files` are
   * finished uploads it carries (then the body may be empty).
   */
  send(conversationId: ConversationId, body: string, replyToSeq: number | null = null, files: readonly FileInfo[] = []): string {
    const clientMsgId = this.outbox.send(conversationId, body, replyToSeq, files);
    // What I send goes at the end: a window of older history makes way for the newest messages.
    void this.timelines.jumpToLatest(conversationId);
    return clientMsgId;
  }

  /** Replaces the body of my message at `seq`; shown edited at once, stored when its event comes. */
  edit(conversationId: ConversationId, seq: number, body: string): string {
    return this.outbox.change(conversationId, { kind: 'edit', target_seq: seq, body });
  }

  /** Deletes the message at `seq` (mine, or any in a group I administer). */
  deleteMessage(conversationId: ConversationId, seq: number): string {
    return this.outbox.change(conversationId, { kind: 'delete', target_seq: seq });
  }

  /** Adds my `emoji` to the message at `seq`, or takes it back if it is there. */
  toggleReaction(conversationId: ConversationId, seq: number, emoji: string): string | null {
    const message = this.getState().timelines[conversationId]?.messages.find((m) => m.seq === seq);
    if (!message || message.deleted) return null;
    const mine = message.reactions?.some((r) => r.emoji === emoji && r.user_ids.includes(this.core.me.id)) ?? false;
    return this.outbox.change(conversationId, {
      kind: mine ? 'reaction_removed' : 'reaction_added',
      target_seq: seq,
      emoji,
    });
  }

  addMember(conversationId: ConversationId, user: UserId): string {
    return this.outbox.change(conversationId, { kind: 'member_added', user_id: user });
  }

  removeMember(conversationId: ConversationId, user: UserId): string {
    return this.outbox.change(conversationId, { kind: 'member_removed', user_id: user });
  }

  /** Leaves a group; the conversation leaves the list when the event comes back. */
  leave(conversationId: ConversationId): string {
    return this.outbox.change(conversationId, { kind: 'member_left' });
  }

  rename(conversationId: ConversationId, title: string): string {
    return this.outbox.change(conversationId, { kind: 'title_changed', title: title.trim() });
  }

  setRole(conversationId: ConversationId, user: UserId, role: Role): string {
    return this.outbox.change(conversationId, { kind: 'role_changed', user_id: user, role });
  }

  /** Mutes or unmutes (private to me); shown at once, undone with a notice if the server refuses. */
  setMuted(conversationId: ConversationId, muted: boolean): void {
    this.chats.setMuted(conversationId, muted);
    this.core.transport.setMuted(conversationId, muted).catch((error: unknown) => {
      if (this.core.disposed) return;
      this.chats.setMuted(conversationId, !muted);
      this.notify(`Could not ${muted ? 'mute' : 'unmute'} the chat${error instanceof Error ? `: ${error.message}` : '.'}`);
    });
  }

  /**
   * Makes the message at `seq` held to show it in context (a search hit, a reply's original):
   * pages it in if it is near, else loads a window around it (`hasNewer` until it reaches
   * the newest). Resolves with whether it is held.
   */
  jumpTo(conversationId: ConversationId, seq: number): Promise<boolean> {
    return this.timelines.jumpTo(conversationId, seq);
  }

  /** The next newer page of a window away from the newest messages. */
  loadNewer(conversationId: ConversationId): Promise<void> {
    return this.timelines.loadNewer(conversationId);
  }

  /** Replaces a window away from the newest messages with the newest page. */
  jumpToLatest(conversationId: ConversationId): Promise<void> {
    return this.timelines.jumpToLatest(conversationId);
  }

  /** Pages older history in until everything from `seq` on is loaded; resolves with whether it is. */
  loadUntil(conversationId: ConversationId, seq: number): Promise<boolean> {
    return this.timelines.loadUntil(conversationId, seq);
  }

  /** Shows a notice (a change the UI could not make, say). */
  report(text: string): void {
    this.notify(text);
  }

  dismissNotice(id: number): void {
    const notices = this.notices.filter((n) => n.id !== id);
    if (notices.length === this.notices.length) return;
    this.notices = notices;
    this.core.changed();
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

  private absorbLive(event: ConversationEvent): void {
    const id = event.conversation_id;
    const me = this.core.me.id;
    const departed = (event.kind === 'member_removed' || event.kind === 'member_left') && event.user_id === me;
    if (!this.chats.records.has(id)) {
      if (event.kind === 'member_added' && event.user.id === me) {
        void this.joined(id);
      } else if (!departed) {
        // A conversation that includes us was created elsewhere: its first event is how we learn.
        this.chats.bufferUnknown(event);
      }
      return;
    }
    if (departed) {
      const chat = this.chats.view(id);
      this.outbox.applied(event);
      if (event.kind === 'member_removed' && chat) {
        const by = chat.members.find((m) => m.id === event.sender_id)?.username ?? 'An admin';
        this.notify(`${by} removed you from ${chat.title}.`);
      }
      this.chats.remove(id);
      return;
    }
    const isNew = this.absorb(event);
    this.timelines.live(event);
    if (isNew && event.kind === 'message' && event.sender_id !== me) this.emitIncoming(event.message);
    this.core.changed();
    this.receipts.maybeMarkRead();
  }

  /** I was added to a conversation: its row comes from the server. */
  private async joined(id: ConversationId): Promise<void> {
    try {
      const row = await this.core.transport.fetchConversation(id);
      if (!this.core.disposed) this.chats.addRow(row);
    } catch {
      if (!this.core.disposed) void this.chats.refresh();
    }
  }

  /**
   * Bookkeeping for one event from any source: chat preview, order and members, unread and
   * mention counts, typing, pending, delivery. Returns whether it is a message newer than
   * anything known for its chat.
   */
  private absorb(event: ConversationEvent): boolean {
    const id = event.conversation_id;
    const chat = this.chats.records.get(id);
    let isNew = false;
    if (event.kind === 'message') {
      isNew = this.absorbMessage(event.message);
    } else {
      if (chat) this.chats.applyEvent(chat, event);
      if (event.sender_id === this.core.me.id) this.outbox.applied(event);
    }
    if (chat && event.seq > chat.lastSeq) chat.lastSeq = event.seq;
    this.receipts.received(id, event.seq);
    return isNew;
  }

  /** A message from an event or a history page (in its current state). */
  private absorbMessage(message: Message): boolean {
    const id = message.conversation_id;
    const chat = this.chats.records.get(id);
    const mine = message.sender_id === this.core.me.id;
    let isNew = false;
    if (chat) {
      const previous = chat.lastMessage?.seq ?? 0;
      if (message.seq > previous) {
        isNew = true;
        chat.lastMessage = message;
        this.chats.moveToTop(id);
      } else if (message.seq === previous) {
        chat.lastMessage = message;
      }
      if (message.seq > chat.lastSeq) chat.lastSeq = message.seq;
      if (mine) {
        // The server moves the sender's read marker to their own message.
        this.receipts.readUpTo(chat, message.seq);
      } else {
        this.countUnread(chat, message);
      }
      this.chats.invalidate();
    }
    if (mine) this.outbox.stored(message);
    else this.typing.messageFrom(id, message.sender_id);
    return isNew;
  }

  private countUnread(chat: ChatRecord, message: Message): void {
    const id = message.conversation_id;
    if (message.deleted || message.seq <= chat.baseSeq || message.seq <= chat.readSeq || this.core.isReading(id)) return;
    chat.extraUnread.add(message.seq);
    if (message.mentions?.includes(this.core.me.id)) chat.extraMentions.add(message.seq);
  }

  private names: Readonly<Record<UserId, string>> = {};

  private namesView(): Readonly<Record<UserId, string>> {
    if (Object.keys(this.names).length !== this.chats.names.size) this.names = Object.fromEntries(this.chats.names);
    return this.names;
  }

  private notify(text: string): void {
    const notice: Notice = { id: this.nextNoticeId++, text };
    this.notices = [...this.notices, notice].slice(-SYNC_LIMITS.noticesMax);
    this.core.changed();
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
    const mentionsMe = message.mentions?.includes(this.core.me.id) ?? false;
    for (const listener of this.incomingListeners) listener({ message, chat, sender, mentionsMe });
  }
}

/** What a refused change was, for its notice. */
function refusedWhat(record: PendingRecord): string {
  const change: Change = record.change;
  switch (change.kind) {
    case 'message':
      return 'Could not send the message';
    case 'edit':
      return 'Could not edit the message';
    case 'delete':
      return 'Could not delete the message';
    case 'reaction_added':
      return `Could not react with ${change.emoji}`;
    case 'reaction_removed':
      return `Could not take back ${change.emoji}`;
    case 'member_added':
      return 'Could not add the member';
    case 'member_removed':
      return 'Could not remove the member';
    case 'member_left':
      return 'Could not leave the group';
    case 'title_changed':
      return 'Could not rename the group';
    case 'role_changed':
      return change.role === 'admin' ? 'Could not make them an admin' : 'Could not change their role';
  }
}
