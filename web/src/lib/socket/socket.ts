// A WebSocket that stays connected: reconnects with exponential backoff and full jitter,
// pings every 20 s (the server closes sockets idle for ~60 s) and gives up on a socket
// whose pong does not come back. It knows frames, not messages: what to do on (re)connect
// is the sync engine's business (`onFrame` gets the server's `hello`).
//
// Time, randomness and the WebSocket itself are injected so that tests drive them.

import { parseServerFrame, type ClientFrame, type ServerFrame } from '../api/types.ts';

export type SocketStatus = 'connecting' | 'open' | 'closed';

/** The part of the browser's WebSocket this module uses. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: unknown) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface SocketOptions {
  url: string;
  onFrame: (frame: ServerFrame) => void;
  onStatus: (status: SocketStatus) => void;
  createWebSocket?: (url: string) => WebSocketLike;
  timers?: Timers;
  /** Uniform in [0, 1). */
  random?: () => number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  pingIntervalMs?: number;
  /** How long to wait for any frame after a ping before treating the socket as dead. */
  pongTimeoutMs?: number;
}

const OPEN = 1;

export const SOCKET_DEFAULTS = {
  backoffInitialMs: 500,
  backoffMaxMs: 30_000,
  pingIntervalMs: 20_000,
  pongTimeoutMs: 10_000,
} as const;

/**
 * The delay before reconnect attempt `attempt` (0-based): "full jitter", uniform in
 * [initial/2, min(max, initial·2^attempt)], so that a server restart is not met by every
 * client at the same instant, yet the first retry is quick.
 */
export function backoffDelayMs(
  attempt: number,
  random: number,
  initialMs: number = SOCKET_DEFAULTS.backoffInitialMs,
  maxMs: number = SOCKET_DEFAULTS.backoffMaxMs,
): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  const floor = Math.min(initialMs / 2, ceiling);
  return Math.round(floor + random * (ceiling - floor));
}

export class ReconnectingSocket {
  private readonly options: Required<SocketOptions>;
  private socket: WebSocketLike | null = null;
  private status: SocketStatus = 'closed';
  private attempt = 0;
  private stopped = true;
  private reconnectTimer: unknown = null;
  private pingTimer: unknown = null;
  private pongTimer: unknown = null;

  constructor(options: SocketOptions) {
    this.options = {
      createWebSocket: (url) => new WebSocket(url) as unknown as WebSocketLike,
      timers: {
        setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
        clearTimeout: (handle) => globalThis.clearTimeout(handle as number),
      },
      random: Math.random,
      ...SOCKET_DEFAULTS,
      ...options,
    };
  }

  get currentStatus(): SocketStatus {
    return this.status;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.connect();
  }

  /** Closes for good: no reconnect until `start()` again. */
  stop(): void {
    this.stopped = true;
    this.clearTimers();
    this.dropSocket();
    this.setStatus('closed');
  }

  /** Sends now if open; returns false otherwise (the caller keeps what it must resend). */
  send(frame: ClientFrame): boolean {
    if (!this.socket || this.socket.readyState !== OPEN || this.status !== 'open') return false;
    try {
      this.socket.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /** Skips the backoff wait, e.g. when the browser says the network is back. */
  reconnectNow(): void {
    if (this.stopped || this.status === 'open' || this.status === 'connecting') return;
    this.attempt = 0;
    this.connect();
  }

  /** Drops the current socket and reconnects, e.g. when the browser says it went offline. */
  disconnect(): void {
    if (this.stopped || !this.socket) return;
    this.handleClose();
  }

  private connect(): void {
    this.clearTimers();
    this.dropSocket();
    this.setStatus('connecting');
    let socket: WebSocketLike;
    try {
      socket = this.options.createWebSocket(this.options.url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      if (this.socket !== socket) return;
      this.setStatus('open');
      this.schedulePing();
    };
    socket.onmessage = (event) => {
      if (this.socket !== socket) return;
      // Any frame proves the connection alive and, once the server spoke, the backoff resets.
      this.attempt = 0;
      this.clearPongTimer();
      if (typeof event.data !== 'string') return;
      const frame = parseServerFrame(event.data);
      if (frame) this.options.onFrame(frame);
    };
    socket.onclose = () => {
      if (this.socket === socket) this.handleClose();
    };
    socket.onerror = () => {
      // A close event always follows an error; reconnecting happens there.
    };
  }

  private handleClose(): void {
    this.clearTimers();
    this.dropSocket();
    if (this.stopped) return;
    this.setStatus('closed');
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    const { timers, random, backoffInitialMs, backoffMaxMs } = this.options;
    const delay = backoffDelayMs(this.attempt, random(), backoffInitialMs, backoffMaxMs);
    this.attempt += 1;
    this.reconnectTimer = timers.setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.stopped) this.connect();
    }, delay);
  }

  private schedulePing(): void {
    const { timers, pingIntervalMs, pongTimeoutMs } = this.options;
    this.pingTimer = timers.setTimeout(() => {
      this.pingTimer = null;
      if (!this.send({ type: 'ping' })) return;
      this.clearPongTimer();
      this.pongTimer = timers.setTimeout(() => {
        this.pongTimer = null;
        this.handleClose();
      }, pongTimeoutMs);
      this.schedulePing();
    }, pingIntervalMs);
  }

  private clearPongTimer(): void {
    if (this.pongTimer !== null) this.options.timers.clearTimeout(this.pongTimer);
    this.pongTimer = null;
  }

  private clearTimers(): void {
    const { timers } = this.options;
    if (this.reconnectTimer !== null) timers.clearTimeout(this.reconnectTimer);
    if (this.pingTimer !== null) timers.clearTimeout(this.pingTimer);
    this.reconnectTimer = null;
    this.pingTimer = null;
    this.clearPongTimer();
  }

  private dropSocket(): void {
    const socket = this.socket;
    this.socket = null;
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    try {
      socket.close();
    } catch {
      // Already closed.
    }
  }

  private setStatus(status: SocketStatus): void {
    if (this.status === status) return;
    this.status = status;
    this.options.onStatus(status);
  }
}
