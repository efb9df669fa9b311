// An in-memory stand-in for the server's store and socket, following protocol v1's rules
// (a log of events with gap-free seqs per conversation, a repeated (sender, client_msg_id)
// stored once, messages in their current state, pages in ascending seq). Tests decide what
// reaches the client and when: frames are delivered by hand, so drops, duplicates and
// reordering are explicit.

import type {
  Change,
  ClientFrame,
  Conversation,
  ConversationEvent,
  ConversationId,
  ConversationMember,
  EventData,
  FileId,
  FileInfo,
  Message,
  Page,
  ServerFrame,
  User,
  UserId,
} from '../lib/api/types.ts';
import { messageEvent } from '../lib/api/types.ts';
import { applyToConversation, applyToMessage, excerptOf, requote } from '../lib/sync/apply.ts';
import type { SyncTransport } from '../lib/sync/engine.ts';

export class FakeServer {
  readonly conversations = new Map<ConversationId, Conversation>();
  /** Messages in their current state, ascending seq. */
  readonly messages = new Map<ConversationId, Message[]>();
  /** Every event, ascending seq (message events carry the message as it is now). */
  readonly events = new Map<ConversationId, ConversationEvent[]>();
  readonly readMarkers = new Map<string, number>();
  readonly muted = new Set<string>();
  /** Frames the client sent over the socket, in order. */
  readonly received: ClientFrame[] = [];
  /** Every page request, for assertions about catch-up. */
  readonly fetches: Array<{ conversation: ConversationId } & Page> = [];
  readonly eventFetches: Array<{ conversation: ConversationId; after_seq: number }> = [];
  readonly markReads: Array<{ conversation: ConversationId; seq: number }> = [];
  /** Files uploaded (`POST /files`) and not attached to a message yet. */
  readonly uploads = new Map<FileId, FileInfo>();
  /** False: the socket is down (send returns false). */
  socketUp = true;
  /** False: HTTP requests fail as if the network were gone. */
  httpUp = true;
  private nextId = 1;
  private clockMs = Date.UTC(2026, 10, 28, 12, 0, 0);

  readonly users: readonly User[];

  constructor(users: readonly User[]) {
    this.users = users;
  }

  addConversation(
    id: ConversationId,
    memberIds: string[],
    options: { kind?: 'direct' | 'group'; title?: string | null } = {},
  ): Conversation {
    const kind = options.kind ?? (memberIds.length === 2 ? 'direct' : 'group');
    const members: ConversationMember[] = memberIds.map((memberId, i) => ({
      ...this.user(memberId),
      online: false,
      last_seen: null,
      role: kind === 'group' && i === 0 ? 'admin' : 'member',
      last_delivered_seq: 0,
      last_read_seq: 0,
    }));
    const conversation: Conversation = {
      id,
      kind,
      title: options.title ?? null,
      members,
      last_message: null,
      last_seq: 0,
      unread_count: 0,
      unread_mentions: 0,
      last_read_seq: 0,
      muted: false,
    };
    this.conversations.set(id, conversation);
    this.messages.set(id, []);
    this.events.set(id, []);
    return conversation;
  }

  user(id: UserId): User {
    const user = this.users.find((u) => u.id === id);
    if (!user) throw new Error(`no user ${id}`);
    return { id: user.id, username: user.username };
  }

  /** Stores a message as the persister would; a repeated client_msg_id returns the first. */
  store(
    conversation: ConversationId,
    senderId: string,
    body: string,
    clientMsgId?: string,
    replyToSeq?: number,
    files: readonly FileInfo[] = [],
  ): Message {
    const list = this.messages.get(conversation);
    if (!list) throw new Error(`no conversation ${conversation}`);
    const cmid = clientMsgId ?? `srv-${this.nextId}`;
    const existing = list.find((m) => m.sender_id === senderId && m.client_msg_id === cmid);
    if (existing) return existing;
    this.clockMs += 1000;
    const message: Message = {
      id: `m${this.nextId++}`,
      conversation_id: conversation,
      seq: this.nextSeq(conversation),
      sender_id: senderId,
      client_msg_id: cmid,
      body,
      created_at: new Date(this.clockMs).toISOString(),
    };
    const mentions = this.conversations
      .get(conversation)!
      .members.filter((m) => body.includes(`@${m.username}`))
      .map((m) => m.id);
    if (mentions.length > 0) message.mentions = mentions;
    if (files.length > 0) message.files = [...files];
    if (replyToSeq !== undefined) {
      const original = list.find((m) => m.seq === replyToSeq);
      if (original) message.reply_to = { seq: original.seq, sender_id: original.sender_id, excerpt: excerptOf(original.body) };
    }
    list.push(message);
    this.events.get(conversation)!.push(messageEvent(message));
    return message;
  }

