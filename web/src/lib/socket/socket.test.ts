import { beforeEach, describe, expect, it } from 'vitest';

import type { ServerFrame } from '../api/types.ts';
import { FakeClock } from '../../test/fakeClock.ts';
import { backoffDelayMs, ReconnectingSocket, SOCKET_DEFAULTS, type SocketStatus, type WebSocketLike } from './socket.ts';

class FakeWebSocket implements WebSocketLike {
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: unknown) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  sent: string[] = [];
  closed = false;

  readonly url: string;

  constructor(url: string) {
    this.url = url;
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push(data);
  }

  close(): void {
    this.closed = true;
    this.readyState = 3;
  }

  // What the network does:
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(frame: ServerFrame | string): void {
    this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
  }

  drop(): void {
    this.readyState = 3;
    this.onclose?.({});
  }
}

let clock: FakeClock;
let sockets: FakeWebSocket[];
let frames: ServerFrame[];
let statuses: SocketStatus[];
let random: number;

function makeSocket(): ReconnectingSocket {
  return new ReconnectingSocket({
    url: 'ws://parlor.test/api/v1/ws',
    onFrame: (frame) => frames.push(frame),
    onStatus: (status) => statuses.push(status),
    createWebSocket: (url) => {
      const socket = new FakeWebSocket(url);
      sockets.push(socket);
      return socket;
    },
    timers: clock,
    random: () => random,
  });
}

function latest(): FakeWebSocket {
  const socket = sockets.at(-1);
  if (!socket) throw new Error('no socket');
  return socket;
}

beforeEach(() => {
  clock = new FakeClock();
  sockets = [];
  frames = [];
  statuses = [];
  random = 0.5;
});

describe('backoffDelayMs', () => {
  it('grows exponentially up to the cap, with jitter inside the bounds', () => {
    const { backoffInitialMs: initial, backoffMaxMs: max } = SOCKET_DEFAULTS;
    expect(backoffDelayMs(0, 0)).toBe(initial / 2);
    expect(backoffDelayMs(0, 1)).toBe(initial);
    expect(backoffDelayMs(3, 1)).toBe(initial * 8);
    expect(backoffDelayMs(50, 1)).toBe(max);
    for (let attempt = 0; attempt < 12; attempt++) {
      for (const r of [0, 0.3, 0.999]) {
        const delay = backoffDelayMs(attempt, r);
        expect(delay).toBeGreaterThanOrEqual(initial / 2);
        expect(delay).toBeLessThanOrEqual(Math.min(max, initial * 2 ** attempt));
      }
    }
  });

  it('spreads clients out: different random draws give different delays', () => {
    const delays = new Set([0.1, 0.4, 0.7, 0.9].map((r) => backoffDelayMs(5, r)));
    expect(delays.size).toBe(4);
  });
});

describe('ReconnectingSocket', () => {
  it('connects, reports status and parses frames, ignoring unknown ones', () => {
    const socket = makeSocket();
    socket.start();
    expect(statuses).toEqual(['connecting']);
    latest().open();
    expect(statuses).toEqual(['connecting', 'open']);
    latest().receive({ type: 'hello', user_id: 'u1' });
    latest().receive('{"type":"from-the-future"}');
    latest().receive('not json');
    expect(frames).toEqual([{ type: 'hello', user_id: 'u1' }]);
  });

  it('sends only while open', () => {
    const socket = makeSocket();
    socket.start();
    expect(socket.send({ type: 'ping' })).toBe(false);
    latest().open();
    expect(socket.send({ type: 'typing', conversation_id: 'c' })).toBe(true);
    expect(latest().sent).toEqual(['{"type":"typing","conversation_id":"c"}']);
  });

  it('reconnects with growing delays while the server is down, and resets after it speaks', () => {
    random = 1;
    const socket = makeSocket();
    socket.start();
    const delays: number[] = [];
    for (let attempt = 0; attempt < 5; attempt++) {
      const count = sockets.length;
      latest().drop();
      let waited = 0;
      while (sockets.length === count) {
        clock.advance(10);
        waited += 10;
      }
      delays.push(waited);
    }
    expect(delays).toEqual([500, 1000, 2000, 4000, 8000]);

    latest().open();
    latest().receive({ type: 'hello', user_id: 'u1' });
    latest().drop();
    clock.advance(SOCKET_DEFAULTS.backoffInitialMs);
    expect(sockets).toHaveLength(7);
    expect(statuses.filter((s) => s === 'open')).toHaveLength(1);
  });

  it('pings every 20 s and drops a socket whose answer never comes', () => {
    const socket = makeSocket();
    socket.start();
    latest().open();
    clock.advance(SOCKET_DEFAULTS.pingIntervalMs);
    expect(latest().sent).toEqual(['{"type":"ping"}']);
    latest().receive({ type: 'pong' });
    clock.advance(SOCKET_DEFAULTS.pingIntervalMs);
    expect(latest().sent).toHaveLength(2);
    const stale = latest();
    clock.advance(SOCKET_DEFAULTS.pongTimeoutMs);
    expect(stale.closed).toBe(true);
    expect(statuses.at(-1)).toBe('closed');
    clock.advance(SOCKET_DEFAULTS.backoffInitialMs);
    expect(latest()).not.toBe(stale);
  });

  it('reconnects at once when told the network is back', () => {
    const socket = makeSocket();
    socket.start();
    latest().open();
    latest().drop();
    expect(sockets).toHaveLength(1);
    socket.reconnectNow();
    expect(sockets).toHaveLength(2);
    expect(statuses.at(-1)).toBe('connecting');
  });

  it('drops the socket when told the network is gone', () => {
    const socket = makeSocket();
    socket.start();
    latest().open();
    socket.disconnect();
    expect(sockets[0]!.closed).toBe(true);
    expect(statuses.at(-1)).toBe('closed');
  });

  it('stays closed after stop', () => {
    const socket = makeSocket();
    socket.start();
    latest().open();
    socket.stop();
    clock.advance(SOCKET_DEFAULTS.backoffMaxMs * 2);
    expect(sockets).toHaveLength(1);
    expect(statuses.at(-1)).toBe('closed');
    expect(clock.pendingTimers).toBe(0);
  });
});
