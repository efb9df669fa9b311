// The keys of a list whose active option follows the arrows while the focus stays in a text
// field (the combobox pattern: the field names the option with aria-activedescendant).

/** The option that `key` makes active among `count` (from `index`, -1 for none), or null if the key is not for the list. */
export function moveActive(key: string, index: number, count: number): number | null {
  if (count === 0) return null;
  switch (key) {
    case 'ArrowDown':
      return index < 0 ? 0 : Math.min(count - 1, index + 1);
    case 'ArrowUp':
      return index <= 0 ? 0 : index - 1;
    case 'PageDown':
      return Math.min(count - 1, Math.max(0, index) + 5);
    case 'PageUp':
      return Math.max(0, index - 5);
    default:
      return null;
  }
}
