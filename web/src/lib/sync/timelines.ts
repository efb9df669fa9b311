// The loaded conversations: each one's `Timeline` (events applied gap-free by `seq`, see
// timeline.ts) and how it is filled: the newest page of messages when opened, older pages
// of messages on scroll, live events, and catch-up with `events?after_seq=` pages whenever
// a gap shows or the store may know more (after a reconnect, a new chat list, an `accepted`
// whose event did not come). Also the per-conversation view the UI renders: my pending
// edits, deletes and reactions shown as done, my pending messages after the stored ones.

import type { ConversationEvent, ConversationId, Message } from '../api/types.ts';
import { applyToMessage, requote } from './apply.ts';
import type { Chats } from './chats.ts';
import type { SyncCore } from './core.ts';
import type { PendingRecord } from './outbox.ts';
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
}

/** What filling a timeline sets off elsewhere in the engine. */
export interface TimelinesHooks {
  /** Bookkeeping for one event (see the engine's `absorb`); true if it is a new message. */
  absorb(event: ConversationEvent): boolean;
  /** Bookkeeping for a message of a history page (its current state, not an event). */
  absorbMessage(message: Message): void;
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

  /** A live event of a known conversation, after the engine's bookkeeping. */
  live(event: ConversationEvent): void {
    const record = this.records.get(event.conversation_id);
    if (!record) return;
    if (record.status === 'ready') {
      if (record.timeline.insert(event) === 'gap') void this.catchUp(event.conversation_id);
    } else {
      record.timeline.buffer(event);
    }
    this.core.touchTimeline(event.conversation_id);
  }

  /** Forgets a conversation this user is no longer in. */
  drop(id: ConversationId): void {
    if (this.records.delete(id)) this.core.touchTimeline(id);
  }

  /**
   * Pages older history in until everything from `seq` on is held (to jump to a replied-to
   * message or to the first unread one). Resolves with whether it is.
   */
  async loadUntil(id: ConversationId, seq: number): Promise<boolean> {
    for (;;) {
      const record = this.records.get(id);
      if (!record || record.status !== 'ready') return false;
      if (record.timeline.firstSeq <= seq || !record.timeline.hasOlder) return true;
      const before = record.timeline.firstSeq;
      await this.loadOlder(id);
      if (this.records.get(id) !== record || record.timeline.firstSeq === before) {
        return record.timeline.firstSeq <= seq || !record.timeline.hasOlder;
      }
    }
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
    };
    record.status = 'loading';
    record.error = null;
    this.records.set(id, record);
    this.core.touchTimeline(id);
    this.core.changed();
    try {
      const page = await this.core.transport.fetchMessages(id, { limit: SYNC_LIMITS.pageMessages });
      if (this.core.disposed || this.records.get(id) !== record) return;
      const own = page.filter((m) => m.conversation_id === id);
      for (const message of own) this.hooks.absorbMessage(message);
      record.timeline.reset(own, SYNC_LIMITS.pageMessages);
      record.status = 'ready';
      record.catchUpFailures = 0;
      void this.backfillNotices(id, record, record.timeline.firstSeq);
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

  /**
   * The system lines of history paged in as messages: one page of events from `fromSeq`
   * (bounded; a stretch with more events than a page shows the first page's lines).
   */
  private async backfillNotices(id: ConversationId, record: TimelineRecord, fromSeq: number): Promise<void> {
    try {
      const events = await this.core.transport.fetchEvents(id, Math.max(0, fromSeq - 1), SYNC_LIMITS.catchUpPageMessages);
      if (this.core.disposed || this.records.get(id) !== record) return;
      record.timeline.addNotices(events.filter((e) => e.conversation_id === id));
      this.core.touchTimeline(id);
      this.core.changed();
    } catch {
      // Only system lines are missing; the next open tries again.
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
      const added = record.timeline.prepend(
        page.filter((m) => m.conversation_id === id),
        SYNC_LIMITS.pageMessages,
      );
      if (added > 0) void this.backfillNotices(id, record, record.timeline.firstSeq);
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
        const page = await this.core.transport.fetchEvents(
          id,
          record.timeline.lastSeq,
          SYNC_LIMITS.catchUpPageMessages,
        );
        if (this.core.disposed || this.records.get(id) !== record) return;
        const sorted = page.filter((e) => e.conversation_id === id).sort((a, b) => a.seq - b.seq);
        for (const event of sorted) {
          this.hooks.absorb(event);
          record.timeline.insert(event);
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
          const own = newest.filter((m) => m.conversation_id === id);
          for (const message of own) this.hooks.absorbMessage(message);
          record.timeline.reset(own, SYNC_LIMITS.pageMessages);
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

  /**
   * The conversation as the UI shows it: stored messages with my pending changes applied,
   * then my pending messages not stored yet.
   */
  view(id: ConversationId, pending: readonly PendingRecord[]): TimelineView {
    const cached = this.core.timelineViews.get(id);
    if (cached) return cached;
    const record = this.records.get(id);
    const me = this.core.me.id;
    const messages: Message[] = [];
    const ownIds = new Set<string>();
    for (const message of record?.timeline.messages ?? []) {
      if (message.sender_id === me) {
        // One message per client_msg_id, even if a buggy server stored it twice.
        if (ownIds.has(message.client_msg_id)) continue;
        ownIds.add(message.client_msg_id);
      }
      messages.push(message);
    }
    const at = new Date(this.core.clock.now()).toISOString();
    for (const p of pending) {
      const change = p.change;
      if (change.kind !== 'edit' && change.kind !== 'delete' && change.kind !== 'reaction_added' && change.kind !== 'reaction_removed') {
        continue;
      }
      const index = messages.findIndex((m) => m.seq === change.target_seq);
      if (index < 0) continue;
      const after = applyToMessage(messages[index]!, change, me, at);
      messages[index] = after;
      if (change.kind === 'edit' || change.kind === 'delete') {
        for (let i = index + 1; i < messages.length; i++) messages[i] = requote(messages[i]!, after);
      }
    }
    const timeline = record?.timeline;
    const firstShown = timeline && timeline.hasOlder ? timeline.firstSeq : 0;
    const view: TimelineView = {
      status: record?.status ?? 'loading',
      error: record?.error ?? null,
      messages,
      notices: (timeline?.notices ?? []).filter((n) => n.seq >= firstShown),
      pending: pending
        .filter((p) => p.change.kind === 'message' && !ownIds.has(p.clientMsgId))
        .map(({ conversationId, clientMsgId, body, replyToSeq, createdAt, state, error }): PendingMessage => ({
          conversationId,
          clientMsgId,
          body,
          replyToSeq,
          createdAt,
          state,
          error,
        })),
      hasOlder: timeline?.hasOlder ?? false,
      loadingOlder: record?.loadingOlder ?? false,
    };
    this.core.timelineViews.set(id, view);
    return view;
  }
}
