// Changes asked for here and not stored yet: messages, and every other change (edit,
// delete, reactions, members, title, roles). Each is *pending* (queued → sending →
// accepted) until the server pushes its event back with a `seq`, then it is dropped here
// (the timeline has it). Sent again with the same client_msg_id: after every reconnect
// (once the conversation caught up), when neither `accepted` nor the event came in time,
// and with backoff after a refusal that is not its fault (`rate_limited`, `storage_full`,
// …). Other refusals mark a message failed (Retry / Discard) and drop any other change with
// a notice saying why: its effect was only ever shown as pending.

import type { Change, ConversationEvent, ConversationId, FileInfo, Message } from '../api/types.ts';
import { LIMITS, utf8Bytes } from '../api/types.ts';
import type { SyncCore } from './core.ts';
import type { PendingMessage } from './types.ts';
import { SendRejected, SYNC_LIMITS } from './types.ts';

/** Errors that are not the message's fault: it stays pending and is sent again later. */
const RETRYABLE_CODES: ReadonlySet<string> = new Set([
  'rate_limited',
  'unavailable',
  'storage_full',
  'internal',
]);

export interface PendingRecord extends PendingMessage {
  change: Change;
  attempts: number;
  retryTimer: unknown;
  /** Waits for `accepted` (then resends) or for the message (then asks the store). */
  confirmTimer: unknown;
}

/** What sending sets off elsewhere in the engine. */
export interface OutboxHooks {
  /** A message was queued in this conversation. */
  queued(id: ConversationId): void;
  catchUp(id: ConversationId): Promise<void>;
  /** The server refused a change that is not a message: it is dropped, say why. */
  refused(record: PendingRecord, reason: string): void;
}

export class Outbox {
  private readonly core: SyncCore;
  private readonly newClientMsgId: () => string;
  private readonly hooks: OutboxHooks;
  private readonly pending = new Map<ConversationId, PendingRecord[]>();
  private readonly pendingById = new Map<string, PendingRecord>();

  constructor(core: SyncCore, newClientMsgId: () => string, hooks: OutboxHooks) {
    this.core = core;
    this.newClientMsgId = newClientMsgId;
    this.hooks = hooks;
  }

  /**
   * Queues a message; it is pending until the server pushes it back with a seq. `files` are
   * uploads finished already (the message carries their ids); the body may then be empty.
   */
  send(conversationId: ConversationId, body: string, replyToSeq: number | null = null, files: readonly FileInfo[] = []): string {
    if (files.length > LIMITS.filesPerMessageMax) {
      throw new SendRejected(`A message carries at most ${LIMITS.filesPerMessageMax} files.`);
    }
    if (files.length === 0 || body !== '') checkBody(body);
    const change: Extract<Change, { kind: 'message' }> = { kind: 'message', body };
    if (replyToSeq !== null) change.reply_to_seq = replyToSeq;
    if (files.length > 0) change.files = files.map((f) => f.id);
    return this.enqueue(conversationId, change, files);
  }

  /** Queues any other change; pending until its event comes back. */
  change(conversationId: ConversationId, change: Change): string {
    if (change.kind === 'message' || change.kind === 'edit') checkBody(change.body);
    if (change.kind === 'title_changed') {
      const chars = Array.from(change.title.trim()).length;
      if (chars < 1 || chars > LIMITS.titleCharsMax) {
        throw new SendRejected(`A title has 1 to ${LIMITS.titleCharsMax} characters.`);
      }
    }
    return this.enqueue(conversationId, change);
  }

  private enqueue(conversationId: ConversationId, change: Change, files: readonly FileInfo[] = []): string {
    const record: PendingRecord = {
      conversationId,
      clientMsgId: this.newClientMsgId(),
      change,
      body: change.kind === 'message' ? change.body : '',
      replyToSeq: change.kind === 'message' ? (change.reply_to_seq ?? null) : null,
      files,
      createdAt: new Date(this.core.clock.now()).toISOString(),
      state: 'queued',
      error: null,
      attempts: 0,
      retryTimer: null,
      confirmTimer: null,
    };
    const list = this.pending.get(conversationId) ?? [];
    list.push(record);
    this.pending.set(conversationId, list);
    this.pendingById.set(record.clientMsgId, record);
    if (change.kind === 'message') this.hooks.queued(conversationId);
    this.trySend(record);
    this.core.touchTimeline(conversationId);
    this.core.changed();
    return record.clientMsgId;
  }

  /** Sends a failed message again, with the same client_msg_id. */
  retry(clientMsgId: string): void {
    const record = this.pendingById.get(clientMsgId);
    if (!record) return;
    record.state = 'queued';
    record.error = null;
    record.attempts = 0;
    this.trySend(record);
    this.core.touchTimeline(record.conversationId);
    this.core.changed();
  }

  discard(clientMsgId: string): void {
    const record = this.pendingById.get(clientMsgId);
    if (record) this.removePending(record);
  }

  /** The socket went away: whatever was in flight on it is sent again after the next `hello`. */
  requeueInFlight(): void {
    for (const p of this.pendingById.values()) if (p.state === 'sending') p.state = 'queued';
  }

  /** The conversations with pending messages. */
  conversations(): Iterable<ConversationId> {
    return this.pending.keys();
  }

