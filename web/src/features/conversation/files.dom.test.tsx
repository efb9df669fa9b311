// @vitest-environment jsdom
import { cleanup, fireEvent, render, screen, within } from '@testing-library/react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import type { FileInfo } from '../../lib/api/types.ts';
import type { UploadView } from '../../lib/files/uploads.ts';
import { Composer } from './Composer.tsx';
import { ImageViewer } from './ImageViewer.tsx';
import { MessageFiles } from './MessageFiles.tsx';

HTMLDialogElement.prototype.showModal ??= function (this: HTMLDialogElement) {
  this.open = true;
};
HTMLDialogElement.prototype.close ??= function (this: HTMLDialogElement) {
  this.open = false;
};

afterEach(cleanup);
beforeEach(() => localStorage.clear());

const photo: FileInfo = { id: 'f-photo', name: 'photo.jpg', content_type: 'image/jpeg', size: 204_800, image: { width: 1200, height: 800 } };
const second: FileInfo = { id: 'f-2', name: 'second.png', content_type: 'image/png', size: 1000, image: { width: 300, height: 300 } };
const report: FileInfo = { id: 'f-pdf', name: 'report.pdf', content_type: 'application/pdf', size: 12_345 };

describe('MessageFiles', () => {
  it('shows an image inline as a lazy thumbnail sized before it loads, and opens the viewer on click', () => {
    const onOpenImage = vi.fn();
    render(<MessageFiles files={[photo]} onOpenImage={onOpenImage} />);
    const img = screen.getByRole('img', { name: 'photo.jpg' }) as HTMLImageElement;
    expect(img.getAttribute('src')).toBe('/api/v1/files/f-photo/thumbnail');
    expect(img.getAttribute('loading')).toBe('lazy');
    expect([img.getAttribute('width'), img.getAttribute('height')]).toEqual(['320', '213']);
    const link = screen.getByRole('link', { name: 'photo.jpg' });
    expect(link.getAttribute('href')).toBe('/api/v1/files/f-photo');
    fireEvent.click(link);
    expect(onOpenImage).toHaveBeenCalledWith([photo], 0);
  });

  it('shows several images as a grid and any other file as a card to download with its type and size', () => {
    const onOpenImage = vi.fn();
    const { container } = render(<MessageFiles files={[photo, report, second]} onOpenImage={onOpenImage} />);
    expect(container.querySelector('.file-images.is-grid')?.querySelectorAll('img')).toHaveLength(2);
    const card = screen.getByRole('link', { name: 'Download report.pdf, PDF, 12 KB' });
    expect(card.getAttribute('href')).toBe('/api/v1/files/f-pdf?download=1');
    expect(card.getAttribute('download')).toBe('report.pdf');
    expect(card.textContent).toContain('PDF · 12 KB');
    fireEvent.click(screen.getByRole('link', { name: 'second.png' }));
    expect(onOpenImage).toHaveBeenCalledWith([photo, second], 1);
  });
});

describe('ImageViewer', () => {
  it('shows the original, goes through the images with the arrows, and offers the download', () => {
    const onClose = vi.fn();
    render(<ImageViewer images={[photo, second]} index={0} onClose={onClose} />);
    const dialog = screen.getByRole('dialog', { name: 'photo.jpg' });
    expect(within(dialog).getByRole('img', { name: 'photo.jpg' }).getAttribute('src')).toBe('/api/v1/files/f-photo');
    expect(within(dialog).getByRole('link', { name: 'Download' }).getAttribute('href')).toBe('/api/v1/files/f-photo?download=1');
    expect(dialog.textContent).toContain('1 of 2');
    fireEvent.keyDown(window, { key: 'ArrowRight' });
    expect(screen.getByRole('dialog', { name: 'second.png' })).toBeTruthy();
    fireEvent.keyDown(window, { key: 'ArrowRight' });
    expect(screen.getByRole('dialog', { name: 'photo.jpg' })).toBeTruthy();
    fireEvent.click(screen.getByRole('button', { name: 'Previous image' }));
    expect(screen.getByRole('dialog', { name: 'second.png' })).toBeTruthy();
    fireEvent(screen.getByRole('dialog'), new Event('cancel', { cancelable: true }));
    expect(onClose).toHaveBeenCalled();
  });
});

