// Read and delivered markers. Mine: the read marker moves forward (never back) to what the
// open, visible conversation shows, or to my own message, and is sent until the server
// confirms it; the delivered marker follows the newest seq that reached this client, sent
// as a `delivered` frame at most once per `deliveredCoalesceMs` per conversation (a burst
// sends its newest). Others': each member's markers live on the chat list row (so "Seen"
// survives a reload) and move forward with `read` and `delivered` frames.

import type { ConversationId, UserId } from '../api/types.ts';
import type { ChatRecord, Chats } from './chats.ts';
import type { SyncCore } from './core.ts';
import type { Timelines } from './timelines.ts';
import { SYNC_LIMITS } from './types.ts';

export class Receipts {
  private readonly core: SyncCore;
  private readonly chats: Chats;
  private readonly timelines: Timelines;
  /** Per conversation, the newest seq received and not yet announced as delivered. */
  private readonly deliveredDue = new Map<ConversationId, number>();
  /** Per conversation, the highest delivered seq sent (or known to the server). */
  private readonly deliveredSent = new Map<ConversationId, number>();
  private readonly deliveredTimers = new Map<ConversationId, unknown>();

  constructor(core: SyncCore, chats: Chats, timelines: Timelines) {
    this.core = core;
    this.chats = chats;
    this.timelines = timelines;
  }

  /** Moves my read marker (locally) and the unread counts with it. */
  readUpTo(chat: ChatRecord, seq: number): void {
    if (seq > chat.readSeq) chat.readSeq = seq;
    for (const s of chat.extraUnread) {
      if (s <= seq) {
        chat.extraUnread.delete(s);
        chat.extraMentions.delete(s);
      }
    }
    if (seq >= chat.baseSeq) {
      chat.baseUnread = 0;
      chat.baseMentions = 0;
    }
    this.chats.invalidate();
  }

  /** Marks the conversation on screen read up to what is shown, if that is news. */
  maybeMarkRead(): void {
    const id = this.core.activeId;
    if (id === null || !this.core.visible || this.core.disposed) return;
    const chat = this.chats.records.get(id);
    const record = this.timelines.records.get(id);
    if (!chat || !record || record.status !== 'ready') return;
    const seq = record.timeline.lastSeq;
    const hasUnread = this.chats.unreadOf(chat) > 0;
    if (seq <= chat.readSeq && !hasUnread) return;
    this.readUpTo(chat, seq);
    chat.readUnsent = true;
    this.core.changed();
    this.sendRead(id, chat);
  }

  /** After a reconnect: the markers the server may not have received. */
  resendUnsent(): void {
    for (const [id, chat] of this.chats.records) if (chat.readUnsent) this.sendRead(id, chat);
    for (const id of this.deliveredDue.keys()) this.scheduleDelivered(id);
  }

  /** Events up to `seq` of a conversation reached this client (live, by catch-up, in a list). */
  received(id: ConversationId, seq: number): void {
    const chat = this.chats.records.get(id);
    if (!chat) return;
    const mine = chat.conversation.members.find((m) => m.id === this.core.me.id);
    // Reading moves the delivered marker too: what is read needs no `delivered`.
    const known = Math.max(this.deliveredSent.get(id) ?? 0, mine?.last_delivered_seq ?? 0, chat.readSeq);
    if (seq <= known || seq <= (this.deliveredDue.get(id) ?? 0)) return;
    this.deliveredDue.set(id, seq);
    this.scheduleDelivered(id);
  }

  /** A `read` frame: mine from another device, or another member's. */
  someoneRead(id: ConversationId, user: UserId, seq: number): void {
    const chat = this.chats.records.get(id);
    if (user === this.core.me.id) {
      if (chat) {
        this.readUpTo(chat, seq);
        if (seq >= chat.readSeq) chat.readUnsent = false;
        this.core.changed();
      }
    }
    this.chats.noteMarker(id, user, 'read', seq);
  }

  /** A `delivered` frame. */
  someoneReceived(id: ConversationId, user: UserId, seq: number): void {
    this.chats.noteMarker(id, user, 'delivered', seq);
  }

  /** A conversation left the list: nothing more to announce for it. */
  forget(id: ConversationId): void {
    this.deliveredDue.delete(id);
    this.deliveredSent.delete(id);
    const timer = this.deliveredTimers.get(id);
    if (timer !== undefined) this.core.clearLater(timer);
    this.deliveredTimers.delete(id);
  }

  private scheduleDelivered(id: ConversationId): void {
    if (this.deliveredTimers.has(id)) return;
    const timer = this.core.later(() => {
      this.deliveredTimers.delete(id);
      const seq = this.deliveredDue.get(id);
      if (seq === undefined) return;
      if (seq <= (this.chats.records.get(id)?.readSeq ?? 0)) {
        // Read meanwhile: the read marker moved the delivered marker with it.
        this.deliveredDue.delete(id);
        return;
      }
      if (this.core.connection !== 'online') return; // resent on `hello`
      if (this.core.transport.send({ type: 'delivered', conversation_id: id, seq })) {
        this.deliveredDue.delete(id);
        this.deliveredSent.set(id, Math.max(this.deliveredSent.get(id) ?? 0, seq));
      }
    }, SYNC_LIMITS.deliveredCoalesceMs);
    this.deliveredTimers.set(id, timer);
  }

  private sendRead(id: ConversationId, chat: ChatRecord): void {
    const seq = chat.readSeq;
    if (seq < 1) {
      chat.readUnsent = false;
      return;
    }
    // On failure `readUnsent` stays set and the next resync sends it again.
    this.core.transport.markRead(id, seq).then(
      () => {
        if (chat.readSeq <= seq) chat.readUnsent = false;
      },
      () => {},
    );
  }
}
