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

import type {
  ClientFrame,
  Conversation,
  ConversationId,
  ConversationKind,
  Member,
  Message,
  Page,
  ServerFrame,
  User,
  UserId,
} from '../api/types.ts';
import { LIMITS, utf8Bytes } from '../api/types.ts';
import { Timeline } from './timeline.ts';

export interface SyncTransport {
  listConversations(): Promise<Conversation[]>;
  fetchMessages(conversation: ConversationId, page: Page): Promise<Message[]>;
  markRead(conversation: ConversationId, seq: number): Promise<void>;
  /** Sends on the live socket; false when there is none (the engine keeps it to resend). */
  send(frame: ClientFrame): boolean;
}

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as number),
};

export const SYNC_LIMITS = {
  /** Newest page loaded when a conversation is opened, and each older page. */
  pageMessages: 50,
  /** Forward page size when catching up (the server's maximum). */
  catchUpPageMessages: LIMITS.historyPageMax,
  /** Forward pages per catch-up before jumping to the newest page instead. */
  catchUpRoundsMax: 5,
  /** After `accepted`, how long to wait for the message before asking the store. */
  acceptedConfirmMs: 5_000,
  /** After a send without `accepted`, how long before sending it again (same client_msg_id). */
  sendConfirmMs: 10_000,
  /** Someone stops being shown as typing this long after their last `typing`. */
  typingShownMs: 6_000,
  /** At most one outgoing `typing` per conversation per this interval. */
  typingSendIntervalMs: 3_000,
  /** Backoff for resending a `rate_limited` send, and for retrying failed fetches. */
  retryInitialMs: 1_000,
  retryMaxMs: 30_000,
  /** Messages of not-yet-known conversations kept until the chat list is refetched. */
  unknownBufferMax: 100,
} as const;

export type ConnectionState = 'connecting' | 'online' | 'offline';
export type LoadStatus = 'loading' | 'ready' | 'error';

export interface ChatView {
  id: ConversationId;
  kind: ConversationKind;
  /** The group's title, or the other member's username for a direct chat. */
  title: string;
  members: readonly Member[];
  /** For a direct chat, the other member. */
  peerId: UserId | null;
  lastMessage: Message | null;
  lastSeq: number;
  unread: number;
}

export type PendingState = 'queued' | 'sending' | 'accepted' | 'failed';

export interface PendingMessage {
  conversationId: ConversationId;
  clientMsgId: string;
  body: string;
  createdAt: string;
  state: PendingState;
  error: string | null;
}

export interface TimelineView {
  status: LoadStatus;
  error: string | null;
  /** Stored messages, ascending seq, each once. */
  messages: readonly Message[];
  /** Typed here, not yet stored: shown after `messages`, in the order they were typed. */
  pending: readonly PendingMessage[];
  hasOlder: boolean;
  loadingOlder: boolean;
  /** The highest seq that another member is known to have read. */
  readByOthersSeq: number;
}

export interface PresenceView {
  online: boolean;
  lastSeen: string | null;
}

export interface EngineState {
  me: User;
  connection: ConnectionState;
  chatsStatus: LoadStatus;
  chats: readonly ChatView[];
  timelines: Readonly<Record<ConversationId, TimelineView>>;
  presence: Readonly<Record<UserId, PresenceView>>;
  typing: Readonly<Record<ConversationId, readonly UserId[]>>;
  activeId: ConversationId | null;
}

export interface IncomingMessage {
  message: Message;
  chat: ChatView;
  sender: string;
}

export interface EngineOptions {
  me: User;
  transport: SyncTransport;
  clock?: Clock;
  newClientMsgId?: () => string;
  random?: () => number;
}

/** Why `send` refused a body before it became pending. */
export class SendRejected extends Error {}

interface ChatRecord {
  conversation: Conversation;
  lastMessage: Message | null;
  lastSeq: number;
  /** Unread count as of the last chat-list fetch, covering seqs up to `baseSeq`. */
  baseUnread: number;
  baseSeq: number;
  /** Others' messages above `baseSeq` and above `readSeq` seen since then. */
  extraUnread: Set<number>;
  /** My read marker as far as this client knows (never moves back). */
  readSeq: number;
  /** `readSeq` moved here and the server has not confirmed it yet. */
  readUnsent: boolean;
}

