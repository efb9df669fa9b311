// What every part of the sync engine shares: the injected IO (transport, clock, randomness),
// the connection and what is on screen, the timers (all cancelled on dispose), and change
// notification with the snapshot caches it invalidates. No concern's data lives here.

import type { ConversationId, User } from '../api/types.ts';
import type { Clock, ConnectionState, EngineState, SyncTransport, TimelineView } from './types.ts';
import { SYNC_LIMITS } from './types.ts';

export class SyncCore {
  readonly me: User;
  readonly transport: SyncTransport;
  readonly clock: Clock;
  private readonly random: () => number;

  connection: ConnectionState = 'connecting';
  activeId: ConversationId | null = null;
  visible = true;
  disposed = false;

  readonly listeners = new Set<() => void>();
  /** The last `getState`, until something changes. */
  snapshot: EngineState | null = null;
  /** Each conversation's last view, until `touchTimeline`. */
  readonly timelineViews = new Map<ConversationId, TimelineView>();
  private readonly timers = new Set<unknown>();

  constructor(me: User, transport: SyncTransport, clock: Clock, random: () => number) {
    this.me = me;
    this.transport = transport;
    this.clock = clock;
    this.random = random;
  }

  /** Whether the user sees this conversation now: its messages are read as they arrive. */
  isReading(id: ConversationId): boolean {
    return this.visible && this.activeId === id;
  }

  /** Invalidates one conversation's view and tells the subscribers. */
  touchTimeline(id: ConversationId): void {
    this.timelineViews.delete(id);
    this.changed();
  }

  changed(): void {
    if (this.disposed) return;
    this.snapshot = null;
    for (const listener of [...this.listeners]) listener();
  }

  later(fn: () => void, ms: number): unknown {
    const handle = this.clock.setTimeout(() => {
      this.timers.delete(handle);
      if (!this.disposed) fn();
    }, ms);
    this.timers.add(handle);
    return handle;
  }

  clearLater(handle: unknown): void {
    this.timers.delete(handle);
    this.clock.clearTimeout(handle);
  }

  retryDelay(attempt: number): number {
    const ceiling = Math.min(SYNC_LIMITS.retryMaxMs, SYNC_LIMITS.retryInitialMs * 2 ** Math.min(attempt, 20));
    return Math.round(ceiling / 2 + (this.random() * ceiling) / 2);
  }

  /** Stops everything: no timer fires and no subscriber hears of anything again. */
  dispose(): void {
    this.disposed = true;
    for (const handle of this.timers) this.clock.clearTimeout(handle);
    this.timers.clear();
    this.listeners.clear();
  }
}