function upload(state: UploadView['state'], extra: Partial<UploadView> = {}): UploadView {
  return { key: `k-${state}`, name: `${state}.pdf`, size: 2048, type: 'application/pdf', previewUrl: null, state, loaded: 0, error: null, retryable: false, file: null, ...extra };
}

function composer(uploads: UploadView[]) {
  const props = {
    userId: 'u-me',
    chatId: 'c-files',
    placeholder: 'Message bob',
    members: [],
    replyTo: null,
    editing: null,
    onSend: vi.fn(),
    onSaveEdit: vi.fn(),
    onEditLast: vi.fn(),
    onCancel: vi.fn(),
    onTyping: () => {},
    uploads,
    fileNotice: null,
    onAddFiles: vi.fn(),
    onRemoveFile: vi.fn(),
    onRetryFile: vi.fn(),
  };
  const view = render(<Composer {...props} />);
  return { props, view };
}

describe('Composer with files', () => {
  it('chooses files with the attach button, and takes files pasted into the box', () => {
    const { props, view } = composer([]);
    const input = view.container.querySelector('input[type=file]') as HTMLInputElement;
    expect(input.multiple).toBe(true);
    const click = vi.spyOn(input, 'click');
    fireEvent.click(screen.getByRole('button', { name: 'Attach files' }));
    expect(click).toHaveBeenCalled();
    const file = new File(['x'], 'notes.txt', { type: 'text/plain' });
    fireEvent.change(input, { target: { files: [file] } });
    expect(props.onAddFiles).toHaveBeenCalledWith([file]);

    const pasted = new File(['png'], 'image.png', { type: 'image/png' });
    fireEvent.paste(screen.getByRole('textbox', { name: 'Message' }), { clipboardData: { files: [pasted] } });
    expect(props.onAddFiles).toHaveBeenLastCalledWith([pasted]);
  });

  it('shows each upload’s progress and lets it be cancelled; Send waits for it', () => {
    const { props } = composer([upload('uploading', { loaded: 1024 })]);
    const chip = screen.getByRole('listitem', { name: 'uploading.pdf' });
    expect(within(chip).getByRole('progressbar', { name: 'Uploading uploading.pdf' }).getAttribute('value')).toBe('50');
    expect(chip.textContent).toContain('1 KB of 2 KB');
    expect((screen.getByRole('button', { name: 'Send' }) as HTMLButtonElement).disabled).toBe(true);
    fireEvent.keyDown(screen.getByRole('textbox', { name: 'Message' }), { key: 'Enter' });
    expect(props.onSend).not.toHaveBeenCalled();
    expect(screen.getByRole('alert', { name: '' }).textContent).toBe('Wait for the upload to finish, then send.');
    fireEvent.click(within(chip).getByRole('button', { name: 'Cancel upload of uploading.pdf' }));
    expect(props.onRemoveFile).toHaveBeenCalledWith('k-uploading');
  });

  it('offers Retry for an upload the network cut off, and says why one was refused', () => {
    const { props } = composer([
      upload('failed', { key: 'k-net', name: 'net.pdf', error: 'Upload failed: the server could not be reached.', retryable: true }),
      upload('failed', { key: 'k-big', name: 'big.bin', error: 'Too large: 26 MB, over the 25 MB limit.' }),
    ]);
    const net = screen.getByRole('listitem', { name: 'net.pdf' });
    expect(net.textContent).toContain('Upload failed — Retry');
    fireEvent.click(within(net).getByRole('button', { name: 'Retry uploading net.pdf' }));
    expect(props.onRetryFile).toHaveBeenCalledWith('k-net');
    expect(screen.getByRole('listitem', { name: 'big.bin' }).textContent).toContain('Too large: 26 MB, over the 25 MB limit.');
    expect((screen.getByRole('button', { name: 'Send' }) as HTMLButtonElement).disabled).toBe(true);
  });

  it('sends uploaded files without any text', () => {
    const { props } = composer([upload('done', { file: report })]);
    const send = screen.getByRole('button', { name: 'Send' }) as HTMLButtonElement;
    expect(send.disabled).toBe(false);
    fireEvent.click(send);
    expect(props.onSend).toHaveBeenCalledWith('');
  });
});
