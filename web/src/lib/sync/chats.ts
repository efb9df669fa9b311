// The chat list: every conversation this user is in, most recent message first, with its
// preview, unread and mention counts, mute, and its members with their roles and read and
// delivered markers. Refetched on start, on every `hello` and whenever an event names a
// conversation not known yet (its messages wait here until the list has it). A `conversation`
// frame adds one row live; member and title events update rows as they come. Concurrent
// refetches share one request and rerun once after it; failures retry with backoff.

import type { Conversation, ConversationEvent, ConversationId, Message, Role, UserId } from '../api/types.ts';
import { applyToConversation, applyToMessage, withMarker } from './apply.ts';
import type { SyncCore } from './core.ts';
import type { Presence } from './presence.ts';
import type { ChatView, LoadStatus } from './types.ts';
import { SYNC_LIMITS } from './types.ts';

export interface ChatRecord {
  /** The row as last fetched, with the member and title events and markers since applied. */
  conversation: Conversation;
  lastMessage: Message | null;
  /** The newest event seq known. */
  lastSeq: number;
  /** Unread counts as of the last chat-list fetch, covering seqs up to `baseSeq`. */
  baseUnread: number;
  baseMentions: number;
  baseSeq: number;
  /** Others' messages above `baseSeq` and above `readSeq` seen since then. */
  extraUnread: Set<number>;
  /** Of those, the ones that mention me. */
  extraMentions: Set<number>;
  /** My read marker as far as this client knows (never moves back). */
  readSeq: number;
  /** `readSeq` moved here and the server has not confirmed it yet. */
  readUnsent: boolean;
  muted: boolean;
}

/** What a new list sets off elsewhere in the engine. */
export interface ChatsHooks {
  /** Bookkeeping for one event (see the engine's `absorb`); true if it is a new message. */
  absorb(event: ConversationEvent): boolean;
  emitIncoming(message: Message): void;
  /** Catches up the loaded timelines that the list shows to be behind. */
  catchUpBehind(): void;
  maybeMarkRead(): void;
  /** A conversation left the list (removed, left, or gone from a refetch). */
  dropped(id: ConversationId): void;
  /** The list says the newest event of a conversation is `seq`: it reached this device. */
  received(id: ConversationId, seq: number): void;
}

export class Chats {
  private readonly core: SyncCore;
  private readonly presence: Presence;
  private readonly hooks: ChatsHooks;