interface TimelineRecord {
  timeline: Timeline;
  status: LoadStatus;
  error: string | null;
  loadingOlder: boolean;
  catchUpRunning: boolean;
  catchUpAgain: boolean;
  catchUpFailures: number;
  othersRead: Map<UserId, number>;
}

interface PendingRecord extends PendingMessage {
  attempts: number;
  retryTimer: unknown;
  /** Waits for `accepted` (then resends) or for the message (then asks the store). */
  confirmTimer: unknown;
}

export class SyncEngine {
  private readonly me: User;
  private readonly transport: SyncTransport;
  private readonly clock: Clock;
  private readonly newClientMsgId: () => string;
  private readonly random: () => number;

  private connection: ConnectionState = 'connecting';
  private chatsStatus: LoadStatus = 'loading';
  private readonly chats = new Map<ConversationId, ChatRecord>();
  /** Chat ids, most recent activity first. */
  private order: ConversationId[] = [];
  private readonly timelines = new Map<ConversationId, TimelineRecord>();
  private readonly pending = new Map<ConversationId, PendingRecord[]>();
  private readonly pendingById = new Map<string, PendingRecord>();
  private readonly presence = new Map<UserId, PresenceView>();
  private readonly typing = new Map<ConversationId, Map<UserId, number>>();
  private readonly typingSentAt = new Map<ConversationId, number>();
  private readonly unknownBuffer: Message[] = [];
  private activeId: ConversationId | null = null;
  private visible = true;

  private refreshRunning: Promise<void> | null = null;
  private refreshAgain = false;
  private refreshFailures = 0;
  private readonly timers = new Set<unknown>();
  private disposed = false;

  private readonly listeners = new Set<() => void>();
  private readonly incomingListeners = new Set<(incoming: IncomingMessage) => void>();
  private snapshot: EngineState | null = null;
  private readonly timelineViews = new Map<ConversationId, TimelineView>();
  private chatViews: readonly ChatView[] | null = null;

  constructor(options: EngineOptions) {
    this.me = options.me;
    this.transport = options.transport;
    this.clock = options.clock ?? systemClock;
    this.newClientMsgId = options.newClientMsgId ?? (() => crypto.randomUUID());
    this.random = options.random ?? Math.random;
  }

  // ---- Subscription -------------------------------------------------------------------

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  getState = (): EngineState => {
    if (this.snapshot) return this.snapshot;
    const timelines: Record<ConversationId, TimelineView> = {};
    for (const id of this.timelines.keys()) timelines[id] = this.timelineView(id);
    const presence: Record<UserId, PresenceView> = Object.fromEntries(this.presence);
    const typing: Record<ConversationId, UserId[]> = {};
    for (const [id, users] of this.typing) if (users.size > 0) typing[id] = [...users.keys()];
    this.snapshot = {
      me: this.me,
      connection: this.connection,
      chatsStatus: this.chatsStatus,
      chats: this.chatList(),
      timelines,
      presence,
      typing,
      activeId: this.activeId,
    };
    return this.snapshot;
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
    this.disposed = true;
    for (const handle of this.timers) this.clock.clearTimeout(handle);
    this.timers.clear();
    this.listeners.clear();
    this.incomingListeners.clear();
  }

  /** The socket's status: `open` becomes `online` only with the server's `hello`. */
  setSocketStatus(status: 'connecting' | 'open' | 'closed'): void {
    if (status === 'open') return;
    // Whatever was in flight on the old socket is sent again after the next `hello`.
    for (const p of this.pendingById.values()) if (p.state === 'sending') p.state = 'queued';
    const next: ConnectionState = status === 'closed' ? 'offline' : 'connecting';
    if (next === this.connection) return;
    this.connection = next;
    this.changed();
  }

  setVisible(visible: boolean): void {
    this.visible = visible;
    if (visible) this.maybeMarkRead();
  }

  /** The conversation on screen (null for none). Loads it if needed and marks it read. */
  setActive(id: ConversationId | null): void {
    if (this.activeId === id) return;
    this.activeId = id;
    if (id !== null) {
      const record = this.timelines.get(id);
      if (!record || record.status === 'error') void this.load(id);
    }
    this.changed();
    this.maybeMarkRead();
  }

