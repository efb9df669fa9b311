// The sync engine's public types: what it is given (`SyncTransport`, `Clock`, its limits)
// and the immutable views it hands out (`EngineState` and its parts). `engine.ts` exports
// them again; the app imports them from there. No logic beyond the system clock.

import type {
  ClientFrame,
  Conversation,
  ConversationEvent,
  ConversationId,
  ConversationKind,
  ConversationMember,
  FileInfo,
  Message,
  Page,
  User,
  UserId,
} from '../api/types.ts';
import { LIMITS } from '../api/types.ts';

export interface SyncTransport {
  listConversations(): Promise<Conversation[]>;
  fetchConversation(conversation: ConversationId): Promise<Conversation>;
  /** Backwards history: messages in their current state (they may skip seqs). */
  fetchMessages(conversation: ConversationId, page: Page): Promise<Message[]>;
  /** Catching up forwards: every event after `afterSeq`, ascending. */
  fetchEvents(conversation: ConversationId, afterSeq: number, limit: number): Promise<ConversationEvent[]>;
  markRead(conversation: ConversationId, seq: number): Promise<void>;
  setMuted(conversation: ConversationId, muted: boolean): Promise<void>;
  /** Sends on the live socket; false when there is none (the engine keeps it to resend). */
  send(frame: ClientFrame): boolean;
}

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as number),
};

export const SYNC_LIMITS = {
  /** Newest page loaded when a conversation is opened, and each older page. */
  pageMessages: 50,
  /** Messages up to a message jumped to, when a window is loaded around it. */
  aroundMessages: 25,
  /** A message jumped to at most this many seqs above the oldest held is paged in; farther, a window is loaded. */
  jumpPagesBackSeqsMax: 200,
  /** Forward page size when catching up (the server's maximum). */
  catchUpPageMessages: LIMITS.historyPageMax,
  /** Forward pages per catch-up before jumping to the newest page instead. */
  catchUpRoundsMax: 5,
  /** After `accepted`, how long to wait for the message before asking the store. */
  acceptedConfirmMs: 5_000,
  /** After a send without `accepted`, how long before sending it again (same client_msg_id). */
  sendConfirmMs: 10_000,
  /** Someone stops being shown as typing this long after their last `typing`. */
  typingShownMs: 6_000,
  /** At most one outgoing `typing` per conversation per this interval. */
  typingSendIntervalMs: 3_000,
  /** Backoff for resending a `rate_limited` send, and for retrying failed fetches. */
  retryInitialMs: 1_000,
  retryMaxMs: 30_000,
  /** Events of not-yet-known conversations kept until the chat list is refetched. */
  unknownBufferMax: 100,
  /** A burst of events sends one `delivered` per conversation, this long after the first. */
  deliveredCoalesceMs: 500,
  /** Notices (a refused change, say) kept at most, oldest dropped first. */
  noticesMax: 5,
} as const;

export type ConnectionState = 'connecting' | 'online' | 'offline';
export type LoadStatus = 'loading' | 'ready' | 'error';

export interface ChatView {
  id: ConversationId;
  kind: ConversationKind;
  /** The group's title, or the other member's username for a direct chat. */
  title: string;
  /** By username, with roles and how far each has received and read. */
  members: readonly ConversationMember[];
  /** For a direct chat, the other member. */
  peerId: UserId | null;
  lastMessage: Message | null;
  /** The newest event's seq. */
  lastSeq: number;
  unread: number;
  /** Unread messages that mention me. */
  unreadMentions: number;
  /** My read marker. */
  readSeq: number;
  /** Notifications only for mentions. */
  muted: boolean;
  /** A group whose admin I am (direct chats have no admins). */
  isAdmin: boolean;
}

export type PendingState = 'queued' | 'sending' | 'accepted' | 'failed';

export interface PendingMessage {
  conversationId: ConversationId;
  clientMsgId: string;
  body: string;
  /** The message this one replies to. */
  replyToSeq: number | null;
  /** Uploaded already; the message carries their ids. */
  files: readonly FileInfo[];
  createdAt: string;
  state: PendingState;
  error: string | null;
}

export interface TimelineView {
  status: LoadStatus;
  error: string | null;
  /** Stored messages, ascending seq, each once; with my edits, deletes and reactions that are
   * still on their way shown as done. */
  messages: readonly Message[];
  /** Member, role and title events since the oldest message shown (the system lines). */
  notices: readonly ConversationEvent[];
  /** Typed here, not yet stored: shown after `messages`, in the order they were typed. */
  pending: readonly PendingMessage[];
  hasOlder: boolean;
  loadingOlder: boolean;
  /** A window away from the newest messages is shown: newer ones are paged in on request. */
  hasNewer: boolean;
  loadingNewer: boolean;
}

/** Something the user should hear of that belongs to no screen: a refused change, say. */
export interface Notice {
  id: number;
  text: string;
}

export interface PresenceView {
  online: boolean;
  lastSeen: string | null;
}

export interface EngineState {
  me: User;
  connection: ConnectionState;
  chatsStatus: LoadStatus;
  chats: readonly ChatView[];
  timelines: Readonly<Record<ConversationId, TimelineView>>;
  presence: Readonly<Record<UserId, PresenceView>>;
  typing: Readonly<Record<ConversationId, readonly UserId[]>>;
  activeId: ConversationId | null;
  notices: readonly Notice[];
  /** Every username known, also of people no longer in a conversation. */
  names: Readonly<Record<UserId, string>>;
}

export interface IncomingMessage {
  message: Message;
  chat: ChatView;
  sender: string;
  /** The message mentions me (a muted chat notifies only these). */
  mentionsMe: boolean;
}

export interface EngineOptions {
  me: User;
  transport: SyncTransport;
  clock?: Clock;
  newClientMsgId?: () => string;
  random?: () => number;
}

/** Why `send` refused a body before it became pending. */
export class SendRejected extends Error {}
