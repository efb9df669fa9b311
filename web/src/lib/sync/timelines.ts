// The loaded conversations: each one's `Timeline` (events applied gap-free by `seq`, see
// timeline.ts) and how it is filled: the newest page of messages when opened, older pages
// of messages on scroll, live events, and catch-up with `events?after_seq=` pages whenever
// a gap shows or the store may know more (after a reconnect, a new chat list, an `accepted`
// whose event did not come). Also the per-conversation view the UI renders: my pending
// edits, deletes and reactions shown as done, my pending messages after the stored ones.
//
// Jumping to a message far from what is held (a search hit, an old reply's original) loads
// a window around it instead of paging everything in between: the messages up to it, as a
// reset does, then events forward from there, gap-free like any catch-up. A window that
// does not reach the newest event is *detached*: live events are kept aside (`ahead`)
// instead of setting off a catch-up, the reader pages forward with `loadNewer` (the same
// `events?after_seq=` pages), and once a page comes back short it is attached again. The
// invariants of Timeline hold throughout: a detached timeline is one that is behind.

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
  /** Holds a window that does not reach the newest events (see above). */
  detached: boolean;
  loadingNewer: boolean;
  /** Bumped by every load and reset: an answer to an older one is dropped. */
  generation: number;
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
      const result = record.timeline.insert(event);
      if (record.detached) this.attachIfCurrent(event.conversation_id, record);
      else if (result === 'gap') void this.catchUp(event.conversation_id);
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
    const record = this.startLoading(id);
    const generation = record.generation;
    try {
      const page = await this.core.transport.fetchMessages(id, { limit: SYNC_LIMITS.pageMessages });
      if (this.stale(id, record, generation)) return;
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
      if (this.stale(id, record, generation)) return;
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
    const generation = record.generation;
    this.core.touchTimeline(id);
    this.core.changed();
    try {
      const page = await this.core.transport.fetchMessages(id, {
        before_seq: record.timeline.firstSeq,
        limit: SYNC_LIMITS.pageMessages,
      });
      // Reset meanwhile (reopened, or a jump): this page may not border what is held now.
      if (this.stale(id, record, generation)) return;
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
   * Makes the message at `seq` held, to show it in its context: at once if it is, by paging
   * older history in if it is a few pages up, else by loading a window around it. Resolves
   * with whether it is held (false if the load failed or another one replaced it).
   */
  async jumpTo(id: ConversationId, seq: number): Promise<boolean> {
    const record = this.records.get(id);
    if (record?.status === 'ready') {
      const timeline = record.timeline;
      if (seq >= timeline.firstSeq && seq <= timeline.lastSeq) return true;
      if (seq < timeline.firstSeq && (timeline.firstSeq - seq <= SYNC_LIMITS.jumpPagesBackSeqsMax || !timeline.hasOlder)) {
        return this.loadUntil(id, seq);
      }
    }
    return this.loadAround(id, seq);
  }

  /**
   * Replaces the timeline with a window around `seq`: the messages up to it (in their
   * current state, as a reset takes them), then one page of events after it. Attached if
   * that page reaches the newest event, detached otherwise.
   */
  private async loadAround(id: ConversationId, seq: number): Promise<boolean> {
    const record = this.startLoading(id);
    // Away from the newest until the forward page says otherwise: meanwhile the view must not
    // follow the bottom as it does for the newest messages.
    record.detached = true;
    const generation = record.generation;
    try {
      const before = await this.core.transport.fetchMessages(id, { before_seq: seq + 1, limit: SYNC_LIMITS.aroundMessages });
      if (this.stale(id, record, generation)) return false;
      const own = before.filter((m) => m.conversation_id === id);
      for (const message of own) this.hooks.absorbMessage(message);
      record.timeline.reset(own, SYNC_LIMITS.aroundMessages);
      const full = await this.pageForward(id, record, generation);
      if (full === null) return false;
      record.status = 'ready';
      record.catchUpFailures = 0;
      record.detached = full;
      void this.backfillNotices(id, record, record.timeline.firstSeq);
      this.core.touchTimeline(id);
      this.core.changed();
      if (!full && record.timeline.hasGap) void this.catchUp(id);
      this.hooks.maybeMarkRead();
      return true;
    } catch (error) {
      if (this.stale(id, record, generation)) return false;
      // The reader asked for this place: say it failed rather than retrying behind their back.
      record.status = 'error';
      record.error = error instanceof Error ? error.message : 'Could not load messages.';
      record.catchUpFailures += 1;
      this.core.touchTimeline(id);
      this.core.changed();
      return false;
    }
  }

  /** The next page of a detached window, forward; attaches it when the page is the last. */
  async loadNewer(id: ConversationId): Promise<void> {
    const record = this.records.get(id);
    if (!record || record.status !== 'ready' || !record.detached || record.loadingNewer) return;
    record.loadingNewer = true;
    const generation = record.generation;
    this.core.touchTimeline(id);
    try {
      const full = await this.pageForward(id, record, generation);
      if (full === null) return;
      if (!full) {
        record.detached = false;
        if (record.timeline.hasGap) void this.catchUp(id);
      }
      this.hooks.maybeMarkRead();
    } catch {
      // Scrolling down again retries.
    } finally {
      record.loadingNewer = false;
      this.core.touchTimeline(id);
    }
  }

  /** Back to the newest messages: a detached window is replaced by the newest page. */
  async jumpToLatest(id: ConversationId): Promise<void> {
    const record = this.records.get(id);
    if (record?.detached) await this.load(id);
  }

  isDetached(id: ConversationId): boolean {
    return this.records.get(id)?.detached ?? false;
  }

  /**
   * One page of events after the timeline's last seq, applied in order. Resolves with
   * whether the page was full (the store may have more), or null if the record was replaced.
   */
  private async pageForward(id: ConversationId, record: TimelineRecord, generation: number): Promise<boolean | null> {
    const page = await this.core.transport.fetchEvents(id, record.timeline.lastSeq, SYNC_LIMITS.catchUpPageMessages);
    if (this.stale(id, record, generation)) return null;
    const sorted = page.filter((e) => e.conversation_id === id).sort((a, b) => a.seq - b.seq);
    for (const event of sorted) {
      this.hooks.absorb(event);
      record.timeline.insert(event);
    }
    this.core.touchTimeline(id);
    return page.length >= SYNC_LIMITS.catchUpPageMessages;
  }

  /** A live event may have brought a detached window up to the newest: then it follows live again. */
  private attachIfCurrent(id: ConversationId, record: TimelineRecord): void {
    const chat = this.chats.records.get(id);
    if (!record.timeline.hasGap && chat && record.timeline.lastSeq >= chat.lastSeq) record.detached = false;
  }

  /** A record in `loading` for a new load (made if there is none), superseding any load in flight. */
  private startLoading(id: ConversationId): TimelineRecord {
    const record: TimelineRecord = this.records.get(id) ?? {
      timeline: new Timeline(),
      status: 'loading',
      error: null,
      loadingOlder: false,
      catchUpRunning: false,
      catchUpAgain: false,
      catchUpFailures: 0,
      detached: false,
      loadingNewer: false,
      generation: 0,
    };
    record.generation += 1;
    record.status = 'loading';
    record.error = null;
    record.detached = false;
    this.records.set(id, record);
    this.core.touchTimeline(id);
    return record;
  }

  /** The engine stopped, the record was dropped, or another load replaced this one. */
  private stale(id: ConversationId, record: TimelineRecord, generation: number): boolean {
    return this.core.disposed || this.records.get(id) !== record || record.generation !== generation;
  }

  /**
   * Fills the timeline from its last seq with forward pages until it has everything the
   * store has. One run per conversation at a time; a request during a run reruns it once.
   */
  async catchUp(id: ConversationId): Promise<void> {
    const record = this.records.get(id);
    if (!record) return;
    if (record.status === 'error') return this.load(id);
    // A detached window pages forward when the reader asks (`loadNewer`), not by itself.
    if (record.status !== 'ready' || record.detached) return;
    if (record.catchUpRunning) {
      record.catchUpAgain = true;
      return;
    }
    record.catchUpRunning = true;
    let generation = record.generation;
    try {
      let rounds = 0;
      for (;;) {
        record.catchUpAgain = false;
        const page = await this.core.transport.fetchEvents(
          id,
          record.timeline.lastSeq,
          SYNC_LIMITS.catchUpPageMessages,
        );
        // Replaced meanwhile (a jump loaded a window, say): that load fills it its own way.
        if (this.stale(id, record, generation)) return;
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
          if (this.stale(id, record, generation)) return;
          // A page of older history in flight would not border this one.
          record.generation += 1;
          generation = record.generation;
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
      if (chat && record.status === 'ready' && !record.detached && chat.lastSeq > record.timeline.lastSeq) void this.catchUp(id);
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
        .map(({ conversationId, clientMsgId, body, replyToSeq, files, createdAt, state, error }): PendingMessage => ({
          conversationId,
          clientMsgId,
          body,
          replyToSeq,
          files,
          createdAt,
          state,
          error,
        })),
      hasOlder: timeline?.hasOlder ?? false,
      loadingOlder: record?.loadingOlder ?? false,
      hasNewer: record?.detached ?? false,
      loadingNewer: record?.loadingNewer ?? false,
    };
    this.core.timelineViews.set(id, view);
    return view;
  }
}
