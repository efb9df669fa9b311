// Browser notifications for messages that arrive while the tab is hidden. Permission is
// asked only from a click (`requestNotifications`), never on load.

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

export function notifyIncoming({ message, chat, sender }: IncomingMessage, onOpen: (id: string) => void): void {
  if (document.visibilityState !== 'hidden' || notificationAccess() !== 'granted') return;
  const title = chat.kind === 'group' ? `${sender} in ${chat.title}` : sender;
  const body = message.body.length > BODY_CHARS_MAX ? `${message.body.slice(0, BODY_CHARS_MAX - 1)}…` : message.body;
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
