// The files chosen for the next message of one conversation, each uploaded as soon as it
// is chosen (`POST /files`), with its progress, and cancelled, retried or refused one by
// one. Plain TypeScript with no React and no direct IO: the upload itself is injected, so
// the unit tests drive it by hand. A message is sent only with uploads that finished (their
// ids); the message then goes through the sync engine's outbox like any other.
//
// States of one upload: uploading → done | failed. Cancelling removes it (and aborts the
// request). A failed upload that was not its file's fault (the network, the server busy)
// can be retried: it starts over from the first byte (the API has no resumable uploads),
// and `retryInterrupted` restarts all of those at once when the browser is back online. A
// failure that is the file's (too large, empty, over the quota) stays until removed, with
// the reason: a file chosen is never dropped silently.

import type { FileInfo } from '../api/types.ts';
import { LIMITS } from '../api/types.ts';
import { humanSize } from './format.ts';

/** Why an upload failed; `retryable` ones may succeed when tried again unchanged. */
export type UploadErrorKind = 'network' | 'too_large' | 'quota' | 'invalid' | 'busy' | 'unauthorized' | 'other';

export class UploadError extends Error {
  readonly kind: UploadErrorKind;

  constructor(kind: UploadErrorKind, message: string) {
    super(message);
    this.name = 'UploadError';
    this.kind = kind;
  }

  get retryable(): boolean {
    return this.kind === 'network' || this.kind === 'busy' || this.kind === 'other';
  }
}

/** One running request: resolves with the stored file, rejects with an `UploadError`. */
export interface UploadRequest {
  done: Promise<FileInfo>;
  /** Stops the request; `done` then never settles into the queue (it is ignored). */
  abort(): void;
}

/** Starts the upload of `file` under `name`, reporting bytes sent as they go. */
export type Uploader = (file: Blob, name: string, onProgress: (loaded: number, total: number) => void) => UploadRequest;

export type UploadState = 'uploading' | 'done' | 'failed';

/** What the composer shows of one chosen file. */
export interface UploadView {
  /** Local to this queue (not the server's file id). */
  key: string;
  name: string;
  size: number;
  /** The type the browser guessed from the name (the server sniffs its own). */
  type: string;
  /** A small picture of the local file (a data: URL), for images once made; else null. */
  previewUrl: string | null;
  state: UploadState;
  /** Bytes sent so far, of `size`. */
  loaded: number;
  error: string | null;
  /** A failed upload that Retry may fix. */
  retryable: boolean;
  /** The stored file, once done. */
  file: FileInfo | null;
}

export interface UploadQueueOptions {
  upload: Uploader;
  /**
   * A small picture of a local image, made off the file's bytes (the app's CSP allows
   * `data:` images, not `blob:`); null when the browser cannot decode it.
   */
  preview?: (file: File) => Promise<string | null>;
  /** Checked before uploading: the server's default, so that a large file is not sent in vain. */
  bytesMax?: number;
  filesMax?: number;
}

interface Entry {
  view: UploadView;
  blob: File;
  request: UploadRequest | null;
}

/** The images a browser shows, worth a local preview. */
const PREVIEWABLE = /^image\/(png|jpeg|gif|webp|avif|bmp|svg\+xml)$/;

export class UploadQueue {
  private readonly options: Required<UploadQueueOptions>;
  private entries: Entry[] = [];
  private snapshot: readonly UploadView[] = [];
  private readonly listeners = new Set<() => void>();
  private nextKey = 1;
  private disposed = false;

  constructor(options: UploadQueueOptions) {
    this.options = {
      preview: () => Promise.resolve(null),
      bytesMax: LIMITS.fileBytesMax,
      filesMax: LIMITS.filesPerMessageMax,
      ...options,
    };
  }

  /** The current uploads, in the order chosen; a new array whenever anything changed. */
  getSnapshot = (): readonly UploadView[] => this.snapshot;

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  /**
   * Adds files and starts uploading each one. Returns what a person should hear when some
   * were not added (over the number a message carries), else null.
   */
  add(files: readonly File[]): string | null {
    if (this.disposed) return null;
    const room = this.options.filesMax - this.entries.length;
    const taken = files.slice(0, Math.max(0, room));
    for (const blob of taken) {
      const type = blob.type;
      const view: UploadView = {
        key: `u${this.nextKey++}`,
        name: blob.name || 'file',
        size: blob.size,
        type,
        previewUrl: null,
        state: 'uploading',
        loaded: 0,
        error: null,
        retryable: false,
        file: null,
      };
      const entry: Entry = { view, blob, request: null };
      this.entries.push(entry);
      const refusal = this.refusal(blob);
      if (refusal) this.fail(entry, refusal, false);
      else this.start(entry);
      if (PREVIEWABLE.test(type) && !refusal) this.makePreview(entry);
    }
    this.changed();
    if (taken.length < files.length) {
      return `A message carries at most ${this.options.filesMax} files; ${files.length - taken.length} not added.`;
    }
    return null;
  }

