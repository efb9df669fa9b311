// The loaded conversations: each one's `Timeline` (a gap-free run by `seq`, see timeline.ts)
// and how it is filled: the newest page when opened, older pages on scroll, live messages,
// and catch-up with `after_seq` pages whenever a gap shows or the store may know more (after
// a reconnect, a new chat list, an `accepted` whose message did not come). Also the
// per-conversation view the UI renders, with this client's pending sends after the stored ones.

import type { ConversationId, Message, UserId } from '../api/types.ts';
import type { Chats } from './chats.ts';
import type { SyncCore } from './core.ts';
import { Timeline } from './timeline.ts';
import type { LoadStatus, PendingMessage, TimelineView } from './types.ts';
import { SYNC_LIMITS } from './types.ts';

export interface TimelineRecord {
  timeline: Timeline;
  status: LoadStatus;
  error: string | null;
  loadingOlder: boolean;
  catchUpRunning: boolean;
  catchUpAgain: boolean;
  catchUpFailures: number;
  othersRead: Map<UserId, number>;
}

/** What filling a timeline sets off elsewhere in the engine. */
export interface TimelinesHooks {
  /** Bookkeeping for one message (see the engine's `absorb`); true if it is news. */
  absorb(message: Message): boolean;
  maybeMarkRead(): void;
}

export class Timelines {
  private readonly core: SyncCore;
  private readonly chats: Chats;
  private readonly hooks: TimelinesHooks;
  readonly records = new Map<ConversationId, TimelineRecord>();

  constructor(core: SyncCore, chats: Chats, hooks: TimelinesHooks) {
    this.core = core;
    this.chats = chats;
    this.hooks = hooks;
  }

  /** A live message of a known conversation, after the engine's bookkeeping. */
  live(message: Message): void {
    const record = this.records.get(message.conversation_id);
    if (!record) return;
    if (record.status === 'ready') {
      if (record.timeline.insert(message) === 'gap') void this.catchUp(message.conversation_id);
    } else {
      record.timeline.buffer(message);
    }
    this.core.touchTimeline(message.conversation_id);
  }

  /** Opens a conversation: the newest page, then whatever arrived meanwhile. */
  async load(id: ConversationId): Promise<void> {
    const existing = this.records.get(id);
    const record: TimelineRecord = existing ?? {
      timeline: new Timeline(),
      status: 'loading',
      error: null,
      loadingOlder: false,
      catchUpRunning: false,
      catchUpAgain: false,
      catchUpFailures: 0,
      othersRead: new Map(),
    };
    record.status = 'loading';
    record.error = null;
    this.records.set(id, record);
    this.core.touchTimeline(id);
    this.core.changed();
    try {
      const page = await this.core.transport.fetchMessages(id, { limit: SYNC_LIMITS.pageMessages });
      if (this.core.disposed || this.records.get(id) !== record) return;
      for (const message of page) if (message.conversation_id === id) this.hooks.absorb(message);
      record.timeline.reset(page.filter((m) => m.conversation_id === id));
      record.status = 'ready';
      record.catchUpFailures = 0;
      this.core.touchTimeline(id);
      this.core.changed();
      const chat = this.chats.records.get(id);
      if (record.timeline.hasGap || (chat && chat.lastSeq > record.timeline.lastSeq)) {
        await this.catchUp(id);
      }
      this.hooks.maybeMarkRead();
    } catch (error) {
      if (this.core.disposed || this.records.get(id) !== record) return;
      record.status = 'error';
      record.error = error instanceof Error ? error.message : 'Could not load messages.';
      record.catchUpFailures += 1;
      // Online, try again with backoff; offline, the reconnect's resync reloads it.
      if (this.core.connection === 'online') {
        this.core.later(() => {
          if (this.records.get(id) === record && record.status === 'error') void this.load(id);
        }, this.core.retryDelay(record.catchUpFailures));
      }
      this.core.touchTimeline(id);
      this.core.changed();
    }
  }

  /** Loads the next older page of an open conversation (infinite scroll upward). */
  async loadOlder(id: ConversationId): Promise<void> {
    const record = this.records.get(id);
    if (!record || record.status !== 'ready' || record.loadingOlder || !record.timeline.hasOlder) return;
    record.loadingOlder = true;
    this.core.touchTimeline(id);
    this.core.changed();
    try {
      const page = await this.core.transport.fetchMessages(id, {
        before_seq: record.timeline.firstSeq,
        limit: SYNC_LIMITS.pageMessages,
      });
      if (this.records.get(id) !== record) return;
      record.timeline.prepend(page);
    } catch {
      // Scrolling up again retries.
    } finally {
      record.loadingOlder = false;
      this.core.touchTimeline(id);
      this.core.changed();
    }
  }