  status: LoadStatus = 'loading';
  readonly records = new Map<ConversationId, ChatRecord>();
  /** Every username seen in a row or an event: system lines name people who have left. */
  readonly names = new Map<UserId, string>();
  /** Chat ids, most recent message first. */
  private order: ConversationId[] = [];
  private readonly unknownBuffer: ConversationEvent[] = [];
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
    this.moveToTop(conversation.id);
    this.views = null;
    this.core.changed();
    void this.refresh();
  }

  /** A full row from the server (a `conversation` frame, `GET /conversations/{id}`). */
  addRow(conversation: Conversation): void {
    if (!Array.isArray(conversation.members)) return void this.refresh();
    const known = this.records.has(conversation.id);
    this.merge(conversation, conversation.unread_count);
    if (!known) this.moveToTop(conversation.id);
    this.views = null;
    this.hooks.received(conversation.id, conversation.last_seq);
    this.drainUnknown();
    this.core.changed();
  }

  /** Drops a conversation this user is no longer in. */
  remove(id: ConversationId): void {
    if (!this.records.delete(id)) return;
    this.order = this.order.filter((other) => other !== id);
    this.views = null;
    this.hooks.dropped(id);
    this.core.changed();
  }

  /** An event of a conversation not in the list: kept until the list (or its row) has it. */
  bufferUnknown(event: ConversationEvent): void {
    if (this.unknownBuffer.length < SYNC_LIMITS.unknownBufferMax) this.unknownBuffer.push(event);
    void this.refresh();
  }

  /** Moves a chat to the top of the list (a newer message). */
  moveToTop(id: ConversationId): void {
    if (this.order[0] !== id) this.order = [id, ...this.order.filter((other) => other !== id)];
  }

  /**
   * A member, role or title event, or an edit, delete or reaction that may touch the
   * preview. Member events newer than the row are applied to it; older ones it reflects.
   */
  applyEvent(chat: ChatRecord, event: ConversationEvent): void {
    if (event.kind === 'member_added') this.names.set(event.user.id, event.user.username);
    if (event.seq > chat.lastSeq) {
      const conversation = applyToConversation(chat.conversation, event);
      if (conversation !== chat.conversation) {
        chat.conversation = conversation;
        this.views = null;
      }
    }
    if (
      chat.lastMessage &&
      (event.kind === 'edit' || event.kind === 'delete') &&
      event.target_seq === chat.lastMessage.seq
    ) {
      chat.lastMessage = applyToMessage(chat.lastMessage, event, event.sender_id, event.created_at);
      this.views = null;
    }
    if (event.kind === 'delete') {
      if (chat.extraUnread.delete(event.target_seq)) chat.extraMentions.delete(event.target_seq);
      this.views = null;
    }
    if (event.kind === 'edit' && chat.extraUnread.has(event.target_seq)) {
      if (event.mentions?.includes(this.core.me.id)) chat.extraMentions.add(event.target_seq);
      else chat.extraMentions.delete(event.target_seq);
      this.views = null;
    }
    if (event.seq > chat.lastSeq) {
      chat.lastSeq = event.seq;
      this.views = null;
    }
  }

  /** A member's read or delivered marker moved. */
  noteMarker(id: ConversationId, user: UserId, marker: 'read' | 'delivered', seq: number): void {
    const chat = this.records.get(id);
    if (!chat) return;
    const conversation = withMarker(chat.conversation, user, marker, seq);
    if (conversation === chat.conversation) return;
    chat.conversation = conversation;
    this.views = null;
    this.core.changed();
  }

  setMuted(id: ConversationId, muted: boolean): void {
    const chat = this.records.get(id);
    if (!chat || chat.muted === muted) return;
    chat.muted = muted;
    this.views = null;
    this.core.changed();
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
      const conversation = chat.conversation;
      const { title, peerId } = this.title(conversation);
      const myRole: Role | null = conversation.members.find((m) => m.id === this.core.me.id)?.role ?? null;
      views.push({
        id,
        kind: conversation.kind,
        title,
        members: conversation.members,
        peerId,
        lastMessage: chat.lastMessage,
        lastSeq: chat.lastSeq,
        unread: this.unreadOf(chat),
        unreadMentions: chat.baseMentions + chat.extraMentions.size,
        readSeq: chat.readSeq,
        muted: chat.muted,
        isAdmin: conversation.kind === 'group' && myRole === 'admin',
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
    for (const id of [...this.records.keys()]) {
      if (!seen.has(id)) {
        this.records.delete(id);
        this.hooks.dropped(id);
      }
    }
    this.order = list.map((c) => c.id);
    this.status = 'ready';
    this.views = null;
    for (const conversation of list) this.hooks.received(conversation.id, conversation.last_seq);
    this.drainUnknown();
    // The list may know of events the open timelines have not seen.
    this.hooks.catchUpBehind();
    this.core.changed();
    this.hooks.maybeMarkRead();
  }

  /** Events of conversations that were unknown until now: absorb them, notify of messages. */
  private drainUnknown(): void {
    const buffered = this.unknownBuffer.splice(0);
    const notified = new Set<string>();
    for (const event of buffered) {
      const chat = this.records.get(event.conversation_id);
      if (!chat) {
        this.unknownBuffer.push(event);
        continue;
      }
      this.hooks.absorb(event);
      // The row fetched since may already show this message as the newest: it is news all
      // the same, unless read (on another device) or heard of twice.
      const key = `${event.conversation_id}/${event.seq}`;
      if (event.kind === 'message' && event.sender_id !== this.core.me.id && event.seq > chat.readSeq && !notified.has(key)) {
        notified.add(key);
        this.hooks.emitIncoming(event.message);
      }
    }
  }

  /** `unread` is null when the source does not say (a conversation just created here). */
  private merge(conversation: Conversation, unread: number | null): void {
    for (const member of conversation.members) {
      this.presence.noteMember(member.id, member.online, member.last_seen ?? null);
      this.names.set(member.id, member.username);
    }
    const mentions = conversation.unread_mentions ?? 0;
    const serverRead = conversation.last_read_seq ?? ((unread ?? 0) === 0 ? conversation.last_seq : 0);
    const existing = this.records.get(conversation.id);
    if (!existing) {
      this.records.set(conversation.id, {
        conversation,
        lastMessage: conversation.last_message,
        lastSeq: conversation.last_seq,
        baseUnread: unread ?? 0,
        baseMentions: unread === null ? 0 : mentions,
        baseSeq: conversation.last_seq,
        extraUnread: new Set(),
        extraMentions: new Set(),
        readSeq: serverRead,
        readUnsent: false,
        muted: conversation.muted ?? false,
      });
      return;
    }
    // Markers only move forward: keep those that frames moved past the fetched row.
    let merged = conversation;
    for (const member of existing.conversation.members) {
      merged = withMarker(merged, member.id, 'read', member.last_read_seq);
      merged = withMarker(merged, member.id, 'delivered', member.last_delivered_seq);
    }
    existing.conversation = merged;
    existing.muted = conversation.muted ?? existing.muted;
    if (conversation.last_seq >= existing.lastSeq) {
      existing.lastSeq = conversation.last_seq;
      existing.lastMessage = conversation.last_message ?? existing.lastMessage;
    }
    if (unread === null) return;
    existing.readSeq = Math.max(existing.readSeq, serverRead);
    existing.baseSeq = conversation.last_seq;
    const readAll = existing.readSeq >= conversation.last_seq;
    existing.baseUnread = readAll ? 0 : unread;
    existing.baseMentions = readAll ? 0 : mentions;
    for (const seq of existing.extraUnread) {
      if (seq <= conversation.last_seq) {
        existing.extraUnread.delete(seq);
        existing.extraMentions.delete(seq);
      }
    }
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