  /** Removes an upload, aborting it if it still runs. */
  remove(key: string): void {
    const entry = this.entries.find((e) => e.view.key === key);
    if (!entry) return;
    this.drop(entry);
    this.entries = this.entries.filter((e) => e !== entry);
    this.changed();
  }

  /** Uploads a failed file again, from the start. */
  retry(key: string): void {
    const entry = this.entries.find((e) => e.view.key === key);
    if (!entry || entry.view.state !== 'failed' || !entry.view.retryable) return;
    this.start(entry);
    this.changed();
  }

  /** Restarts every upload the network or a busy server interrupted (back online, say). */
  retryInterrupted(): void {
    let any = false;
    for (const entry of this.entries) {
      if (entry.view.state === 'failed' && entry.view.retryable) {
        this.start(entry);
        any = true;
      }
    }
    if (any) this.changed();
  }

  /** Every upload finished: a message may carry them. False when there are none. */
  get ready(): boolean {
    return this.entries.length > 0 && this.entries.every((e) => e.view.state === 'done');
  }

  get uploading(): number {
    return this.entries.filter((e) => e.view.state === 'uploading').length;
  }

  get failed(): number {
    return this.entries.filter((e) => e.view.state === 'failed').length;
  }

  get size(): number {
    return this.entries.length;
  }

  /** The stored files, for a message to carry; [] unless `ready`. */
  readyFiles(): FileInfo[] {
    return this.ready ? this.entries.map((e) => e.view.file!) : [];
  }

  /** Forgets the files a message now carries (call once it was queued); [] unless `ready`. */
  take(): FileInfo[] {
    const files = this.readyFiles();
    if (files.length === 0) return files;
    for (const entry of this.entries) this.drop(entry);
    this.entries = [];
    this.changed();
    return files;
  }

  /** Aborts everything (logout). */
  dispose(): void {
    for (const entry of this.entries) this.drop(entry);
    this.entries = [];
    this.disposed = true;
    this.listeners.clear();
  }

  private refusal(blob: File): string | null {
    if (blob.size === 0) return 'This file is empty.';
    if (blob.size > this.options.bytesMax) {
      return `Too large: ${humanSize(blob.size)}, over the ${humanSize(this.options.bytesMax)} limit.`;
    }
    return null;
  }

  private start(entry: Entry): void {
    entry.view = { ...entry.view, state: 'uploading', loaded: 0, error: null, retryable: false };
    const request = this.options.upload(entry.blob, entry.view.name, (loaded) => {
      if (entry.request !== request) return;
      entry.view = { ...entry.view, loaded: Math.min(loaded, entry.view.size) };
      this.changed();
    });
    entry.request = request;
    request.done.then(
      (file) => {
        if (entry.request !== request || this.disposed) return;
        entry.request = null;
        entry.view = { ...entry.view, state: 'done', loaded: entry.view.size, file };
        this.changed();
      },
      (cause: unknown) => {
        if (entry.request !== request || this.disposed) return;
        entry.request = null;
        const error = cause instanceof UploadError ? cause : new UploadError('other', 'Upload failed.');
        this.fail(entry, error.message, error.retryable);
        this.changed();
      },
    );
  }

  private makePreview(entry: Entry): void {
    this.options.preview(entry.blob).then(
      (url) => {
        if (url === null || this.disposed || !this.entries.includes(entry)) return;
        entry.view = { ...entry.view, previewUrl: url };
        this.changed();
      },
      () => {
        // No preview: the chip shows the file's icon.
      },
    );
  }

  private fail(entry: Entry, message: string, retryable: boolean): void {
    entry.view = { ...entry.view, state: 'failed', error: message, retryable };
  }

  private drop(entry: Entry): void {
    const request = entry.request;
    entry.request = null;
    request?.abort();
  }

  private changed(): void {
    this.snapshot = this.entries.map((e) => e.view);
    for (const listener of this.listeners) listener();
  }
}

/** One queue per conversation, for the whole session: files chosen survive switching chats. */
export class UploadQueues {
  private readonly queues = new Map<string, UploadQueue>();
  private readonly options: UploadQueueOptions;

  constructor(options: UploadQueueOptions) {
    this.options = options;
  }

  of(conversationId: string): UploadQueue {
    let queue = this.queues.get(conversationId);
    if (!queue) {
      queue = new UploadQueue(this.options);
      this.queues.set(conversationId, queue);
    }
    return queue;
  }

  retryInterrupted(): void {
    for (const queue of this.queues.values()) queue.retryInterrupted();
  }

  dispose(): void {
    for (const queue of this.queues.values()) queue.dispose();
    this.queues.clear();
  }
}