  /** A conversation's pending changes of every kind, in the order they were asked for. */
  of(id: ConversationId): readonly PendingRecord[] {
    return this.pending.get(id) ?? [];
  }

  /** Drops everything pending in a conversation this user is no longer in. */
  forget(id: ConversationId): void {
    for (const record of [...(this.pending.get(id) ?? [])]) this.removePending(record, false);
  }

  /** Sends what is pending in a conversation (after it caught up on a reconnect). */
  flush(id: ConversationId): void {
    if (this.core.disposed) return;
    for (const record of this.pending.get(id) ?? []) {
      if (record.state !== 'failed' && record.retryTimer === null) this.trySend(record);
    }
    this.core.touchTimeline(id);
    this.core.changed();
  }

  /** One of my messages reached the store: it is no longer pending. */
  stored(message: Message): void {
    const record = this.pendingById.get(message.client_msg_id);
    if (record && record.conversationId === message.conversation_id) this.removePending(record, false);
  }

  /** One of my changes reached the store (its event came back): it is no longer pending. */
  applied(event: ConversationEvent): void {
    const record = this.pendingById.get(event.client_msg_id);
    if (record && record.conversationId === event.conversation_id) this.removePending(record, false);
  }

  accepted(clientMsgId: string): void {
    const record = this.pendingById.get(clientMsgId);
    if (!record) return;
    record.state = 'accepted';
    record.attempts = 0;
    // Durable now; if its `message` got lost on the way, the store has it.
    this.confirmLater(record, SYNC_LIMITS.acceptedConfirmMs, () => void this.hooks.catchUp(record.conversationId));
    this.core.touchTimeline(record.conversationId);
    this.core.changed();
  }

  serverError(
    code: string,
    message: string,
    clientMsgId: string | undefined,
    retryAfterMs: number | undefined,
  ): void {
    if (clientMsgId === undefined) {
      console.warn(`parlor: server error ${code}: ${message}`);
      return;
    }
    const record = this.pendingById.get(clientMsgId);
    if (!record) return;
    if (RETRYABLE_CODES.has(code)) {
      // Not this message's fault: keep it pending and send it again later.
      record.state = 'queued';
      record.attempts += 1;
      if (record.confirmTimer !== null) this.core.clearLater(record.confirmTimer);
      record.confirmTimer = null;
      if (record.retryTimer !== null) this.core.clearLater(record.retryTimer);
      record.retryTimer = this.core.later(() => {
        record.retryTimer = null;
        if (this.pendingById.get(clientMsgId) === record && record.state === 'queued') {
          this.trySend(record);
          this.core.touchTimeline(record.conversationId);
          this.core.changed();
        }
      }, Math.max(retryAfterMs ?? 0, this.core.retryDelay(record.attempts)));
    } else if (record.change.kind !== 'message') {
      this.removePending(record, false);
      this.hooks.refused(record, message);
    } else {
      record.state = 'failed';
      record.error = message;
      if (record.confirmTimer !== null) this.core.clearLater(record.confirmTimer);
      record.confirmTimer = null;
    }
    this.core.touchTimeline(record.conversationId);
    this.core.changed();
  }

  private trySend(record: PendingRecord): void {
    if (this.core.connection !== 'online') {
      record.state = 'queued';
      return;
    }
    // One frame for every kind of change, messages included (`send` is the older clients' form).
    const sent = this.core.transport.send({
      type: 'event',
      conversation_id: record.conversationId,
      client_msg_id: record.clientMsgId,
      ...record.change,
    });
    record.state = sent ? 'sending' : 'queued';
    if (sent) {
      // A frame can vanish with a socket that looks alive; the server stores a repeat once.
      this.confirmLater(record, SYNC_LIMITS.sendConfirmMs, () => {
        if (record.state === 'sending') {
          this.trySend(record);
          this.core.touchTimeline(record.conversationId);
          this.core.changed();
        }
      });
    }
  }

  private confirmLater(record: PendingRecord, ms: number, check: () => void): void {
    if (record.confirmTimer !== null) this.core.clearLater(record.confirmTimer);
    record.confirmTimer = this.core.later(() => {
      record.confirmTimer = null;
      if (this.pendingById.get(record.clientMsgId) === record) check();
    }, ms);
  }

  private removePending(record: PendingRecord, notify = true): void {
    if (record.retryTimer !== null) this.core.clearLater(record.retryTimer);
    if (record.confirmTimer !== null) this.core.clearLater(record.confirmTimer);
    this.pendingById.delete(record.clientMsgId);
    const list = (this.pending.get(record.conversationId) ?? []).filter((p) => p !== record);
    if (list.length > 0) this.pending.set(record.conversationId, list);
    else this.pending.delete(record.conversationId);
    this.core.touchTimeline(record.conversationId);
    if (notify) this.core.changed();
  }
}

/** The checks the server makes of a body, made first so the person hears of them at once. */
function checkBody(body: string): void {
  if (body.trim() === '') throw new SendRejected('A message cannot be empty.');
  if (body.includes('\0')) throw new SendRejected('A message cannot contain NUL characters.');
  if (utf8Bytes(body) > LIMITS.bodyBytesMax) {
    throw new SendRejected(`A message is at most ${LIMITS.bodyBytesMax / 1024} KiB.`);
  }
}