  // ---- Frames from the socket ---------------------------------------------------------

  handleFrame(frame: ServerFrame): void {
    if (this.disposed) return;
    switch (frame.type) {
      case 'hello':
        this.connection = 'online';
        this.changed();
        this.resync();
        return;
      case 'accepted':
        this.accepted(frame.client_msg_id);
        return;
      case 'message':
        this.absorbLive(frame.message);
        return;
      case 'presence':
        this.presence.set(frame.user_id, { online: frame.online, lastSeen: frame.last_seen ?? null });
        this.changed();
        return;
      case 'typing':
        this.someoneTyping(frame.conversation_id, frame.user_id);
        return;
      case 'read':
        this.someoneRead(frame.conversation_id, frame.user_id, frame.seq);
        return;
      case 'error':
        this.serverError(frame.code, frame.message, frame.client_msg_id);
        return;
      case 'pong':
        return;
    }
  }

  // ---- Actions ------------------------------------------------------------------------

  /** Queues a message; it is pending until the server pushes it back with a seq. */
  send(conversationId: ConversationId, body: string): string {
    if (body.trim() === '') throw new SendRejected('A message cannot be empty.');
    if (body.includes('\0')) throw new SendRejected('A message cannot contain NUL characters.');
    if (utf8Bytes(body) > LIMITS.bodyBytesMax) {
      throw new SendRejected(`A message is at most ${LIMITS.bodyBytesMax / 1024} KiB.`);
    }
    const record: PendingRecord = {
      conversationId,
      clientMsgId: this.newClientMsgId(),
      body,
      createdAt: new Date(this.clock.now()).toISOString(),
      state: 'queued',
      error: null,
      attempts: 0,
      retryTimer: null,
      confirmTimer: null,
    };
    const list = this.pending.get(conversationId) ?? [];
    list.push(record);
    this.pending.set(conversationId, list);
    this.pendingById.set(record.clientMsgId, record);
    this.typingSentAt.delete(conversationId);
    this.trySend(record);
    this.touchTimeline(conversationId);
    this.changed();
    return record.clientMsgId;
  }

  /** Sends a failed message again, with the same client_msg_id. */
  retry(clientMsgId: string): void {
    const record = this.pendingById.get(clientMsgId);
    if (!record) return;
    record.state = 'queued';
    record.error = null;
    record.attempts = 0;
    this.trySend(record);
    this.touchTimeline(record.conversationId);
    this.changed();
  }

  discard(clientMsgId: string): void {
    const record = this.pendingById.get(clientMsgId);
    if (record) this.removePending(record);
  }

  /** Tells the others that this user is typing (at most once per interval). */
  typingIn(conversationId: ConversationId): void {
    if (this.connection !== 'online') return;
    const now = this.clock.now();
    const last = this.typingSentAt.get(conversationId);
    if (last !== undefined && now - last < SYNC_LIMITS.typingSendIntervalMs) return;
    if (this.transport.send({ type: 'typing', conversation_id: conversationId })) {
      this.typingSentAt.set(conversationId, now);
    }
  }

  /** Loads the next older page of an open conversation (infinite scroll upward). */
  async loadOlder(id: ConversationId): Promise<void> {
    const record = this.timelines.get(id);
    if (!record || record.status !== 'ready' || record.loadingOlder || !record.timeline.hasOlder) return;
    record.loadingOlder = true;
    this.touchTimeline(id);
    this.changed();
    try {
      const page = await this.transport.fetchMessages(id, {
        before_seq: record.timeline.firstSeq,
        limit: SYNC_LIMITS.pageMessages,
      });
      if (this.timelines.get(id) !== record) return;
      record.timeline.prepend(page);
    } catch {
      // Scrolling up again retries.
    } finally {
      record.loadingOlder = false;
      this.touchTimeline(id);
      this.changed();
    }
  }

  /** Adds or updates a conversation just created here, before the chat list is refetched. */
  upsertConversation(conversation: Conversation): void {
    if (!Array.isArray(conversation.members)) {
      // Not the full row: the chat list will have it.
      void this.refreshChats();
      return;
    }
    this.mergeConversation(conversation, null);
    this.order = [conversation.id, ...this.order.filter((id) => id !== conversation.id)];
    this.chatViews = null;
    this.changed();
    void this.refreshChats();
  }

