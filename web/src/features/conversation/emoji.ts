// The curated reactions of the emoji picker: common enough that nobody needs to search.

/** The common reactions, in the order people reach for them; the first ones are quick reactions. */
export const EMOJI: ReadonlyArray<{ emoji: string; name: string }> = [
  { emoji: '👍', name: 'thumbs up' },
  { emoji: '❤️', name: 'heart' },
  { emoji: '😂', name: 'tears of joy' },
  { emoji: '🎉', name: 'party popper' },
  { emoji: '😮', name: 'surprised' },
  { emoji: '😢', name: 'crying' },
  { emoji: '🙏', name: 'folded hands' },
  { emoji: '🔥', name: 'fire' },
  { emoji: '👀', name: 'eyes' },
  { emoji: '✅', name: 'check mark' },
  { emoji: '👏', name: 'clapping' },
  { emoji: '😄', name: 'grinning' },
  { emoji: '😊', name: 'smiling' },
  { emoji: '😍', name: 'heart eyes' },
  { emoji: '🤔', name: 'thinking' },
  { emoji: '😅', name: 'sweat smile' },
  { emoji: '🙌', name: 'raised hands' },
  { emoji: '💯', name: 'hundred points' },
  { emoji: '👎', name: 'thumbs down' },
  { emoji: '😡', name: 'angry' },
  { emoji: '🚀', name: 'rocket' },
  { emoji: '⭐', name: 'star' },
  { emoji: '💡', name: 'light bulb' },
  { emoji: '🤝', name: 'handshake' },
  { emoji: '👋', name: 'waving hand' },
  { emoji: '🥳', name: 'partying face' },
  { emoji: '😎', name: 'sunglasses' },
  { emoji: '😴', name: 'sleeping' },
  { emoji: '🤯', name: 'mind blown' },
  { emoji: '🙈', name: 'see-no-evil monkey' },
  { emoji: '☕', name: 'coffee' },
  { emoji: '🍕', name: 'pizza' },
];

export const QUICK_REACTIONS = EMOJI.slice(0, 3);
/** The picker's grid is this many emoji wide (the arrow keys move by it). */
export const EMOJI_COLUMNS = 8;

export function emojiName(emoji: string): string {
  return EMOJI.find((e) => e.emoji === emoji)?.name ?? emoji;
}