  /** An upload, as `POST /files` records it. */
  upload(name: string, size: number, contentType: string, image?: FileInfo['image']): FileInfo {
    const info: FileInfo = { id: `f${this.nextId++}`, name, content_type: contentType, size };
    if (image) info.image = image;
    this.uploads.set(info.id, info);
    return info;
  }

  /** Stores `n` messages from `senderId` and returns them. */
  storeMany(conversation: ConversationId, senderId: string, n: number, prefix = 'msg'): Message[] {
    return Array.from({ length: n }, (_, i) => this.store(conversation, senderId, `${prefix} ${i + 1}`));
  }

  /** Stores any other change as an event (no rules checked: tests say what happens). */
  record(conversation: ConversationId, senderId: string, change: Exclude<Change, { kind: 'message' }>, clientMsgId?: string): ConversationEvent {
    const log = this.events.get(conversation);
    if (!log) throw new Error(`no conversation ${conversation}`);
    const cmid = clientMsgId ?? `srv-${this.nextId++}`;
    const existing = log.find((e) => e.sender_id === senderId && e.client_msg_id === cmid);
    if (existing) return existing;
    this.clockMs += 1000;
    let data: EventData;
    switch (change.kind) {
      case 'member_added':
        data = { kind: 'member_added', user: this.user(change.user_id), role: 'member' };
        break;
      case 'member_left':
        data = { kind: 'member_left', user_id: senderId };
        break;
      default:
        data = change as EventData;
    }
    const event = {
      conversation_id: conversation,
      seq: this.nextSeq(conversation),
      sender_id: senderId,
      client_msg_id: cmid,
      created_at: new Date(this.clockMs).toISOString(),
      ...data,
    } as ConversationEvent;
    log.push(event);
    if (event.kind === 'edit' || event.kind === 'delete' || event.kind === 'reaction_added' || event.kind === 'reaction_removed') {
      const list = this.messages.get(conversation)!;
      const index = list.findIndex((m) => m.seq === event.target_seq);
      if (index >= 0) {
        const after = applyToMessage(list[index]!, event, senderId, event.created_at);
        list[index] = after;
        for (let i = index + 1; i < list.length; i++) list[i] = requote(list[i]!, after);
        for (const [i, e] of log.entries()) {
          if (e.kind === 'message') {
            const current = list.find((m) => m.seq === e.seq);
            if (current) log[i] = messageEvent(current);
          }
        }
      }
    } else {
      this.conversations.set(conversation, applyToConversation(this.conversations.get(conversation)!, event));
    }
    return event;
  }

  /** The chat list as `userId` would get it. */
  listFor(userId: string): Conversation[] {
    const rows: Conversation[] = [];
    for (const conversation of this.conversations.values()) {
      if (!conversation.members.some((m) => m.id === userId)) continue;
      rows.push(this.rowFor(conversation.id, userId));
    }
    return rows.sort((a, b) => (b.last_message?.created_at ?? '').localeCompare(a.last_message?.created_at ?? ''));
  }

  rowFor(id: ConversationId, userId: string): Conversation {
    const conversation = this.conversations.get(id)!;
    const list = this.messages.get(id) ?? [];
    const read = this.readMarkers.get(`${id}/${userId}`) ?? 0;
    const unread = list.filter((m) => m.seq > read && m.sender_id !== userId && !m.deleted);
    return {
      ...conversation,
      members: conversation.members.map((m) => {
        const memberRead = Math.max(m.last_read_seq, this.readMarkers.get(`${id}/${m.id}`) ?? 0);
        return { ...m, last_read_seq: memberRead, last_delivered_seq: Math.max(m.last_delivered_seq, memberRead) };
      }),
      last_message: list.at(-1) ?? null,
      last_seq: this.events.get(id)?.length ?? 0,
      unread_count: unread.length,
      unread_mentions: unread.filter((m) => m.mentions?.includes(userId)).length,
      last_read_seq: read,
      muted: this.muted.has(`${id}/${userId}`),
    };
  }