  /** Presence learned elsewhere (user search results). */
  notePresence(members: readonly Member[]): void {
    for (const m of members) this.setPresenceOnline(m.id, m.online);
    this.changed();
  }

  /** Refetches the chat list; concurrent calls share one request and rerun once after it. */
  refreshChats(): Promise<void> {
    if (this.refreshRunning) {
      this.refreshAgain = true;
      return this.refreshRunning;
    }
    this.refreshRunning = (async () => {
      try {
        do {
          this.refreshAgain = false;
          const list = await this.transport.listConversations();
          if (this.disposed) return;
          this.applyChatList(list);
          this.refreshFailures = 0;
        } while (this.refreshAgain && !this.disposed);
      } catch {
        if (this.disposed) return;
        if (this.chatsStatus === 'loading') this.chatsStatus = 'error';
        this.refreshFailures += 1;
        this.later(() => void this.refreshChats(), this.retryDelay(this.refreshFailures));
        this.changed();
      } finally {
        this.refreshRunning = null;
      }
    })();
    return this.refreshRunning;
  }

  // ---- Internals: chats ---------------------------------------------------------------

  private applyChatList(list: readonly Conversation[]): void {
    const seen = new Set<ConversationId>();
    list.forEach((conversation) => {
      seen.add(conversation.id);
      this.mergeConversation(conversation, conversation.unread_count);
    });
    for (const id of [...this.chats.keys()]) if (!seen.has(id)) this.chats.delete(id);
    this.order = list.map((c) => c.id);
    this.chatsStatus = 'ready';
    this.chatViews = null;

    // Messages of conversations that were unknown until now: notify about them.
    const buffered = this.unknownBuffer.splice(0);
    for (const message of buffered) {
      if (!this.chats.has(message.conversation_id)) continue;
      this.absorb(message);
      if (message.sender_id !== this.me.id) this.emitIncoming(message);
    }
    // The list may know of messages the open timelines have not seen.
    for (const [id, record] of this.timelines) {
      const chat = this.chats.get(id);
      if (chat && record.status === 'ready' && chat.lastSeq > record.timeline.lastSeq) void this.catchUp(id);
    }
    this.changed();
    this.maybeMarkRead();
  }

  /** `unread` is null when the source does not say (a conversation just created here). */
  private mergeConversation(conversation: Conversation, unread: number | null): void {
    for (const member of conversation.members) this.setPresenceOnline(member.id, member.online);
    const existing = this.chats.get(conversation.id);
    if (!existing) {
      this.chats.set(conversation.id, {
        conversation,
        lastMessage: conversation.last_message,
        lastSeq: conversation.last_seq,
        baseUnread: unread ?? 0,
        baseSeq: conversation.last_seq,
        extraUnread: new Set(),
        readSeq: (unread ?? 0) === 0 ? conversation.last_seq : 0,
        readUnsent: false,
      });
      return;
    }
    existing.conversation = conversation;
    if (conversation.last_seq >= existing.lastSeq) {
      existing.lastSeq = conversation.last_seq;
      existing.lastMessage = conversation.last_message ?? existing.lastMessage;
    }
    if (unread === null) return;
    existing.baseSeq = conversation.last_seq;
    existing.baseUnread = existing.readSeq >= conversation.last_seq ? 0 : unread;
    for (const seq of existing.extraUnread) if (seq <= conversation.last_seq) existing.extraUnread.delete(seq);
    if (unread === 0) existing.readSeq = Math.max(existing.readSeq, conversation.last_seq);
  }

  private setPresenceOnline(user: UserId, online: boolean): void {
    if (user === this.me.id) return;
    const previous = this.presence.get(user);
    if (previous?.online === online) return;
    this.presence.set(user, { online, lastSeen: previous?.lastSeen ?? null });
  }

  private chatTitle(conversation: Conversation): { title: string; peerId: UserId | null } {
    if (conversation.kind === 'group') {
      return { title: conversation.title ?? 'Group', peerId: null };
    }
    const peer = conversation.members.find((m) => m.id !== this.me.id);
    return {
      title: conversation.title ?? peer?.username ?? this.me.username,
      peerId: peer?.id ?? null,
    };
  }

