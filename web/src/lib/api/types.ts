// Protocol v1 as the web client sees it. These mirror `parlor_core::protocol` one to one;
// IDs are strings, times RFC 3339 UTC, `seq` is gap-free per conversation starting at 1.

export type UserId = string;
export type ConversationId = string;
export type MessageId = string;
export type FileId = string;

/** An image's size in pixels, as displayed. */
export interface ImageSize {
  width: number;
  height: number;
}

/** A file as a message shows it (`parlor_core::files::FileInfo`). */
export interface FileInfo {
  id: FileId;
  /** What the uploader called it, cleaned of paths and control characters. */
  name: string;
  /** Sniffed from the bytes by the server, never taken from the client. */
  content_type: string;
  /** In bytes. */
  size: number;
  /** Only for images shown inline (PNG, JPEG, GIF, WebP): such a file has a thumbnail. */
  image?: ImageSize;
}

export interface User {
  id: UserId;
  username: string;
}

/** A user with presence, as `GET /users` and conversation members carry it. */
export interface Member extends User {
  online: boolean;
}

export type Role = 'admin' | 'member';

/** What a reply shows of the message it answers, as that message is now. */
export interface ReplyPreview {
  seq: number;
  sender_id: UserId;
  /** At most 120 characters of the original's current body; empty once deleted. */
  excerpt: string;
  deleted?: boolean;
}

/** One emoji on a message and who reacted with it, in the order they did. */
export interface Reaction {
  emoji: string;
  user_ids: UserId[];
}

/**
 * A stored message in its current state. `seq` is gap-free across every kind of event, so
 * messages alone may skip seqs. The optional fields are absent when empty.
 */
export interface Message {
  id: MessageId;
  conversation_id: ConversationId;
  seq: number;
  sender_id: UserId;
  client_msg_id: string;
  /** Empty once deleted. */
  body: string;
  created_at: string;
  reply_to?: ReplyPreview;
  /** Members the body mentions, resolved by the server. */
  mentions?: UserId[];
  /** By first reaction, oldest first. */
  reactions?: Reaction[];
  edited_at?: string;
  deleted?: boolean;
  /** The files it carries, in the order they were attached; none once deleted. */
  files?: FileInfo[];
}

export type ConversationKind = 'direct' | 'group';

/** A member as a chat list row shows them: presence, role, how far they received and read. */
export interface ConversationMember extends Member {
  /** When they were last connected; null while online or if never. */
  last_seen?: string | null;
  role: Role;
  last_delivered_seq: number;
  last_read_seq: number;
}

/** One row of `GET /conversations`. `title` is null for a direct conversation. */
export interface Conversation {
  id: ConversationId;
  kind: ConversationKind;
  title: string | null;
  /** By username. */
  members: ConversationMember[];
  /** The newest message (a reaction or an edit is not a last message). */
  last_message: Message | null;
  /** The seq of the newest event. */
  last_seq: number;
  unread_count: number;
  /** Of the unread messages, those that mention the caller. */
  unread_mentions: number;
  /** The caller's read marker. */
  last_read_seq: number;
  /** No notifications but for mentions. */
  muted: boolean;
}

/** What an event did, by kind, beside the event's common fields. */
export type EventData =
  | { kind: 'message'; message: Message }
  | { kind: 'edit'; target_seq: number; body: string; mentions?: UserId[] }
  | { kind: 'delete'; target_seq: number }
  | { kind: 'reaction_added'; target_seq: number; emoji: string }
  | { kind: 'reaction_removed'; target_seq: number; emoji: string }
  | { kind: 'member_added'; user: User; role: Role }
  | { kind: 'member_removed'; user_id: UserId; promoted_user_id?: UserId }
  | { kind: 'member_left'; user_id: UserId; promoted_user_id?: UserId }
  | { kind: 'title_changed'; title: string }
  | { kind: 'role_changed'; user_id: UserId; role: Role };

export type EventKind = EventData['kind'];

/** One entry of a conversation's log. `sender_id` is who caused it (for `member_left`, who left). */
export type ConversationEvent = {
  conversation_id: ConversationId;
  seq: number;
  sender_id: UserId;
  client_msg_id: string;
  created_at: string;
} & EventData;

