import { useRef } from 'react';

import { Icon } from '../../components/ui/Icon.tsx';

interface ChatFilterProps {
  value: string;
  onChange: (value: string) => void;
}

/** Narrows the chat list as you type (by title or member names); Escape or the button clears it. */
export function ChatFilter({ value, onChange }: ChatFilterProps) {
  const input = useRef<HTMLInputElement>(null);
  return (
    <div className="chat-filter">
      <Icon name="search" />
      <input
        ref={input}
        type="text"
        aria-label="Filter chats"
        placeholder="Filter chats"
        autoComplete="off"
        spellCheck={false}
        value={value}
        onChange={(e) => onChange(e.target.value)}
        onKeyDown={(e) => {
          if (e.key === 'Escape' && value !== '') {
            e.preventDefault();
            onChange('');
          }
        }}
      />
      {value !== '' ? (
        <button
          type="button"
          className="icon-button small"
          aria-label="Clear filter"
          title="Clear filter"
          onClick={() => {
            onChange('');
            input.current?.focus();
          }}
        >
          <Icon name="close" />
        </button>
      ) : null}
    </div>
  );
}