  private unreadOf(chat: ChatRecord): number {
    return chat.baseUnread + chat.extraUnread.size;
  }

  private chatList(): readonly ChatView[] {
    if (this.chatViews) return this.chatViews;
    const views: ChatView[] = [];
    for (const id of this.order) {
      const chat = this.chats.get(id);
      if (!chat) continue;
      const { title, peerId } = this.chatTitle(chat.conversation);
      views.push({
        id,
        kind: chat.conversation.kind,
        title,
        members: chat.conversation.members,
        peerId,
        lastMessage: chat.lastMessage,
        lastSeq: chat.lastSeq,
        unread: this.unreadOf(chat),
      });
    }
    this.chatViews = views;
    return views;
  }

  private chatView(id: ConversationId): ChatView | undefined {
    return this.chatList().find((c) => c.id === id);
  }

  // ---- Internals: messages ------------------------------------------------------------

  private absorbLive(message: Message): void {
    const chat = this.chats.get(message.conversation_id);
    if (!chat) {
      // A conversation that includes us was created elsewhere: its first message is how we learn.
      if (this.unknownBuffer.length < SYNC_LIMITS.unknownBufferMax) this.unknownBuffer.push(message);
      void this.refreshChats();
      return;
    }
    const isNew = this.absorb(message);
    const record = this.timelines.get(message.conversation_id);
    if (record) {
      if (record.status === 'ready') {
        if (record.timeline.insert(message) === 'gap') void this.catchUp(message.conversation_id);
      } else {
        record.timeline.buffer(message);
      }
      this.touchTimeline(message.conversation_id);
    }
    if (isNew && message.sender_id !== this.me.id) this.emitIncoming(message);
    this.changed();
    this.maybeMarkRead();
  }

  /**
   * Bookkeeping for one message from any source: chat preview and order, unread count,
   * typing, pending. Returns whether the message is newer than anything known for its chat.
   */
  private absorb(message: Message): boolean {
    const id = message.conversation_id;
    const chat = this.chats.get(id);
    let isNew = false;
    if (chat) {
      if (message.seq > chat.lastSeq) {
        isNew = true;
        chat.lastSeq = message.seq;
        chat.lastMessage = message;
        if (this.order[0] !== id) this.order = [id, ...this.order.filter((other) => other !== id)];
      }
      if (message.sender_id === this.me.id) {
        // The server moves the sender's read marker to their own message.
        this.readUpTo(chat, message.seq);
      } else if (message.seq > chat.baseSeq && message.seq > chat.readSeq && !this.isReading(id)) {
        chat.extraUnread.add(message.seq);
      }
      this.chatViews = null;
    }
    if (message.sender_id === this.me.id) {
      const record = this.pendingById.get(message.client_msg_id);
      if (record && record.conversationId === id) this.removePending(record, false);
    } else {
      const typing = this.typing.get(id);
      if (typing?.delete(message.sender_id)) this.changed();
    }
    return isNew;
  }

  /** Opens a conversation: the newest page, then whatever arrived meanwhile. */
  private async load(id: ConversationId): Promise<void> {
    const existing = this.timelines.get(id);
    const record: TimelineRecord = existing ?? {
      timeline: new Timeline(),
      status: 'loading',
      error: null,
      loadingOlder: false,
      catchUpRunning: false,
      catchUpAgain: false,
      catchUpFailures: 0,
      othersRead: new Map(),
    };
    record.status = 'loading';
    record.error = null;
    this.timelines.set(id, record);
    this.touchTimeline(id);
    this.changed();
    try {
      const page = await this.transport.fetchMessages(id, { limit: SYNC_LIMITS.pageMessages });
      if (this.disposed || this.timelines.get(id) !== record) return;
      for (const message of page) if (message.conversation_id === id) this.absorb(message);
      record.timeline.reset(page.filter((m) => m.conversation_id === id));
      record.status = 'ready';
      record.catchUpFailures = 0;
      this.touchTimeline(id);
      this.changed();
      const chat = this.chats.get(id);
      if (record.timeline.hasGap || (chat && chat.lastSeq > record.timeline.lastSeq)) {
        await this.catchUp(id);
      }
      this.maybeMarkRead();
    } catch (error) {
      if (this.disposed || this.timelines.get(id) !== record) return;
      record.status = 'error';
      record.error = error instanceof Error ? error.message : 'Could not load messages.';
      record.catchUpFailures += 1;
      // Online, try again with backoff; offline, the reconnect's resync reloads it.
      if (this.connection === 'online') {
        this.later(() => {
          if (this.timelines.get(id) === record && record.status === 'error') void this.load(id);
        }, this.retryDelay(record.catchUpFailures));
      }
      this.touchTimeline(id);
      this.changed();
    }
  }