  /**
   * Fills the timeline from its last seq with forward pages until it has everything the
   * store has. One run per conversation at a time; a request during a run reruns it once.
   */
  async catchUp(id: ConversationId): Promise<void> {
    const record = this.records.get(id);
    if (!record) return;
    if (record.status === 'error') return this.load(id);
    if (record.status !== 'ready') return;
    if (record.catchUpRunning) {
      record.catchUpAgain = true;
      return;
    }
    record.catchUpRunning = true;
    try {
      let rounds = 0;
      for (;;) {
        record.catchUpAgain = false;
        const page = await this.core.transport.fetchMessages(id, {
          after_seq: record.timeline.lastSeq,
          limit: SYNC_LIMITS.catchUpPageMessages,
        });
        if (this.core.disposed || this.records.get(id) !== record) return;
        const sorted = page.filter((m) => m.conversation_id === id).sort((a, b) => a.seq - b.seq);
        for (const message of sorted) {
          this.hooks.absorb(message);
          record.timeline.insert(message);
        }
        this.core.touchTimeline(id);
        this.core.changed();
        rounds += 1;
        const full = page.length >= SYNC_LIMITS.catchUpPageMessages;
        if (!full && !record.catchUpAgain && !record.timeline.hasGap) break;
        if (!full && page.length === 0 && !record.catchUpAgain) {
          // The store does not have what the socket showed us yet: try again shortly.
          throw new Error('store behind the live stream');
        }
        if (rounds >= SYNC_LIMITS.catchUpRoundsMax) {
          // Far behind: show the newest page rather than paging through everything.
          const newest = await this.core.transport.fetchMessages(id, { limit: SYNC_LIMITS.pageMessages });
          if (this.core.disposed || this.records.get(id) !== record) return;
          for (const message of newest) if (message.conversation_id === id) this.hooks.absorb(message);
          record.timeline.reset(newest.filter((m) => m.conversation_id === id));
          this.core.touchTimeline(id);
          this.core.changed();
          if (!record.catchUpAgain) break;
          rounds = 0;
        }
      }
      record.catchUpFailures = 0;
    } catch {
      if (this.core.disposed || this.records.get(id) !== record) return;
      record.catchUpFailures += 1;
      // Offline, a reconnect's resync catches up; online, retry with backoff.
      if (this.core.connection === 'online') {
        this.core.later(() => void this.catchUp(id), this.core.retryDelay(record.catchUpFailures));
      }
    } finally {
      record.catchUpRunning = false;
    }
    this.hooks.maybeMarkRead();
  }

  /** Catches up the loaded timelines whose chat (from the list) has newer messages. */
  catchUpBehind(): void {
    for (const [id, record] of this.records) {
      const chat = this.chats.records.get(id);
      if (chat && record.status === 'ready' && chat.lastSeq > record.timeline.lastSeq) void this.catchUp(id);
    }
  }

  /** The conversation as the UI shows it: stored messages, then `pending` not yet stored. */
  view(id: ConversationId, pending: readonly PendingMessage[]): TimelineView {
    const cached = this.core.timelineViews.get(id);
    if (cached) return cached;
    const record = this.records.get(id);
    const messages: Message[] = [];
    const ownIds = new Set<string>();
    for (const message of record?.timeline.messages ?? []) {
      if (message.sender_id === this.core.me.id) {
        // One message per client_msg_id, even if a buggy server stored it twice.
        if (ownIds.has(message.client_msg_id)) continue;
        ownIds.add(message.client_msg_id);
      }
      messages.push(message);
    }
    let readByOthersSeq = 0;
    for (const seq of record?.othersRead.values() ?? []) readByOthersSeq = Math.max(readByOthersSeq, seq);
    const view: TimelineView = {
      status: record?.status ?? 'loading',
      error: record?.error ?? null,
      messages,
      pending: pending
        .filter((p) => !ownIds.has(p.clientMsgId))
        .map(({ conversationId, clientMsgId, body, createdAt, state, error }) => ({
          conversationId,
          clientMsgId,
          body,
          createdAt,
          state,
          error,
        })),
      hasOlder: record?.timeline.hasOlder ?? false,
      loadingOlder: record?.loadingOlder ?? false,
      readByOthersSeq,
    };
    this.core.timelineViews.set(id, view);
    return view;
  }
}