/** A change request: an event without what the server assigns. Member changes name `user_id`. */
export type Change =
  | { kind: 'message'; body: string; reply_to_seq?: number; files?: FileId[] }
  | { kind: 'edit'; target_seq: number; body: string }
  | { kind: 'delete'; target_seq: number }
  | { kind: 'reaction_added'; target_seq: number; emoji: string }
  | { kind: 'reaction_removed'; target_seq: number; emoji: string }
  | { kind: 'member_added'; user_id: UserId }
  | { kind: 'member_removed'; user_id: UserId }
  | { kind: 'member_left' }
  | { kind: 'title_changed'; title: string }
  | { kind: 'role_changed'; user_id: UserId; role: Role };

/** The event kinds that change who is in a conversation or what it is called. */
export const MEMBERSHIP_KINDS: ReadonlySet<EventKind> = new Set([
  'member_added',
  'member_removed',
  'member_left',
  'title_changed',
  'role_changed',
]);

/** A message frame as the event it stands for. */
export function messageEvent(message: Message): ConversationEvent {
  return {
    conversation_id: message.conversation_id,
    seq: message.seq,
    sender_id: message.sender_id,
    client_msg_id: message.client_msg_id,
    created_at: message.created_at,
    kind: 'message',
    message,
  };
}

export interface AuthResponse {
  user: User;
  /** Ignored by the web client: the session lives in an HttpOnly cookie. */
  token: string;
}

/** One run of a search hit's snippet: `hit` marks the words that matched. */
export interface SnippetSegment {
  text: string;
  hit?: boolean;
}

/** A message that matched a search, as `GET /search` answers it. */
export interface SearchHit {
  conversation_id: ConversationId;
  seq: number;
  sender_id: UserId;
  created_at: string;
  edited_at?: string;
  /** The matched part of the body, ellipsised, in order. */
  snippet: SnippetSegment[];
}

export type SearchSort = 'relevance' | 'recent';

/** `GET /search`'s query: every word must match, the last one also as a prefix. */
export interface SearchQuery {
  q: string;
  conversation_id?: ConversationId;
  sender_id?: UserId;
  /** RFC 3339 bounds on `created_at`. */
  after?: string;
  before?: string;
  sort?: SearchSort;
  cursor?: string;
  limit?: number;
}

export interface SearchPage {
  hits: SearchHit[];
  /** Absent or null when there is nothing more. */
  next_cursor?: string | null;
}

/** `before_seq` pages backwards, `after_seq` forwards; neither means the newest page. */
export interface Page {
  before_seq?: number;
  after_seq?: number;
  limit: number;
}

export type ErrorCode =
  | 'invalid_json'
  | 'unknown_type'
  | 'invalid_input'
  | 'body_too_large'
  | 'invalid_username'
  | 'weak_password'
  | 'username_taken'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'conflict'
  | 'rate_limited'
  | 'unavailable'
  | 'internal'
  | 'unsupported_media_type'
  | 'storage_full'
  | 'invalid_request'
  | 'not_available'
  | 'quota_exceeded';

export type ClientFrame =
  | {
      type: 'send';
      conversation_id: ConversationId;
      client_msg_id: string;
      body: string;
      reply_to_seq?: number;
      files?: FileId[];
    }
  | ({ type: 'event'; conversation_id: ConversationId; client_msg_id: string } & Change)
  | { type: 'typing'; conversation_id: ConversationId }
  | { type: 'read'; conversation_id: ConversationId; seq: number }
  | { type: 'delivered'; conversation_id: ConversationId; seq: number }
  | { type: 'ping' };

export type ServerFrame =
  | { type: 'hello'; user_id: UserId }
  | { type: 'accepted'; client_msg_id: string; conversation_id: ConversationId }
  | { type: 'message'; message: Message }
  | { type: 'event'; event: ConversationEvent }
  | { type: 'conversation'; conversation: Conversation }
  | { type: 'muted'; conversation_id: ConversationId; muted: boolean }
  | { type: 'presence'; user_id: UserId; online: boolean; last_seen: string | null }
  | { type: 'typing'; conversation_id: ConversationId; user_id: UserId }
  | { type: 'read'; conversation_id: ConversationId; user_id: UserId; seq: number }
  | { type: 'delivered'; conversation_id: ConversationId; user_id: UserId; seq: number }
  | { type: 'pong' }
  | {
      type: 'error';
      code: ErrorCode | string;
      message: string;
      client_msg_id?: string;
      /** With `rate_limited`: how long until the same frame can succeed. */
      retry_after_ms?: number;
    };

