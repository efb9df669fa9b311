// Who is online, as far as this client knows: `presence` frames, and the `online` flag of
// members that come with the chat list (with when they were last seen) and user searches.

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

  /** An `online` flag learned with a user search; never about me. */
  noteOnline(user: UserId, online: boolean): void {
    if (user === this.core.me.id) return;
    const previous = this.users.get(user);
    if (previous?.online === online) return;
    this.users.set(user, { online, lastSeen: previous?.lastSeen ?? null });
  }

  /** A member of a chat list row: presence and, when offline, when they were last seen. */
  noteMember(user: UserId, online: boolean, lastSeen: string | null): void {
    if (user === this.core.me.id) return;
    const previous = this.users.get(user);
    this.users.set(user, { online, lastSeen: online ? (previous?.lastSeen ?? null) : (lastSeen ?? previous?.lastSeen ?? null) });
  }

  view(): Record<UserId, PresenceView> {
    return Object.fromEntries(this.users);
  }
}
