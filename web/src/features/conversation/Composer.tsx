import { useEffect, useId, useRef, useState, type ClipboardEvent, type FormEvent, type KeyboardEvent } from 'react';

import { Icon } from '../../components/ui/Icon.tsx';
import type { Member, UserId } from '../../lib/api/types.ts';
import { LIMITS, utf8Bytes } from '../../lib/api/types.ts';
import type { UploadView } from '../../lib/files/uploads.ts';
import { Attachments } from './Attachments.tsx';
import { loadDraft, saveDraft } from './drafts.ts';

export interface ComposerContext {
  /** The message being answered: shown above the box with a way to cancel. */
  replyTo: { seq: number; sender: string; excerpt: string } | null;
  /** My message being edited: its text is in the box until saved or cancelled. */
  editing: { seq: number; body: string } | null;
}

interface ComposerProps extends ComposerContext {
  /** Drafts are kept per user and chat. */
  userId: UserId;
  chatId: string;
  placeholder: string;
  /** Who can be @mentioned here (not me). */
  members: readonly Member[];
  /** The files chosen for the next message, uploading or uploaded. */
  uploads: readonly UploadView[];
  /** Why some files were not added (too many), if so. */
  fileNotice: string | null;
  onAddFiles: (files: readonly File[]) => void;
  onRemoveFile: (key: string) => void;
  onRetryFile: (key: string) => void;
  /**
   * Queues the body (with the uploaded files); throws with a message a person can read when
   * it cannot be sent. Called only once every chosen file is uploaded.
   */
  onSend: (body: string) => void;
  onSaveEdit: (seq: number, body: string) => void;
  /** ArrowUp in an empty box: edit my last message. */
  onEditLast: () => void;
  onCancel: () => void;
  onTyping: () => void;
}

const HEIGHT_MAX_PX = 180;
const SUGGESTIONS_MAX = 6;
/** "@an" right before the caret, at the start or after a space. */
const MENTION_QUERY = /(?:^|\s)@([A-Za-z0-9_.-]{0,32})$/;

/**
 * Enter sends, Shift+Enter starts a new line; the box grows with its text up to a limit.
 * Also: the reply and edit banners, ArrowUp to edit, Escape to cancel, @-autocomplete, and
 * the draft kept per chat.
 */
