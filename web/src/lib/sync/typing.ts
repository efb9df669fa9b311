// Typing indicators: who is typing where (shown for `typingShownMs` after their last
// `typing`, or until their message arrives), and this user's own `typing` frames, at most one
// per conversation per `typingSendIntervalMs`.

import type { ConversationId, UserId } from '../api/types.ts';
import type { SyncCore } from './core.ts';
import { SYNC_LIMITS } from './types.ts';

export class Typing {
  private readonly core: SyncCore;
  /** Per conversation, who is shown as typing, until when. */
  private readonly shown = new Map<ConversationId, Map<UserId, number>>();
  private readonly sentAt = new Map<ConversationId, number>();

  constructor(core: SyncCore) {
    this.core = core;
  }

  /** A `typing` frame. */
  someoneTyping(id: ConversationId, user: UserId): void {
    if (user === this.core.me.id) return;
    let users = this.shown.get(id);
    if (!users) {
      users = new Map();
      this.shown.set(id, users);
    }
    const until = this.core.clock.now() + SYNC_LIMITS.typingShownMs;
    users.set(user, until);
    this.core.later(() => {
      const current = this.shown.get(id);
      if (current && current.get(user) === until) {
        current.delete(user);
        this.core.changed();
      }
    }, SYNC_LIMITS.typingShownMs);
    this.core.changed();
  }

  /** A message from someone else: they are no longer typing it. */
  messageFrom(id: ConversationId, user: UserId): void {
    const typing = this.shown.get(id);
    if (typing?.delete(user)) this.core.changed();
  }

  /** Tells the others that this user is typing (at most once per interval). */
  typingIn(id: ConversationId): void {
    if (this.core.connection !== 'online') return;
    const now = this.core.clock.now();
    const last = this.sentAt.get(id);
    if (last !== undefined && now - last < SYNC_LIMITS.typingSendIntervalMs) return;
    if (this.core.transport.send({ type: 'typing', conversation_id: id })) {
      this.sentAt.set(id, now);
    }
  }

  /** This user sent a message: typing again is announced at once. */
  forgetSent(id: ConversationId): void {
    this.sentAt.delete(id);
  }

  view(): Record<ConversationId, UserId[]> {
    const typing: Record<ConversationId, UserId[]> = {};
    for (const [id, users] of this.shown) if (users.size > 0) typing[id] = [...users.keys()];
    return typing;
  }
}
