// The HTTP half of protocol v1. Every request goes through `api()`, which sends the
// session cookie (same origin) and the CSRF header the server demands of every
// cookie-authenticated request that is not GET/HEAD. Tokens are never stored in JS.

import type {
  AuthResponse,
  Conversation,
  ConversationEvent,
  ConversationId,
  Member,
  Message,
  Page,
  SearchPage,
  SearchQuery,
  User,
  UserId,
} from './types.ts';

const BASE = '/api/v1';
export const CSRF_HEADER = 'X-Parlor-CSRF';

/** A failed request: the server's `{error: {code, message}}`, or a network failure. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;

  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }

  /** The session cookie is missing, expired or revoked. */
  get isUnauthorized(): boolean {
    return this.status === 401;
  }

  /** The request never got an answer from the server. */
  get isNetwork(): boolean {
    return this.status === 0;
  }
}

type Listener = (error: ApiError) => void;
const unauthorizedListeners = new Set<Listener>();

/** Called whenever any request answers 401, so the app can end the session in one place. */
export function onUnauthorized(listener: Listener): () => void {
  unauthorizedListeners.add(listener);
  return () => unauthorizedListeners.delete(listener);
}

export interface ApiOptions {
  method?: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  body?: unknown;
  signal?: AbortSignal;
  /** Whether a 401 means "the session ended" (false for login, register and /me). */
  reportUnauthorized?: boolean;
}

export async function api<T>(path: string, options: ApiOptions = {}): Promise<T> {
  const { method = 'GET', body, signal, reportUnauthorized = true } = options;
  const headers: Record<string, string> = { Accept: 'application/json', [CSRF_HEADER]: '1' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';

  let response: Response;
  try {
    response = await fetch(BASE + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
      signal,
    });
  } catch (cause) {
    if (signal?.aborted) throw cause;
    throw new ApiError(0, 'network', 'Cannot reach the server. Check your connection.');
  }

  if (response.status === 204) return undefined as T;
  const text = await response.text();
  let payload: unknown = undefined;
  if (text !== '') {
    try {
      payload = JSON.parse(text);
    } catch {
      payload = undefined;
    }
  }
  if (!response.ok) {
    const error = toApiError(response.status, payload);
    if (error.isUnauthorized && reportUnauthorized) {
      for (const listener of unauthorizedListeners) listener(error);
    }
    throw error;
  }
  return payload as T;
}

function toApiError(status: number, payload: unknown): ApiError {
  const error = (payload as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  if (error && typeof error.code === 'string' && typeof error.message === 'string') {
    return new ApiError(status, error.code, error.message);
  }
  return new ApiError(status, 'http_' + status, `The server answered ${status}.`);
}

// ---- Endpoints -------------------------------------------------------------------------

export interface Credentials {
  username: string;
  password: string;
}

export async function register(credentials: Credentials): Promise<User> {
  const res = await api<AuthResponse>('/auth/register', {
    method: 'POST',
    body: credentials,
    reportUnauthorized: false,
  });
  return res.user;
}

export async function login(credentials: Credentials): Promise<User> {
  const res = await api<AuthResponse>('/auth/login', {
    method: 'POST',
    body: credentials,
    reportUnauthorized: false,
  });
  return res.user;
}

export function logout(): Promise<void> {
  return api<void>('/auth/logout', { method: 'POST', reportUnauthorized: false });
}

/** The logged-in user, or null when there is no valid session cookie. */
export async function me(): Promise<User | null> {
  try {
    return await api<User>('/me', { reportUnauthorized: false });
  } catch (error) {
    if (error instanceof ApiError && error.isUnauthorized) return null;
    throw error;
  }
}

export function searchUsers(prefix: string, signal?: AbortSignal): Promise<Member[]> {
  return api<Member[]>('/users?q=' + encodeURIComponent(prefix), { signal });
}

export function listConversations(): Promise<Conversation[]> {
  return api<Conversation[]>('/conversations');
}

/** The one direct conversation with `user`, created if needed. */
export function createDirect(user: UserId): Promise<Conversation> {
  return api<Conversation>('/conversations', {
    method: 'POST',
    body: { kind: 'direct', members: [user] },
  });
}

export function createGroup(title: string, members: UserId[]): Promise<Conversation> {
  return api<Conversation>('/conversations', {
    method: 'POST',
    body: { kind: 'group', title, members },
  });
}

export async function fetchMessages(conversation: ConversationId, page: Page): Promise<Message[]> {
  const query = new URLSearchParams({ limit: String(page.limit) });
  if (page.after_seq !== undefined) query.set('after_seq', String(page.after_seq));
  else if (page.before_seq !== undefined) query.set('before_seq', String(page.before_seq));
  const res = await api<{ messages: Message[] }>(
    `/conversations/${encodeURIComponent(conversation)}/messages?${query}`,
  );
  return res.messages;
}

export function markRead(conversation: ConversationId, seq: number): Promise<void> {
  return api<void>(`/conversations/${encodeURIComponent(conversation)}/read`, {
    method: 'POST',
    body: { seq },
  });
}

export function fetchConversation(conversation: ConversationId): Promise<Conversation> {
  return api<Conversation>(`/conversations/${encodeURIComponent(conversation)}`);
}

/** Events after `afterSeq`, ascending: how a client catches up. */
export async function fetchEvents(conversation: ConversationId, afterSeq: number, limit: number): Promise<ConversationEvent[]> {
  const query = new URLSearchParams({ after_seq: String(afterSeq), limit: String(limit) });
  const res = await api<{ events: ConversationEvent[] }>(
    `/conversations/${encodeURIComponent(conversation)}/events?${query}`,
  );
  return res.events;
}

export function setMuted(conversation: ConversationId, muted: boolean): Promise<void> {
  return api<void>(`/conversations/${encodeURIComponent(conversation)}/mute`, {
    method: 'PUT',
    body: { muted },
  });
}

/** Messages matching `query` in the caller's conversations; 501 `not_available` where the server has no search. */
export function searchMessages(query: SearchQuery, signal?: AbortSignal): Promise<SearchPage> {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== '') params.set(key, String(value));
  }
  return api<SearchPage>(`/search?${params}`, { signal });
}
