// @vitest-environment jsdom
import { act, cleanup, fireEvent, render, screen } from '@testing-library/react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { Composer } from './Composer.tsx';
import { MessageBody } from './MessageBody.tsx';

afterEach(cleanup);
beforeEach(() => localStorage.clear());

const members = [
  { id: 'u-ann', username: 'ann', online: true },
  { id: 'u-anton', username: 'anton', online: false },
  { id: 'u-ben', username: 'ben', online: false },
];

function composer(overrides: Partial<Parameters<typeof Composer>[0]> = {}) {
  const props = {
    userId: 'u-me',
    chatId: 'c-1',
    placeholder: 'Message bob',
    members,
    replyTo: null,
    editing: null,
    onSend: vi.fn(),
    onSaveEdit: vi.fn(),
    onEditLast: vi.fn(),
    onCancel: vi.fn(),
    onTyping: () => {},
    uploads: [],
    fileNotice: null,
    onAddFiles: vi.fn(),
    onRemoveFile: vi.fn(),
    onRetryFile: vi.fn(),
    ...overrides,
  };
  const view = render(<Composer {...props} />);
  const box = screen.getByRole('textbox', { name: 'Message' }) as HTMLTextAreaElement;
  return { props, view, box };
}

function type(box: HTMLTextAreaElement, value: string) {
  fireEvent.change(box, { target: { value, selectionStart: value.length, selectionEnd: value.length } });
}

describe('MessageBody', () => {
  it('renders markup as text and runs nothing', () => {
    const payload = '<img src=x onerror="alert(1)"><script>alert(2)</script>';
    const { container } = render(<MessageBody body={payload} />);
    expect(container.textContent).toBe(payload);
    expect(container.querySelector('img, script')).toBeNull();
  });

  it('makes http(s) links clickable, safely', () => {
    render(<MessageBody body="docs at https://example.com/docs." />);
    const link = screen.getByRole('link', { name: 'https://example.com/docs' });
    expect(link.getAttribute('href')).toBe('https://example.com/docs');
    expect(link.getAttribute('rel')).toContain('noopener');
  });

  it('renders the markdown subset as elements and highlights mentions of me', () => {
    const { container } = render(
      <MessageBody body={'**bold** _it_ ~~gone~~ `code` @ann @ben\n> quoted\n```\n<b>raw</b>\n```'} mentions={new Map([['ann', true], ['ben', false]])} />,
    );
    expect(container.querySelector('strong')?.textContent).toBe('bold');
    expect(container.querySelector('em')?.textContent).toBe('it');
    expect(container.querySelector('s')?.textContent).toBe('gone');
    expect(container.querySelector('p code')?.textContent).toBe('code');
    expect(container.querySelector('blockquote')?.textContent).toBe('quoted');
    expect(container.querySelector('pre code')?.textContent).toBe('<b>raw</b>');
    expect(container.querySelector('b')).toBeNull();
    expect(container.querySelector('.mention.is-me')?.textContent).toBe('@ann');
    expect(container.querySelectorAll('.mention')).toHaveLength(2);
  });
});

describe('Composer', () => {
  it('sends with Enter, starts a new line with Shift+Enter, and clears after sending', () => {
    const { props, box } = composer();
    type(box, 'line one');
    fireEvent.keyDown(box, { key: 'Enter', shiftKey: true });
    expect(props.onSend).not.toHaveBeenCalled();
    fireEvent.keyDown(box, { key: 'Enter' });
    expect(props.onSend).toHaveBeenCalledWith('line one');
    expect(box.value).toBe('');
  });

  it('does not send blank text, and says so when a body is over the limit', () => {
    const { props, box } = composer();
    type(box, '   ');
    fireEvent.keyDown(box, { key: 'Enter' });
    expect(props.onSend).not.toHaveBeenCalled();
    expect((screen.getByRole('button', { name: 'Send' }) as HTMLButtonElement).disabled).toBe(true);
    type(box, 'x'.repeat(16 * 1024 + 1));
    fireEvent.keyDown(box, { key: 'Enter' });
    expect(props.onSend).not.toHaveBeenCalled();
    expect(screen.getByRole('alert').textContent).toMatch(/16 KiB/);
  });

  it('shows why the engine refused a message', () => {
    const { box } = composer({
      onSend: vi.fn(() => {
        throw new Error('A message cannot contain NUL characters.');
      }),
    });
    type(box, 'a\0b');
    fireEvent.keyDown(box, { key: 'Enter' });
    expect(screen.getByRole('alert').textContent).toBe('A message cannot contain NUL characters.');
    expect(box.value).toBe('a\0b');
  });

  it('suggests members after @, moves with the arrows and picks with Enter or Tab', () => {
    const { props, box } = composer();
    type(box, 'hi @an');
    const options = screen.getAllByRole('option');
    expect(options.map((o) => o.textContent)).toEqual(['@ann', '@anton']);
    expect(box.getAttribute('aria-activedescendant')).toBe(options[0]!.id);
    fireEvent.keyDown(box, { key: 'ArrowDown' });
    expect(screen.getAllByRole('option')[1]!.getAttribute('aria-selected')).toBe('true');
    fireEvent.keyDown(box, { key: 'Enter' });
    expect(box.value).toBe('hi @anton ');
    expect(props.onSend).not.toHaveBeenCalled();
    type(box, 'hi @anton and @b');
    fireEvent.keyDown(box, { key: 'Tab' });
    expect(box.value).toBe('hi @anton and @ben ');
    type(box, 'x @a');
    fireEvent.keyDown(box, { key: 'Escape' });
    expect(screen.queryByRole('listbox')).toBeNull();
  });

  it('edits the last message with ArrowUp in an empty box and cancels with Escape', () => {
    const { props, box, view } = composer();
    fireEvent.keyDown(box, { key: 'ArrowUp' });
    expect(props.onEditLast).toHaveBeenCalled();
    type(box, 'my draft');
    view.rerender(<Composer {...props} editing={{ seq: 4, body: 'old text' }} />);
    expect(box.value).toBe('old text');
    expect(screen.getByText('Editing message')).toBeTruthy();
    type(box, 'new text');
    fireEvent.keyDown(box, { key: 'Enter' });
    expect(props.onSaveEdit).toHaveBeenCalledWith(4, 'new text');
    fireEvent.keyDown(box, { key: 'Escape' });
    expect(props.onCancel).toHaveBeenCalled();
    view.rerender(<Composer {...props} editing={null} />);
    expect(box.value).toBe('my draft');
  });

  it('shows what a reply answers, and cancels it', () => {
    const { props } = composer({ replyTo: { seq: 2, sender: 'ann', excerpt: 'the original' } });
    expect(screen.getByText('Replying to ann')).toBeTruthy();
    fireEvent.click(screen.getByRole('button', { name: 'Cancel reply' }));
    expect(props.onCancel).toHaveBeenCalled();
  });

  it('keeps a draft per chat and user across remounts', () => {
    const first = composer();
    type(first.box, 'half a thought');
    first.view.unmount();
    const again = composer();
    expect(again.box.value).toBe('half a thought');
    again.view.unmount();
    const other = composer({ chatId: 'c-2' });
    expect(other.box.value).toBe('');
    act(() => {});
  });
});