  page(conversation: ConversationId, page: Page): Message[] {
    const list = this.messages.get(conversation) ?? [];
    const limit = Math.min(page.limit, 200);
    if (page.after_seq !== undefined) return list.filter((m) => m.seq > page.after_seq!).slice(0, limit);
    if (page.before_seq !== undefined) return list.filter((m) => m.seq < page.before_seq!).slice(-limit);
    return list.slice(-limit);
  }

  eventsAfter(conversation: ConversationId, afterSeq: number, limit: number): ConversationEvent[] {
    return (this.events.get(conversation) ?? []).filter((e) => e.seq > afterSeq).slice(0, Math.min(limit, 200));
  }

  /**
   * Handles the `send` and `event` frames received so far the way the gateway and persister
   * would, returning what the server pushes to the sender: `accepted`, then the event.
   */
  processSends(senderId: string): ServerFrame[] {
    const out: ServerFrame[] = [];
    for (const frame of this.received.splice(0)) {
      if (frame.type === 'send') {
        out.push({ type: 'accepted', client_msg_id: frame.client_msg_id, conversation_id: frame.conversation_id });
        const message = this.store(frame.conversation_id, senderId, frame.body, frame.client_msg_id, frame.reply_to_seq);
        out.push({ type: 'message', message });
      } else if (frame.type === 'event') {
        const { type: _type, conversation_id, client_msg_id, ...change } = frame;
        out.push({ type: 'accepted', client_msg_id, conversation_id });
        if (change.kind === 'message') {
          const stored = this.messages.get(conversation_id)?.find((m) => m.sender_id === senderId && m.client_msg_id === client_msg_id);
          // An upload is attached to one message; a resend of that message is the same message.
          const files = stored ? (stored.files ?? []) : (change.files ?? []).map((id) => this.uploads.get(id));
          if (files.some((f) => f === undefined)) {
            out.push({ type: 'error', code: 'not_found', message: 'no such file', client_msg_id });
            continue;
          }
          for (const f of files) this.uploads.delete(f!.id);
          const message = this.store(conversation_id, senderId, change.body, client_msg_id, change.reply_to_seq, files as FileInfo[]);
          out.push({ type: 'message', message });
        } else {
          out.push({ type: 'event', event: this.record(conversation_id, senderId, change, client_msg_id) });
        }
      }
    }
    return out;
  }

  transportFor(userId: string): SyncTransport {
    const down = () => Promise.reject(new Error('network down'));
    return {
      listConversations: () => (this.httpUp ? Promise.resolve(this.listFor(userId)) : down()),
      fetchConversation: (id) => (this.httpUp ? Promise.resolve(this.rowFor(id, userId)) : down()),
      fetchMessages: (conversation, page) => {
        this.fetches.push({ conversation, ...page });
        return this.httpUp ? Promise.resolve(this.page(conversation, page)) : down();
      },
      fetchEvents: (conversation, afterSeq, limit) => {
        this.eventFetches.push({ conversation, after_seq: afterSeq });
        return this.httpUp ? Promise.resolve(this.eventsAfter(conversation, afterSeq, limit)) : down();
      },
      markRead: (conversation, seq) => {
        if (!this.httpUp) return down();
        this.markReads.push({ conversation, seq });
        const key = `${conversation}/${userId}`;
        this.readMarkers.set(key, Math.max(this.readMarkers.get(key) ?? 0, seq));
        return Promise.resolve();
      },
      setMuted: (conversation, muted) => {
        if (!this.httpUp) return down();
        if (muted) this.muted.add(`${conversation}/${userId}`);
        else this.muted.delete(`${conversation}/${userId}`);
        return Promise.resolve();
      },
      send: (frame) => {
        if (!this.socketUp) return false;
        this.received.push(frame);
        return true;
      },
    };
  }

  private nextSeq(conversation: ConversationId): number {
    return (this.events.get(conversation)?.length ?? 0) + 1;
  }
}

/** Lets every settled promise's callbacks run (the engine's fetches resolve immediately). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
  await new Promise((resolve) => setTimeout(resolve, 0));
}