  /**
   * Fills the timeline from its last seq with forward pages until it has everything the
   * store has. One run per conversation at a time; a request during a run reruns it once.
   */
  private async catchUp(id: ConversationId): Promise<void> {
    const record = this.timelines.get(id);
    if (!record) return;
    if (record.status === 'error') return this.load(id);
    if (record.status !== 'ready') return;
    if (record.catchUpRunning) {
      record.catchUpAgain = true;
      return;
    }
    record.catchUpRunning = true;
    try {
      let rounds = 0;
      for (;;) {
        record.catchUpAgain = false;
        const page = await this.transport.fetchMessages(id, {
          after_seq: record.timeline.lastSeq,
          limit: SYNC_LIMITS.catchUpPageMessages,
        });
        if (this.disposed || this.timelines.get(id) !== record) return;
        const sorted = page.filter((m) => m.conversation_id === id).sort((a, b) => a.seq - b.seq);
        for (const message of sorted) {
          this.absorb(message);
          record.timeline.insert(message);
        }
        this.touchTimeline(id);
        this.changed();
        rounds += 1;
        const full = page.length >= SYNC_LIMITS.catchUpPageMessages;
        if (!full && !record.catchUpAgain && !record.timeline.hasGap) break;
        if (!full && page.length === 0 && !record.catchUpAgain) {
          // The store does not have what the socket showed us yet: try again shortly.
          throw new Error('store behind the live stream');
        }
        if (rounds >= SYNC_LIMITS.catchUpRoundsMax) {
          // Far behind: show the newest page rather than paging through everything.
          const newest = await this.transport.fetchMessages(id, { limit: SYNC_LIMITS.pageMessages });
          if (this.disposed || this.timelines.get(id) !== record) return;
          for (const message of newest) if (message.conversation_id === id) this.absorb(message);
          record.timeline.reset(newest.filter((m) => m.conversation_id === id));
          this.touchTimeline(id);
          this.changed();
          if (!record.catchUpAgain) break;
          rounds = 0;
        }
      }
      record.catchUpFailures = 0;
    } catch {
      if (this.disposed || this.timelines.get(id) !== record) return;
      record.catchUpFailures += 1;
      // Offline, a reconnect's resync catches up; online, retry with backoff.
      if (this.connection === 'online') {
        this.later(() => void this.catchUp(id), this.retryDelay(record.catchUpFailures));
      }
    } finally {
      record.catchUpRunning = false;
    }
    this.maybeMarkRead();
  }

  /** After a (re)connect: refetch the list, catch every loaded conversation up, resend. */
  private resync(): void {
    void this.refreshChats();
    const ids = new Set<ConversationId>([...this.timelines.keys(), ...this.pending.keys()]);
    for (const id of ids) {
      const record = this.timelines.get(id);
      // A load in flight catches up by itself when it lands.
      const sync =
        record?.status === 'ready'
          ? this.catchUp(id)
          : record?.status === 'error'
            ? this.load(id)
            : Promise.resolve();
      void sync.finally(() => this.flushPending(id));
    }
    // Read markers the server may not have received.
    for (const [id, chat] of this.chats) if (chat.readUnsent) this.sendRead(id, chat);
  }

  // ---- Internals: pending -------------------------------------------------------------

  private flushPending(id: ConversationId): void {
    if (this.disposed) return;
    for (const record of this.pending.get(id) ?? []) {
      if (record.state !== 'failed' && record.retryTimer === null) this.trySend(record);
    }
    this.touchTimeline(id);
    this.changed();
  }

