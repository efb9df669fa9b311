// The app's keyboard shortcuts, decided from a key event alone (pure, tested):
// - Ctrl+K / Cmd+K opens the quick switcher, from anywhere (Slack, Discord, GitHub and Linear
//   use it; a chat app has no use for the browser's own "focus the search bar" there).
// - Ctrl+Shift+F / Cmd+Shift+F opens message search, from anywhere, also while typing a
//   message: Ctrl+F stays the browser's find in the page, which people rely on; the added
//   Shift means "find everywhere" as in editors (VS Code, JetBrains), and no browser binds it.
// - "/" opens message search too when the focus is not in a text field (Gmail, GitHub, YouTube).

export type Shortcut = 'switcher' | 'search';

export interface KeyLike {
  key: string;
  ctrlKey: boolean;
  metaKey: boolean;
  shiftKey: boolean;
  altKey: boolean;
}

export function shortcutOf(event: KeyLike, inTextField: boolean): Shortcut | null {
  const command = event.ctrlKey || event.metaKey;
  const key = event.key.toLowerCase();
  if (command && !event.altKey && !event.shiftKey && key === 'k') return 'switcher';
  if (command && !event.altKey && event.shiftKey && key === 'f') return 'search';
  if (!command && !event.altKey && event.key === '/' && !inTextField) return 'search';
  return null;
}

/** Where typing "/" means the character, not the shortcut. */
export function isTextField(target: EventTarget | null): boolean {
  if (!(target instanceof HTMLElement)) return false;
  if (target.isContentEditable) return true;
  return target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement || (target instanceof HTMLInputElement && !['button', 'checkbox', 'radio', 'submit'].includes(target.type));
}

/** How the shortcuts read on this keyboard: "⌘K" on a Mac, "Ctrl+K" elsewhere. */
export function shortcutLabel(shortcut: Shortcut, mac: boolean): string {
  if (shortcut === 'switcher') return mac ? '⌘K' : 'Ctrl+K';
  return mac ? '⇧⌘F' : 'Ctrl+Shift+F';
}
