import { useEffect, useId, useRef, useState, type FormEvent, type KeyboardEvent } from 'react';

import { Icon } from '../../components/ui/Icon.tsx';
import { LIMITS, utf8Bytes } from '../../lib/api/types.ts';

interface ComposerProps {
  placeholder: string;
  /** Queues the body; throws with a message a person can read when it cannot be sent. */
  onSend: (body: string) => void;
  onTyping: () => void;
}

const HEIGHT_MAX_PX = 180;

/** Enter sends, Shift+Enter starts a new line; the box grows with its text up to a limit. */
export function Composer({ placeholder, onSend, onTyping }: ComposerProps) {
  const [draft, setDraft] = useState('');
  const [error, setError] = useState<string | null>(null);
  const textarea = useRef<HTMLTextAreaElement>(null);
  const errorId = useId();
  const tooLong = utf8Bytes(draft) > LIMITS.bodyBytesMax;

  // Opening a chat puts the cursor where the next message goes, as Slack and Element do, so
  // a chat opened from the keyboard can be written to at once. Not on touch screens: focus
  // there would pop the on-screen keyboard over the conversation one came to read.
  useEffect(() => {
    if (window.matchMedia?.('(pointer: fine)').matches) textarea.current?.focus({ preventScroll: true });
  }, []);


  function send() {
    if (draft.trim() === '') return;
    if (tooLong) {
      setError(`This message is over ${LIMITS.bodyBytesMax / 1024} KiB; shorten it to send.`);
      return;
    }
    try {
      onSend(draft);
      setDraft('');
      setError(null);
      if (textarea.current) textarea.current.style.height = '';
    } catch (cause) {
      setError(cause instanceof Error ? cause.message : 'Could not send.');
    }
    textarea.current?.focus();
  }

  function onSubmit(event: FormEvent) {
    event.preventDefault();
    send();
  }

  function onKeyDown(event: KeyboardEvent<HTMLTextAreaElement>) {
    if (event.key === 'Enter' && !event.shiftKey && !event.altKey && !event.nativeEvent.isComposing) {
      event.preventDefault();
      send();
    }
  }

  return (
    <form className="composer" onSubmit={onSubmit}>
      <p id={errorId} className="composer-error form-error" role="alert">
        {error ?? (tooLong ? `Over the ${LIMITS.bodyBytesMax / 1024} KiB limit.` : '')}
      </p>
      <div className="composer-row">
        <textarea
          ref={textarea}
          aria-label="Message"
          aria-describedby={errorId}
          aria-invalid={tooLong || undefined}
          rows={1}
          placeholder={placeholder}
          value={draft}
          onChange={(event) => {
            setDraft(event.target.value);
            fitHeight(event.target);
            if (error) setError(null);
            if (event.target.value !== '') onTyping();
          }}
          onKeyDown={onKeyDown}
          enterKeyHint="send"
        />
        <button type="submit" className="send-button" aria-label="Send" disabled={draft.trim() === ''} title="Send (Enter)">
          <Icon name="send" />
        </button>
      </div>
    </form>
  );
}

/** Grows the box with its text (up to a limit) instead of scrolling inside two lines. */
function fitHeight(el: HTMLTextAreaElement): void {
  el.style.height = 'auto';
  el.style.height = `${Math.min(el.scrollHeight, HEIGHT_MAX_PX)}px`;
}