/** Limits the server enforces; checked here too so that people get a message before sending. */
export const LIMITS = {
  bodyBytesMax: 16 * 1024,
  usernameCharsMin: 3,
  usernameCharsMax: 32,
  passwordCharsMin: 8,
  passwordCharsMax: 128,
  historyPageMax: 200,
  titleCharsMax: 100,
  mentionsMax: 32,
  reactionsDistinctMax: 20,
  searchQueryCharsMax: 200,
  searchPageMax: 50,
  /** The server's default upload limit (`PARLOR_FILE_BYTES_MAX`); a server may set less (413 then). */
  fileBytesMax: 25 * 1024 * 1024,
  filesPerMessageMax: 10,
} as const;

export const USERNAME_PATTERN = /^[A-Za-z0-9_.-]{3,32}$/;

const SERVER_FRAME_TYPES = new Set([
  'hello',
  'accepted',
  'message',
  'event',
  'conversation',
  'muted',
  'presence',
  'typing',
  'read',
  'delivered',
  'pong',
  'error',
]);

/**
 * Parses one WebSocket text frame. Returns null for anything that is not a known frame,
 * so that a newer server's additions are ignored rather than crashing the client.
 */
export function parseServerFrame(text: string): ServerFrame | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null) return null;
  const type = (value as { type?: unknown }).type;
  if (typeof type !== 'string' || !SERVER_FRAME_TYPES.has(type)) return null;
  if (type === 'message' && !isMessage((value as { message?: unknown }).message)) return null;
  if (type === 'event' && !isEvent((value as { event?: unknown }).event)) return null;
  if (type === 'conversation' && !isConversation((value as { conversation?: unknown }).conversation)) return null;
  return value as ServerFrame;
}

const EVENT_KINDS: ReadonlySet<string> = new Set([
  'message',
  'edit',
  'delete',
  'reaction_added',
  'reaction_removed',
  'member_added',
  'member_removed',
  'member_left',
  'title_changed',
  'role_changed',
]);

/** An event of a known kind with its common fields; a newer server's new kinds are dropped. */
export function isEvent(value: unknown): value is ConversationEvent {
  if (typeof value !== 'object' || value === null) return false;
  const e = value as Record<string, unknown>;
  if (
    typeof e.conversation_id !== 'string' ||
    typeof e.seq !== 'number' ||
    !Number.isInteger(e.seq) ||
    e.seq < 1 ||
    typeof e.sender_id !== 'string' ||
    typeof e.kind !== 'string' ||
    !EVENT_KINDS.has(e.kind)
  ) {
    return false;
  }
  if (e.kind === 'message') return isMessage(e.message);
  if ('target_seq' in e) return typeof e.target_seq === 'number';
  return true;
}

function isConversation(value: unknown): value is Conversation {
  if (typeof value !== 'object' || value === null) return false;
  const c = value as Record<string, unknown>;
  return typeof c.id === 'string' && Array.isArray(c.members) && typeof c.last_seq === 'number';
}

export function isMessage(value: unknown): value is Message {
  if (typeof value !== 'object' || value === null) return false;
  const m = value as Record<string, unknown>;
  return (
    typeof m.id === 'string' &&
    typeof m.conversation_id === 'string' &&
    typeof m.seq === 'number' &&
    Number.isInteger(m.seq) &&
    m.seq >= 1 &&
    typeof m.sender_id === 'string' &&
    typeof m.client_msg_id === 'string' &&
    typeof m.body === 'string' &&
    typeof m.created_at === 'string'
  );
}

/** UTF-8 length of a string, the unit of the server's body limit. */
export function utf8Bytes(text: string): number {
  return new TextEncoder().encode(text).length;
}
