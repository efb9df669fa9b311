// One logged-in session: the sync engine, the socket that feeds it, and the browser
// events both care about. Created on login, stopped on logout or when the session ends.

import * as api from '../lib/api/client.ts';
import type { User } from '../lib/api/types.ts';
import { xhrUpload } from '../lib/files/upload.ts';
import { UploadQueues } from '../lib/files/uploads.ts';
import { ReconnectingSocket } from '../lib/socket/socket.ts';
import { SyncEngine, type IncomingMessage } from '../lib/sync/engine.ts';

export interface Session {
  engine: SyncEngine;
  /** The files chosen for the next message of each conversation, uploading. */
  uploads: UploadQueues;
  stop(): void;
}

export interface SessionCallbacks {
  /** The server no longer knows this session (expired, revoked, logged out elsewhere). */
  onEnded: () => void;
  onIncoming: (incoming: IncomingMessage) => void;
}

/** While the socket keeps failing, ask `/me` at most this often whether the session still exists. */
const SESSION_CHECK_INTERVAL_MS = 15_000;

export function socketUrl(location: Location = window.location): string {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/api/v1/ws`;
}

/** The side of the chips' pictures in CSS pixels, times two for sharp screens. */
const PREVIEW_PX = 2 * 44;

/**
 * A small picture of a local image as a data: URL: the browser decodes the file scaled down
 * (createImageBitmap), so a large photo costs no more than its chip.
 */
async function imagePreview(file: File): Promise<string | null> {
  if (typeof createImageBitmap !== 'function') return null;
  const bitmap = await createImageBitmap(file, { resizeWidth: PREVIEW_PX * 2, resizeQuality: 'medium' }).catch(() => null);
  if (!bitmap) return null;
  try {
    const canvas = document.createElement('canvas');
    const scale = Math.min(1, PREVIEW_PX / Math.min(bitmap.width, bitmap.height));
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    canvas.getContext('2d')?.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    return canvas.toDataURL('image/png');
  } finally {
    bitmap.close();
  }
}

export function startSession(user: User, callbacks: SessionCallbacks): Session {
  let socket: ReconnectingSocket | null = null;
  const engine = new SyncEngine({
    me: user,
    transport: {
      listConversations: api.listConversations,
      fetchConversation: api.fetchConversation,
      fetchMessages: api.fetchMessages,
      fetchEvents: api.fetchEvents,
      markRead: api.markRead,
      setMuted: api.setMuted,
      send: (frame) => socket?.send(frame) ?? false,
    },
  });

  const uploads = new UploadQueues({
    upload: xhrUpload,
    preview: imagePreview,
  });

  let stopped = false;
  let lastSessionCheck = 0;
  const checkSession = () => {
    const now = Date.now();
    if (stopped || now - lastSessionCheck < SESSION_CHECK_INTERVAL_MS) return;
    lastSessionCheck = now;
    api.me().then(
      (current) => {
        if (!stopped && current === null) callbacks.onEnded();
      },
      () => {
        // Unreachable server: the socket keeps trying.
      },
    );
  };

  socket = new ReconnectingSocket({
    url: socketUrl(),
    onFrame: (frame) => engine.handleFrame(frame),
    onStatus: (status) => {
      engine.setSocketStatus(status);
      if (status === 'closed' && navigator.onLine) checkSession();
    },
  });

  const unsubscribeIncoming = engine.onIncoming(callbacks.onIncoming);
  const unsubscribeUnauthorized = api.onUnauthorized(() => {
    if (!stopped) callbacks.onEnded();
  });
  // Back online: the socket reconnects, and uploads the network cut off start over.
  const onOnline = () => {
    socket?.reconnectNow();
    uploads.retryInterrupted();
  };
  const onOffline = () => socket?.disconnect();
  const onVisibility = () => engine.setVisible(document.visibilityState === 'visible');
  window.addEventListener('online', onOnline);
  window.addEventListener('offline', onOffline);
  document.addEventListener('visibilitychange', onVisibility);
  onVisibility();

  void engine.start();
  socket.start();

  return {
    engine,
    uploads,
    stop() {
      if (stopped) return;
      stopped = true;
      window.removeEventListener('online', onOnline);
      window.removeEventListener('offline', onOffline);
      document.removeEventListener('visibilitychange', onVisibility);
      unsubscribeIncoming();
      unsubscribeUnauthorized();
      socket?.stop();
      uploads.dispose();
      engine.dispose();
    },
  };
}