  private trySend(record: PendingRecord): void {
    if (this.connection !== 'online') {
      record.state = 'queued';
      return;
    }
    const sent = this.transport.send({
      type: 'send',
      conversation_id: record.conversationId,
      client_msg_id: record.clientMsgId,
      body: record.body,
    });
    record.state = sent ? 'sending' : 'queued';
    if (sent) {
      // A frame can vanish with a socket that looks alive; the server stores a repeat once.
      this.confirmLater(record, SYNC_LIMITS.sendConfirmMs, () => {
        if (record.state === 'sending') {
          this.trySend(record);
          this.touchTimeline(record.conversationId);
          this.changed();
        }
      });
    }
  }

  private confirmLater(record: PendingRecord, ms: number, check: () => void): void {
    if (record.confirmTimer !== null) this.clearLater(record.confirmTimer);
    record.confirmTimer = this.later(() => {
      record.confirmTimer = null;
      if (this.pendingById.get(record.clientMsgId) === record) check();
    }, ms);
  }

  private accepted(clientMsgId: string): void {
    const record = this.pendingById.get(clientMsgId);
    if (!record) return;
    record.state = 'accepted';
    record.attempts = 0;
    // Durable now; if its `message` got lost on the way, the store has it.
    this.confirmLater(record, SYNC_LIMITS.acceptedConfirmMs, () => void this.catchUp(record.conversationId));
    this.touchTimeline(record.conversationId);
    this.changed();
  }

  private serverError(code: string, message: string, clientMsgId: string | undefined): void {
    if (clientMsgId === undefined) {
      console.warn(`parlor: server error ${code}: ${message}`);
      return;
    }
    const record = this.pendingById.get(clientMsgId);
    if (!record) return;
    if (
      code === 'rate_limited' ||
      code === 'unavailable' ||
      code === 'storage_full' ||
      code === 'internal'
    ) {
      // Not this message's fault: keep it pending and send it again later.
      record.state = 'queued';
      record.attempts += 1;
      if (record.confirmTimer !== null) this.clearLater(record.confirmTimer);
      record.confirmTimer = null;
      if (record.retryTimer !== null) this.clearLater(record.retryTimer);
      record.retryTimer = this.later(() => {
        record.retryTimer = null;
        if (this.pendingById.get(clientMsgId) === record && record.state === 'queued') {
          this.trySend(record);
          this.touchTimeline(record.conversationId);
          this.changed();
        }
      }, this.retryDelay(record.attempts));
    } else {
      record.state = 'failed';
      record.error = message;
      if (record.confirmTimer !== null) this.clearLater(record.confirmTimer);
      record.confirmTimer = null;
    }
    this.touchTimeline(record.conversationId);
    this.changed();
  }

  private removePending(record: PendingRecord, notify = true): void {
    if (record.retryTimer !== null) this.clearLater(record.retryTimer);
    if (record.confirmTimer !== null) this.clearLater(record.confirmTimer);
    this.pendingById.delete(record.clientMsgId);
    const list = (this.pending.get(record.conversationId) ?? []).filter((p) => p !== record);
    if (list.length > 0) this.pending.set(record.conversationId, list);
    else this.pending.delete(record.conversationId);
    this.touchTimeline(record.conversationId);
    if (notify) this.changed();
  }

  // ---- Internals: read markers, typing, presence ---------------------------------------

  private isReading(id: ConversationId): boolean {
    return this.visible && this.activeId === id;
  }

  private readUpTo(chat: ChatRecord, seq: number): void {
    if (seq > chat.readSeq) chat.readSeq = seq;
    for (const s of chat.extraUnread) if (s <= seq) chat.extraUnread.delete(s);
    if (seq >= chat.baseSeq) chat.baseUnread = 0;
    this.chatViews = null;
  }

  /** Marks the conversation on screen read up to what is shown, if that is news. */
  private maybeMarkRead(): void {
    const id = this.activeId;
    if (id === null || !this.visible || this.disposed) return;
    const chat = this.chats.get(id);
    const record = this.timelines.get(id);
    if (!chat || !record || record.status !== 'ready') return;
    const seq = record.timeline.lastSeq;
    const hasUnread = this.unreadOf(chat) > 0;
    if (seq <= chat.readSeq && !hasUnread) return;
    this.readUpTo(chat, seq);
    chat.readUnsent = true;
    this.changed();
    this.sendRead(id, chat);
  }