export function Composer(props: ComposerProps) {
  const { userId, chatId, editing, replyTo, members } = props;
  const [draft, setDraft] = useState(() => loadDraft(userId, chatId));
  const [error, setError] = useState<string | null>(null);
  const [suggest, setSuggest] = useState<{ query: string; start: number; active: number } | null>(null);
  const textarea = useRef<HTMLTextAreaElement>(null);
  const fileInput = useRef<HTMLInputElement>(null);
  /** The draft put aside while a message is edited in the box. */
  const stashed = useRef<string | null>(null);
  const errorId = useId();
  const listId = useId();
  const tooLong = utf8Bytes(draft) > LIMITS.bodyBytesMax;
  const { uploads } = props;
  const uploading = uploads.filter((u) => u.state === 'uploading').length;
  const failedUploads = uploads.filter((u) => u.state === 'failed').length;
  const hasFiles = uploads.length > 0 && !editing;
  const canSend = editing ? draft.trim() !== '' : (draft.trim() !== '' || hasFiles) && uploading === 0 && failedUploads === 0;

  // Opening a chat puts the cursor where the next message goes, as Slack and Element do, so
  // a chat opened from the keyboard can be written to at once. Not on touch screens: focus
  // there would pop the on-screen keyboard over the conversation one came to read.
  useEffect(() => {
    if (window.matchMedia?.('(pointer: fine)').matches) textarea.current?.focus({ preventScroll: true });
  }, []);

  // Editing puts the message's text in the box; ending it brings the draft back.
  const editingSeq = editing?.seq ?? null;
  useEffect(() => {
    const el = textarea.current;
    if (editing) {
      if (stashed.current === null) stashed.current = el?.value ?? '';
      setDraft(editing.body);
      requestAnimationFrame(() => {
        if (!el) return;
        fitHeight(el);
        el.focus();
        el.setSelectionRange(el.value.length, el.value.length);
      });
    } else if (stashed.current !== null) {
      setDraft(stashed.current);
      stashed.current = null;
    }
    // Only a different message (or none) restarts editing, not a new body from the server.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [editingSeq]);

  useEffect(() => {
    if (replyTo) textarea.current?.focus();
  }, [replyTo]);

  useEffect(() => {
    if (editingSeq === null) saveDraft(userId, chatId, draft);
  }, [userId, chatId, draft, editingSeq]);

  const options = suggest
    ? members.filter((m) => m.id !== userId && m.username.toLowerCase().startsWith(suggest.query.toLowerCase())).slice(0, SUGGESTIONS_MAX)
    : [];
  const showOptions = suggest !== null && options.length > 0;
  const activeIndex = suggest ? Math.min(suggest.active, options.length - 1) : 0;

  function updateSuggestions(el: HTMLTextAreaElement) {
    const before = el.value.slice(0, el.selectionStart ?? el.value.length);
    const match = MENTION_QUERY.exec(before);
    if (!match) return setSuggest(null);
    const query = match[1]!;
    setSuggest((current) => ({ query, start: before.length - query.length - 1, active: current?.query === query ? current.active : 0 }));
  }

  function pick(member: Member) {
    const el = textarea.current;
    if (!el || !suggest) return;
    const caret = el.selectionStart ?? draft.length;
    const next = `${draft.slice(0, suggest.start)}@${member.username} ${draft.slice(caret)}`;
    const position = suggest.start + member.username.length + 2;
    setDraft(next);
    setSuggest(null);
    requestAnimationFrame(() => {
      el.focus();
      el.setSelectionRange(position, position);
    });
  }

  function send() {
    if (draft.trim() === '' && !hasFiles) return;
    if (!editing && uploading > 0) {
      setError(`Wait for ${uploading === 1 ? 'the upload' : `${uploading} uploads`} to finish, then send.`);
      return;
    }
    if (!editing && failedUploads > 0) {
      setError('Remove the files that failed, or retry them, to send.');
      return;
    }
    if (tooLong) {
      setError(`This message is over ${LIMITS.bodyBytesMax / 1024} KiB; shorten it to send.`);
      return;
    }
    try {
      if (editing) {
        if (draft !== editing.body) props.onSaveEdit(editing.seq, draft);
        else props.onCancel();
      } else {
        props.onSend(draft.trim() === '' ? '' : draft);
        setDraft('');
      }
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

  // Files on the clipboard (a screenshot, files copied in a file manager) are attached;
  // text pastes as text.
  function onPaste(event: ClipboardEvent<HTMLTextAreaElement>) {
    const files = Array.from(event.clipboardData?.files ?? []);
    if (files.length === 0 || editing) return;
    event.preventDefault();
    props.onAddFiles(files);
  }

  function onKeyDown(event: KeyboardEvent<HTMLTextAreaElement>) {
    if (event.nativeEvent.isComposing) return;
    if (showOptions) {
      if (event.key === 'ArrowDown' || event.key === 'ArrowUp') {
        event.preventDefault();
        const step = event.key === 'ArrowDown' ? 1 : -1;
        setSuggest({ ...suggest, active: (activeIndex + step + options.length) % options.length });
        return;
      }
      if (event.key === 'Enter' || event.key === 'Tab') {
        event.preventDefault();
        pick(options[activeIndex]!);
        return;
      }
      if (event.key === 'Escape') {
        event.preventDefault();
        setSuggest(null);
        return;
      }
    }
    if (event.key === 'Enter' && !event.shiftKey && !event.altKey) {
      event.preventDefault();
      send();
    } else if (event.key === 'ArrowUp' && draft === '' && !editing) {
      event.preventDefault();
      props.onEditLast();
    } else if (event.key === 'Escape' && (editing || replyTo)) {
      event.preventDefault();
      props.onCancel();
    }
  }

  return (
    <form className="composer" onSubmit={onSubmit}>
      <p id={errorId} className="composer-error form-error" role="alert">
        {error ?? (tooLong ? `Over the ${LIMITS.bodyBytesMax / 1024} KiB limit.` : (props.fileNotice ?? ''))}
      </p>
      {editing ? null : <Attachments uploads={uploads} onRemove={props.onRemoveFile} onRetry={props.onRetryFile} />}
      {editing || replyTo ? (
        <div className="composer-context">
          <Icon name={editing ? 'edit' : 'reply'} />
          <div className="composer-context-text">
            {editing ? (
              <strong>Editing message</strong>
            ) : (
              <>
                <strong>Replying to {replyTo!.sender}</strong>
                <span className="reply-excerpt">{replyTo!.excerpt}</span>
              </>
            )}
          </div>
          <button
            type="button"
            className="icon-button small"
            aria-label={editing ? 'Cancel editing' : 'Cancel reply'}
            title={`${editing ? 'Cancel editing' : 'Cancel reply'} (Escape)`}
            onClick={props.onCancel}
          >
            <Icon name="close" />
          </button>
        </div>
      ) : null}
      {showOptions ? (
        // A listbox, not a <select>: the textarea keeps the focus and points at the active
        // option (aria-activedescendant), as a combobox's popup must.
        // oxlint-disable-next-line jsx-a11y/prefer-tag-over-role, jsx-a11y/no-noninteractive-element-to-interactive-role
        <ul className="mention-options" id={listId} role="listbox" aria-label="People to mention">
          {options.map((member, i) => (
            // oxlint-disable-next-line jsx-a11y/prefer-tag-over-role, jsx-a11y/no-noninteractive-element-to-interactive-role
            <li role="option"
              key={member.id}
              id={`${listId}-${i}`}
              aria-selected={i === activeIndex}
              className={i === activeIndex ? 'mention-option is-active' : 'mention-option'}
              onPointerDown={(event) => {
                event.preventDefault();
                pick(member);
              }}
            >
              @{member.username}
            </li>
          ))}
        </ul>
      ) : null}
      <div className="composer-row">
        <textarea
          ref={textarea}
          aria-label="Message"
          aria-describedby={errorId}
          aria-invalid={tooLong || undefined}
          aria-autocomplete="list"
          aria-controls={showOptions ? listId : undefined}
          aria-activedescendant={showOptions ? `${listId}-${activeIndex}` : undefined}
          rows={1}
          placeholder={editing ? 'Edit your message' : props.placeholder}
          value={draft}
          onChange={(event) => {
            setDraft(event.target.value);
            fitHeight(event.target);
            updateSuggestions(event.target);
            if (error) setError(null);
            if (event.target.value !== '' && !editing) props.onTyping();
          }}
          onSelect={(event) => updateSuggestions(event.currentTarget)}
          onBlur={() => setSuggest(null)}
          onKeyDown={onKeyDown}
          onPaste={onPaste}
          enterKeyHint="send"
        />
        {/* After the box, as in Element: Shift+Tab from the box still reaches the newest
            message's actions, and Tab goes on to the files, then Send. */}
        <button
          type="button"
          className="icon-button attach-button"
          aria-label="Attach files"
          title="Attach files (or paste, or drop them here)"
          disabled={editing !== null || uploads.length >= LIMITS.filesPerMessageMax}
          onClick={() => fileInput.current?.click()}
        >
          <Icon name="paperclip" />
        </button>
        <input
          ref={fileInput}
          type="file"
          multiple
          hidden
          tabIndex={-1}
          aria-hidden="true"
          onChange={(event) => {
            const files = Array.from(event.target.files ?? []);
            // Cleared, so that choosing the same file again is a change too.
            event.target.value = '';
            props.onAddFiles(files);
            setError(null);
            textarea.current?.focus();
          }}
        />
        <button
          type="submit"
          className="send-button"
          aria-label={editing ? 'Save' : 'Send'}
          disabled={!canSend}
          title={editing ? 'Save (Enter)' : uploading > 0 ? 'Waiting for the uploads to finish' : 'Send (Enter)'}
        >
          <Icon name={editing ? 'check' : 'send'} />
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
