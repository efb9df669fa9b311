// Read markers. Mine: moved forward (never back) to what the open, visible conversation
// shows, or to my own message; sent to the server, and sent again after a reconnect until it
// confirms. Others': the highest seq each member is known to have read, per loaded timeline.

import type { ConversationId, UserId } from '../api/types.ts';
import type { ChatRecord, Chats } from './chats.ts';
import type { SyncCore } from './core.ts';
import type { Timelines } from './timelines.ts';

export class Receipts {
  private readonly core: SyncCore;
  private readonly chats: Chats;
  private readonly timelines: Timelines;

  constructor(core: SyncCore, chats: Chats, timelines: Timelines) {
    this.core = core;
    this.chats = chats;
    this.timelines = timelines;
  }

  /** Moves my read marker (locally) and the unread count with it. */
  readUpTo(chat: ChatRecord, seq: number): void {
    if (seq > chat.readSeq) chat.readSeq = seq;
    for (const s of chat.extraUnread) if (s <= seq) chat.extraUnread.delete(s);
    if (seq >= chat.baseSeq) chat.baseUnread = 0;
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

  /** After a reconnect: the read markers the server may not have received. */
  resendUnsent(): void {
    for (const [id, chat] of this.chats.records) if (chat.readUnsent) this.sendRead(id, chat);
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
      return;
    }
    const record = this.timelines.records.get(id);
    if (!record) return;
    const previous = record.othersRead.get(user) ?? 0;
    if (seq <= previous) return;
    record.othersRead.set(user, seq);
    this.core.touchTimeline(id);
    this.core.changed();
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
