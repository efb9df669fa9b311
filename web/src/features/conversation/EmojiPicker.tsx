import { useEffect, useRef, type KeyboardEvent } from 'react';


import { Popover } from '../../components/ui/Popover.tsx';
import { EMOJI, EMOJI_COLUMNS as COLUMNS } from './emoji.ts';

interface EmojiPickerProps {
  anchor: HTMLElement;
  onPick: (emoji: string) => void;
  onClose: () => void;
}

/** A grid of common emoji: arrow keys move (by row and column), Enter picks, Escape closes. */
export function EmojiPicker({ anchor, onPick, onClose }: EmojiPickerProps) {
  const grid = useRef<HTMLDivElement>(null);

  useEffect(() => {
    grid.current?.querySelector<HTMLElement>('button')?.focus();
  }, []);

  function move(event: KeyboardEvent<HTMLButtonElement>) {
    const buttons = [...(grid.current?.querySelectorAll<HTMLButtonElement>('button') ?? [])];
    const index = buttons.indexOf(document.activeElement as HTMLButtonElement);
    if (index < 0) return;
    const step: Record<string, number> = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: COLUMNS, ArrowUp: -COLUMNS };
    let next: number | null = null;
    if (event.key in step) next = index + step[event.key]!;
    else if (event.key === 'Home') next = index - (index % COLUMNS);
    else if (event.key === 'End') next = Math.min(buttons.length - 1, index - (index % COLUMNS) + COLUMNS - 1);
    if (next === null) return;
    event.preventDefault();
    const target = buttons[Math.min(Math.max(next, 0), buttons.length - 1)]!;
    for (const b of buttons) b.tabIndex = b === target ? 0 : -1;
    target.focus();
  }

  return (
    <Popover anchor={anchor} label="Pick a reaction" onClose={onClose}>
      <div ref={grid} className="emoji-grid">
        {EMOJI.map(({ emoji, name }, i) => (
          <button
            key={emoji}
            type="button"
            className="emoji-button"
            tabIndex={i === 0 ? 0 : -1}
            aria-label={name}
            title={name}
            onKeyDown={move}
            onClick={() => {
              onPick(emoji);
              onClose();
            }}
          >
            {emoji}
          </button>
        ))}
      </div>
    </Popover>
  );
}
