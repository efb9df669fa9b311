// Protocol v1 as the web client sees it. These mirror `parlor_core::protocol` one to one;
// IDs are strings, times RFC 3339 UTC, `seq` is gap-free per conversation starting at 1.

export type UserId = string;
export type ConversationId = string;
export type MessageId = string;

export interface User {
  id: UserId;
  username: string;
}

/** A user with presence, as `GET /users` and conversation members carry it. */
export interface Member extends User {
  online: boolean;
}

export interface Message {
  id: MessageId;
  conversation_id: ConversationId;
  seq: number;
  sender_id: UserId;
  client_msg_id: string;
  body: string;
  created_at: string;
}

export type ConversationKind = 'direct' | 'group';

/** One row of `GET /conversations`. `title` is null for a direct conversation. */
export interface Conversation {
  id: ConversationId;
  kind: ConversationKind;
  title: string | null;
  members: Member[];
  last_message: Message | null;
  last_seq: number;
  unread_count: number;
}

export interface AuthResponse {
  user: User;
  /** Ignored by the web client: the session lives in an HttpOnly cookie. */
  token: string;
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
  | 'rate_limited'
  | 'unavailable'
  | 'internal'
  | 'storage_full';

export type ClientFrame =
  | { type: 'send'; conversation_id: ConversationId; client_msg_id: string; body: string }
  | { type: 'typing'; conversation_id: ConversationId }
  | { type: 'read'; conversation_id: ConversationId; seq: number }
  | { type: 'ping' };

export type ServerFrame =
  | { type: 'hello'; user_id: UserId }
  | { type: 'accepted'; client_msg_id: string; conversation_id: ConversationId }
  | { type: 'message'; message: Message }
  | { type: 'presence'; user_id: UserId; online: boolean; last_seen: string | null }
  | { type: 'typing'; conversation_id: ConversationId; user_id: UserId }
  | { type: 'read'; conversation_id: ConversationId; user_id: UserId; seq: number }
  | { type: 'pong' }
  | { type: 'error'; code: ErrorCode | string; message: string; client_msg_id?: string };

/** Limits the server enforces; checked here too so that people get a message before sending. */
export const LIMITS = {
  bodyBytesMax: 16 * 1024,
  usernameCharsMin: 3,
  usernameCharsMax: 32,
  passwordCharsMin: 8,
  passwordCharsMax: 128,
  historyPageMax: 200,
} as const;

export const USERNAME_PATTERN = /^[A-Za-z0-9_.-]{3,32}$/;

const SERVER_FRAME_TYPES = new Set([
  'hello',
  'accepted',
  'message',
  'presence',
  'typing',
  'read',
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
  return value as ServerFrame;
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
