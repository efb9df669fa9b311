import { describe, expect, it } from 'vitest';

import { shortcutLabel, shortcutOf, type KeyLike } from './shortcuts.ts';

const key = (k: string, mods: Partial<KeyLike> = {}): KeyLike => ({ key: k, ctrlKey: false, metaKey: false, shiftKey: false, altKey: false, ...mods });

describe('shortcuts', () => {
  it('opens the switcher with Ctrl+K and Cmd+K, even while typing', () => {
    expect(shortcutOf(key('k', { ctrlKey: true }), true)).toBe('switcher');
    expect(shortcutOf(key('K', { metaKey: true }), false)).toBe('switcher');
    expect(shortcutOf(key('k'), false)).toBeNull();
    expect(shortcutOf(key('k', { ctrlKey: true, altKey: true }), false)).toBeNull();
  });

  it('opens search with Ctrl/Cmd+Shift+F anywhere and with / outside text fields, leaving Ctrl+F to the browser', () => {
    expect(shortcutOf(key('F', { ctrlKey: true, shiftKey: true }), true)).toBe('search');
    expect(shortcutOf(key('f', { metaKey: true, shiftKey: true }), false)).toBe('search');
    expect(shortcutOf(key('f', { ctrlKey: true }), false)).toBeNull();
    expect(shortcutOf(key('/'), false)).toBe('search');
    expect(shortcutOf(key('/'), true)).toBeNull();
  });

  it('reads as the keyboard does', () => {
    expect(shortcutLabel('switcher', true)).toBe('⌘K');
    expect(shortcutLabel('search', false)).toBe('Ctrl+Shift+F');
  });
});