  private sendRead(id: ConversationId, chat: ChatRecord): void {
    const seq = chat.readSeq;
    if (seq < 1) {
      chat.readUnsent = false;
      return;
    }
    // On failure `readUnsent` stays set and the next resync sends it again.
    this.transport.markRead(id, seq).then(
      () => {
        if (chat.readSeq <= seq) chat.readUnsent = false;
      },
      () => {},
    );
  }

  private someoneRead(id: ConversationId, user: UserId, seq: number): void {
    const chat = this.chats.get(id);
    if (user === this.me.id) {
      if (chat) {
        this.readUpTo(chat, seq);
        if (seq >= chat.readSeq) chat.readUnsent = false;
        this.changed();
      }
      return;
    }
    const record = this.timelines.get(id);
    if (!record) return;
    const previous = record.othersRead.get(user) ?? 0;
    if (seq <= previous) return;
    record.othersRead.set(user, seq);
    this.touchTimeline(id);
    this.changed();
  }

  private someoneTyping(id: ConversationId, user: UserId): void {
    if (user === this.me.id) return;
    let users = this.typing.get(id);
    if (!users) {
      users = new Map();
      this.typing.set(id, users);
    }
    const until = this.clock.now() + SYNC_LIMITS.typingShownMs;
    users.set(user, until);
    this.later(() => {
      const current = this.typing.get(id);
      if (current && current.get(user) === until) {
        current.delete(user);
        this.changed();
      }
    }, SYNC_LIMITS.typingShownMs);
    this.changed();
  }

  private emitIncoming(message: Message): void {
    const chat = this.chatView(message.conversation_id);
    if (!chat) return;
    const sender = chat.members.find((m) => m.id === message.sender_id)?.username ?? 'Someone';
    for (const listener of this.incomingListeners) listener({ message, chat, sender });
  }

  // ---- Internals: snapshots and timers ------------------------------------------------

  private timelineView(id: ConversationId): TimelineView {
    const cached = this.timelineViews.get(id);
    if (cached) return cached;
    const record = this.timelines.get(id);
    const pendingRecords = this.pending.get(id) ?? [];
    const messages: Message[] = [];
    const ownIds = new Set<string>();
    for (const message of record?.timeline.messages ?? []) {
      if (message.sender_id === this.me.id) {
        // One message per client_msg_id, even if a buggy server stored it twice.
        if (ownIds.has(message.client_msg_id)) continue;
        ownIds.add(message.client_msg_id);
      }
      messages.push(message);
    }
    let readByOthersSeq = 0;
    for (const seq of record?.othersRead.values() ?? []) readByOthersSeq = Math.max(readByOthersSeq, seq);
    const view: TimelineView = {
      status: record?.status ?? 'loading',
      error: record?.error ?? null,
      messages,
      pending: pendingRecords
        .filter((p) => !ownIds.has(p.clientMsgId))
        .map(({ conversationId, clientMsgId, body, createdAt, state, error }) => ({
          conversationId,
          clientMsgId,
          body,
          createdAt,
          state,
          error,
        })),
      hasOlder: record?.timeline.hasOlder ?? false,
      loadingOlder: record?.loadingOlder ?? false,
      readByOthersSeq,
    };
    this.timelineViews.set(id, view);
    return view;
  }

  /** Invalidates one conversation's view and tells the subscribers. */
  private touchTimeline(id: ConversationId): void {
    this.timelineViews.delete(id);
    this.changed();
  }

  private changed(): void {
    if (this.disposed) return;
    this.snapshot = null;
    for (const listener of [...this.listeners]) listener();
  }

  private later(fn: () => void, ms: number): unknown {
    const handle = this.clock.setTimeout(() => {
      this.timers.delete(handle);
      if (!this.disposed) fn();
    }, ms);
    this.timers.add(handle);
    return handle;
  }

  private clearLater(handle: unknown): void {
    this.timers.delete(handle);
    this.clock.clearTimeout(handle);
  }

  private retryDelay(attempt: number): number {
    const ceiling = Math.min(SYNC_LIMITS.retryMaxMs, SYNC_LIMITS.retryInitialMs * 2 ** Math.min(attempt, 20));
    return Math.round(ceiling / 2 + (this.random() * ceiling) / 2);
  }
}
