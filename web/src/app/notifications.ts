// Browser notifications for messages that arrive while the tab is hidden (in a muted chat,
// only those that mention me). Permission is asked only from a click (`requestNotifications`),
// never on load.

import { plainText } from '../features/conversation/markdown.ts';
import { filesSummary } from '../lib/files/format.ts';
import type { IncomingMessage } from '../lib/sync/engine.ts';

export type NotificationAccess = NotificationPermission | 'unsupported';

export function notificationAccess(): NotificationAccess {
  return typeof Notification === 'undefined' ? 'unsupported' : Notification.permission;
}

export async function requestNotifications(): Promise<NotificationAccess> {
  if (typeof Notification === 'undefined') return 'unsupported';
  try {
    return await Notification.requestPermission();
  } catch {
    return Notification.permission;
  }
}

const BODY_CHARS_MAX = 140;

/** A muted chat notifies only of messages that mention me. */
export function shouldNotify({ chat, mentionsMe, message }: IncomingMessage): boolean {
  return !message.deleted && (!chat.muted || mentionsMe);
}

export function notifyIncoming(incoming: IncomingMessage, onOpen: (id: string) => void): void {
  const { message, chat, sender } = incoming;
  if (document.visibilityState !== 'hidden' || notificationAccess() !== 'granted' || !shouldNotify(incoming)) return;
  const title = chat.kind === 'group' ? `${sender} in ${chat.title}` : sender;
  const text = plainText(message.body).trim() || filesSummary(message.files ?? []);
  const body = text.length > BODY_CHARS_MAX ? `${text.slice(0, BODY_CHARS_MAX - 1)}…` : text;
  try {
    const notification = new Notification(title, { body, tag: chat.id, icon: '/favicon.svg' });
    notification.onclick = () => {
      window.focus();
      onOpen(chat.id);
      notification.close();
    };
  } catch {
    // Some browsers allow notifications only from a service worker; nothing to do then.
  }
}
