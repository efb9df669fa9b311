// @vitest-environment jsdom
import { cleanup, fireEvent, render, screen } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';

import { Composer } from './Composer.tsx';
import { MessageBody } from './MessageBody.tsx';

afterEach(cleanup);

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
});

describe('Composer', () => {
  it('sends with Enter, starts a new line with Shift+Enter, and clears after sending', () => {
    const onSend = vi.fn();
    render(<Composer placeholder="Message bob" onSend={onSend} onTyping={() => {}} />);
    const box = screen.getByRole('textbox', { name: 'Message' }) as HTMLTextAreaElement;

    fireEvent.change(box, { target: { value: 'line one' } });
    fireEvent.keyDown(box, { key: 'Enter', shiftKey: true });
    expect(onSend).not.toHaveBeenCalled();

    fireEvent.keyDown(box, { key: 'Enter' });
    expect(onSend).toHaveBeenCalledWith('line one');
    expect(box.value).toBe('');
  });

  it('does not send blank text, and says so when a body is over the limit', () => {
    const onSend = vi.fn();
    render(<Composer placeholder="Message bob" onSend={onSend} onTyping={() => {}} />);
    const box = screen.getByRole('textbox', { name: 'Message' });
    fireEvent.change(box, { target: { value: '   ' } });
    fireEvent.keyDown(box, { key: 'Enter' });
    expect(onSend).not.toHaveBeenCalled();
    expect((screen.getByRole('button', { name: 'Send' }) as HTMLButtonElement).disabled).toBe(true);

    fireEvent.change(box, { target: { value: 'x'.repeat(16 * 1024 + 1) } });
    fireEvent.keyDown(box, { key: 'Enter' });
    expect(onSend).not.toHaveBeenCalled();
    expect(screen.getByRole('alert').textContent).toMatch(/16 KiB/);
  });

  it('shows why the engine refused a message', () => {
    const onSend = vi.fn(() => {
      throw new Error('A message cannot contain NUL characters.');
    });
    render(<Composer placeholder="Message bob" onSend={onSend} onTyping={() => {}} />);
    const box = screen.getByRole('textbox', { name: 'Message' }) as HTMLTextAreaElement;
    fireEvent.change(box, { target: { value: 'a\0b' } });
    fireEvent.keyDown(box, { key: 'Enter' });
    expect(screen.getByRole('alert').textContent).toBe('A message cannot contain NUL characters.');
    expect(box.value).toBe('a\0b');
  });
});
