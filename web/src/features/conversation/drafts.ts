// Unsent text per chat, per user, in localStorage: it survives switching chats and reloads.
// Storage can be full, disabled or shared with an older tab; a draft is a convenience, so
// every failure is ignored.

const PREFIX = 'parlor.draft.';

function key(userId: string, chatId: string): string {
  return `${PREFIX}${userId}.${chatId}`;
}

export function loadDraft(userId: string, chatId: string): string {
  try {
    return localStorage.getItem(key(userId, chatId)) ?? '';
  } catch {
    return '';
  }
}

export function saveDraft(userId: string, chatId: string, text: string): void {
  try {
    if (text.trim() === '') localStorage.removeItem(key(userId, chatId));
    else localStorage.setItem(key(userId, chatId), text);
  } catch {
    // See above: a draft that cannot be kept is only lost on reload.
  }
}

/** Logging out leaves nothing of what was typed in this browser. */
export function clearDrafts(): void {
  try {
    for (let i = localStorage.length - 1; i >= 0; i--) {
      const name = localStorage.key(i);
      if (name?.startsWith(PREFIX)) localStorage.removeItem(name);
    }
  } catch {
    // See above.
  }
}
