// Who is online, as far as this client knows: `presence` frames, and the `online` flag of
// members that come with the chat list and user searches (which keeps a known "last seen").

import type { UserId } from '../api/types.ts';
import type { SyncCore } from './core.ts';
import type { PresenceView } from './types.ts';

export class Presence {
  private readonly core: SyncCore;
  private readonly users = new Map<UserId, PresenceView>();

  constructor(core: SyncCore) {
    this.core = core;
  }

  /** A `presence` frame. */
  update(user: UserId, online: boolean, lastSeen: string | null): void {
    this.users.set(user, { online, lastSeen });
  }

  /** An `online` flag learned with a member; never about me. */
  noteOnline(user: UserId, online: boolean): void {
    if (user === this.core.me.id) return;
    const previous = this.users.get(user);
    if (previous?.online === online) return;
    this.users.set(user, { online, lastSeen: previous?.lastSeen ?? null });
  }

  view(): Record<UserId, PresenceView> {
    return Object.fromEntries(this.users);
  }
}
