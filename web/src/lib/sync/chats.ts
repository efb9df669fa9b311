// The chat list: every conversation this user is in, most recent activity first, with its
// preview and unread count. Refetched on start, on every `hello` and whenever a message
// names a conversation not known yet (its messages wait here until the list has it).
// Concurrent refetches share one request and rerun once after it; failures retry with backoff.

import type { Conversation, ConversationId, Message, UserId } from '../api/types.ts';
import type { SyncCore } from './core.ts';
import type { Presence } from './presence.ts';
import type { ChatView, LoadStatus } from './types.ts';
import { SYNC_LIMITS } from './types.ts';

export interface ChatRecord {
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

/** What a new list sets off elsewhere in the engine. */
export interface ChatsHooks {
  /** Bookkeeping for one message (see the engine's `absorb`); true if it is news. */
  absorb(message: Message): boolean;
  emitIncoming(message: Message): void;
  /** Catches up the loaded timelines that the list shows to be behind. */
  catchUpBehind(): void;
  maybeMarkRead(): void;
}

export class Chats {
  private readonly core: SyncCore;
  private readonly presence: Presence;
  private readonly hooks: ChatsHooks;

  status: LoadStatus = 'loading';
  readonly records = new Map<ConversationId, ChatRecord>();
  /** Chat ids, most recent activity first. */
  private order: ConversationId[] = [];
  private readonly unknownBuffer: Message[] = [];
  private views: readonly ChatView[] | null = null;

  private refreshRunning: Promise<void> | null = null;
  private refreshAgain = false;
  private refreshFailures = 0;

  constructor(core: SyncCore, presence: Presence, hooks: ChatsHooks) {
    this.core = core;
    this.presence = presence;
    this.hooks = hooks;
  }

  /** Refetches the chat list; concurrent calls share one request and rerun once after it. */
  refresh(): Promise<void> {
    if (this.refreshRunning) {
      this.refreshAgain = true;
      return this.refreshRunning;
    }
    this.refreshRunning = (async () => {
      try {
        do {
          this.refreshAgain = false;
          const list = await this.core.transport.listConversations();
          if (this.core.disposed) return;
          this.apply(list);
          this.refreshFailures = 0;
        } while (this.refreshAgain && !this.core.disposed);
      } catch {
        if (this.core.disposed) return;
        if (this.status === 'loading') this.status = 'error';
        this.refreshFailures += 1;
        this.core.later(() => void this.refresh(), this.core.retryDelay(this.refreshFailures));
        this.core.changed();
      } finally {
        this.refreshRunning = null;
      }
    })();
    return this.refreshRunning;
  }

  /** Adds or updates a conversation just created here, before the chat list is refetched. */
  upsert(conversation: Conversation): void {
    if (!Array.isArray(conversation.members)) {
      // Not the full row: the chat list will have it.
      void this.refresh();
      return;
    }
    this.merge(conversation, null);
    this.order = [conversation.id, ...this.order.filter((id) => id !== conversation.id)];
    this.views = null;
    this.core.changed();
    void this.refresh();
  }

  /** A live message of a conversation not in the list: a conversation that includes us was
   * created elsewhere, and its first message is how we learn. */
  bufferUnknown(message: Message): void {
    if (this.unknownBuffer.length < SYNC_LIMITS.unknownBufferMax) this.unknownBuffer.push(message);
    void this.refresh();
  }

  /** Moves a chat to the top of the list (a newer message). */
  moveToTop(id: ConversationId): void {
    if (this.order[0] !== id) this.order = [id, ...this.order.filter((other) => other !== id)];
  }

  /** The list's view is out of date (a preview, an unread count or the order changed). */
  invalidate(): void {
    this.views = null;
  }

  unreadOf(chat: ChatRecord): number {
    return chat.baseUnread + chat.extraUnread.size;
  }

  list(): readonly ChatView[] {
    if (this.views) return this.views;
    const views: ChatView[] = [];
    for (const id of this.order) {
      const chat = this.records.get(id);
      if (!chat) continue;
      const { title, peerId } = this.title(chat.conversation);
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
    this.views = views;
    return views;
  }

  view(id: ConversationId): ChatView | undefined {
    return this.list().find((c) => c.id === id);
  }

  private apply(list: readonly Conversation[]): void {
    const seen = new Set<ConversationId>();
    list.forEach((conversation) => {
      seen.add(conversation.id);
      this.merge(conversation, conversation.unread_count);
    });
    for (const id of [...this.records.keys()]) if (!seen.has(id)) this.records.delete(id);
    this.order = list.map((c) => c.id);
    this.status = 'ready';
    this.views = null;

    // Messages of conversations that were unknown until now: notify about them.
    const buffered = this.unknownBuffer.splice(0);
    for (const message of buffered) {
      if (!this.records.has(message.conversation_id)) continue;
      this.hooks.absorb(message);
      if (message.sender_id !== this.core.me.id) this.hooks.emitIncoming(message);
    }
    // The list may know of messages the open timelines have not seen.
    this.hooks.catchUpBehind();
    this.core.changed();
    this.hooks.maybeMarkRead();
  }

  /** `unread` is null when the source does not say (a conversation just created here). */
  private merge(conversation: Conversation, unread: number | null): void {
    for (const member of conversation.members) this.presence.noteOnline(member.id, member.online);
    const existing = this.records.get(conversation.id);
    if (!existing) {
      this.records.set(conversation.id, {
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

  private title(conversation: Conversation): { title: string; peerId: UserId | null } {
    if (conversation.kind === 'group') {
      return { title: conversation.title ?? 'Group', peerId: null };
    }
    const peer = conversation.members.find((m) => m.id !== this.core.me.id);
    return {
      title: conversation.title ?? peer?.username ?? this.core.me.username,
      peerId: peer?.id ?? null,
    };
  }
}
