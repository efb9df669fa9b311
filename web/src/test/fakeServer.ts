// An in-memory stand-in for the server's store and socket, following protocol v1's rules
// (gap-free seq per conversation, a repeated (sender, client_msg_id) stored once, pages in
// ascending seq). Tests decide what reaches the client and when: frames are delivered by
// hand, so drops, duplicates and reordering are explicit.

import type {
  ClientFrame,
  Conversation,
  ConversationId,
  Member,
  Message,
  Page,
  ServerFrame,
  User,
} from '../lib/api/types.ts';
import type { SyncTransport } from '../lib/sync/engine.ts';

export class FakeServer {
  readonly conversations = new Map<ConversationId, Conversation>();
  readonly messages = new Map<ConversationId, Message[]>();
  readonly readMarkers = new Map<string, number>();
  /** Frames the client sent over the socket, in order. */
  readonly received: ClientFrame[] = [];
  /** Every page request, for assertions about catch-up. */
  readonly fetches: Array<{ conversation: ConversationId } & Page> = [];
  readonly markReads: Array<{ conversation: ConversationId; seq: number }> = [];
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
    const members: Member[] = memberIds.map((memberId) => {
      const user = this.users.find((u) => u.id === memberId);
      if (!user) throw new Error(`no user ${memberId}`);
      return { ...user, online: false };
    });
    const conversation: Conversation = {
      id,
      kind: options.kind ?? (memberIds.length === 2 ? 'direct' : 'group'),
      title: options.title ?? null,
      members,
      last_message: null,
      last_seq: 0,
      unread_count: 0,
    };
    this.conversations.set(id, conversation);
    this.messages.set(id, []);
    return conversation;
  }

  /** Stores a message as the persister would; a repeated client_msg_id returns the first. */
  store(conversation: ConversationId, senderId: string, body: string, clientMsgId?: string): Message {
    const list = this.messages.get(conversation);
    if (!list) throw new Error(`no conversation ${conversation}`);
    const cmid = clientMsgId ?? `srv-${this.nextId}`;
    const existing = list.find((m) => m.sender_id === senderId && m.client_msg_id === cmid);
    if (existing) return existing;
    this.clockMs += 1000;
    const message: Message = {
      id: `m${this.nextId++}`,
      conversation_id: conversation,
      seq: list.length + 1,
      sender_id: senderId,
      client_msg_id: cmid,
      body,
      created_at: new Date(this.clockMs).toISOString(),
    };
    list.push(message);
    return message;
  }

  /** Stores `n` messages from `senderId` and returns them. */
  storeMany(conversation: ConversationId, senderId: string, n: number, prefix = 'msg'): Message[] {
    return Array.from({ length: n }, (_, i) => this.store(conversation, senderId, `${prefix} ${i + 1}`));
  }

  /** The chat list as `userId` would get it. */
  listFor(userId: string): Conversation[] {
    const rows: Conversation[] = [];
    for (const conversation of this.conversations.values()) {
      if (!conversation.members.some((m) => m.id === userId)) continue;
      const list = this.messages.get(conversation.id) ?? [];
      const read = this.readMarkers.get(`${conversation.id}/${userId}`) ?? 0;
      rows.push({
        ...conversation,
        last_message: list.at(-1) ?? null,
        last_seq: list.length,
        unread_count: list.filter((m) => m.seq > read && m.sender_id !== userId).length,
      });
    }
    return rows.sort((a, b) => (b.last_message?.created_at ?? '').localeCompare(a.last_message?.created_at ?? ''));
  }

  page(conversation: ConversationId, page: Page): Message[] {
    const list = this.messages.get(conversation) ?? [];
    const limit = Math.min(page.limit, 200);
    if (page.after_seq !== undefined) return list.filter((m) => m.seq > page.after_seq!).slice(0, limit);
    if (page.before_seq !== undefined) return list.filter((m) => m.seq < page.before_seq!).slice(-limit);
    return list.slice(-limit);
  }

  /**
   * Handles the `send` frames received so far the way the gateway and persister would,
   * returning what the server pushes to the sender: `accepted`, then `message`.
   */
  processSends(senderId: string): ServerFrame[] {
    const out: ServerFrame[] = [];
    for (const frame of this.received.splice(0)) {
      if (frame.type !== 'send') continue;
      out.push({ type: 'accepted', client_msg_id: frame.client_msg_id, conversation_id: frame.conversation_id });
      const message = this.store(frame.conversation_id, senderId, frame.body, frame.client_msg_id);
      out.push({ type: 'message', message });
    }
    return out;
  }

  transportFor(userId: string): SyncTransport {
    const down = () => Promise.reject(new Error('network down'));
    return {
      listConversations: () => (this.httpUp ? Promise.resolve(this.listFor(userId)) : down()),
      fetchMessages: (conversation, page) => {
        this.fetches.push({ conversation, ...page });
        return this.httpUp ? Promise.resolve(this.page(conversation, page)) : down();
      },
      markRead: (conversation, seq) => {
        if (!this.httpUp) return down();
        this.markReads.push({ conversation, seq });
        const key = `${conversation}/${userId}`;
        this.readMarkers.set(key, Math.max(this.readMarkers.get(key) ?? 0, seq));
        return Promise.resolve();
      },
      send: (frame) => {
        if (!this.socketUp) return false;
        this.received.push(frame);
        return true;
      },
    };
  }
}

/** Lets every settled promise's callbacks run (the engine's fetches resolve immediately). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
  await new Promise((resolve) => setTimeout(resolve, 0));
}
