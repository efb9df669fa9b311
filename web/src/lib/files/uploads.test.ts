import { describe, expect, it } from 'vitest';

import type { FileInfo } from '../api/types.ts';
import { uploadErrorOf } from './upload.ts';
import { UploadError, UploadQueue, type Uploader } from './uploads.ts';

/** An uploader driven by hand: each call is a request the test finishes, fails or watches. */
function scriptedUploader() {
  const calls: Array<{
    name: string;
    progress: (loaded: number, total: number) => void;
    resolve: (f: FileInfo) => void;
    reject: (e: unknown) => void;
    aborted: boolean;
  }> = [];
  const upload: Uploader = (_blob, name, onProgress) => {
    let resolve!: (f: FileInfo) => void;
    let reject!: (e: unknown) => void;
    const done = new Promise<FileInfo>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const call = { name, progress: onProgress, resolve, reject, aborted: false };
    calls.push(call);
    return { done, abort: () => void (call.aborted = true) };
  };
  return { upload, calls };
}

function file(name: string, bytes: number, type = 'application/octet-stream'): File {
  return new File([new Uint8Array(bytes)], name, { type });
}

function info(id: string, name: string, size: number): FileInfo {
  return { id, name, content_type: 'application/pdf', size };
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

describe('UploadQueue', () => {
  it('uploads a file as soon as it is chosen and reports its progress', async () => {
    const { upload, calls } = scriptedUploader();
    const queue = new UploadQueue({ upload });
    let notified = 0;
    queue.subscribe(() => notified++);
    queue.add([file('report.pdf', 1000)]);
    expect(calls.map((c) => c.name)).toEqual(['report.pdf']);
    expect(queue.getSnapshot()[0]).toMatchObject({ state: 'uploading', loaded: 0, size: 1000 });
    calls[0]!.progress(400, 1000);
    expect(queue.getSnapshot()[0]!.loaded).toBe(400);
    expect(queue.ready).toBe(false);
    calls[0]!.resolve(info('f1', 'report.pdf', 1000));
    await tick();
    expect(queue.getSnapshot()[0]).toMatchObject({ state: 'done', loaded: 1000, file: { id: 'f1' } });
    expect(queue.ready).toBe(true);
    expect(notified).toBeGreaterThanOrEqual(3);
  });

  it('hands the finished files to a message and empties itself', async () => {
    const { upload, calls } = scriptedUploader();
    const queue = new UploadQueue({ upload, preview: (f) => Promise.resolve(`data:image/png;base64,${f.name}`) });
    queue.add([file('a.png', 10, 'image/png'), file('b.pdf', 20)]);
    await tick();
    expect(queue.getSnapshot().map((u) => u.previewUrl)).toEqual(['data:image/png;base64,a.png', null]);
    calls[0]!.resolve(info('f1', 'a.png', 10));
    await tick();
    expect(queue.take()).toEqual([]); // b.pdf still uploading
    calls[1]!.resolve(info('f2', 'b.pdf', 20));
    await tick();
    expect(queue.take().map((f) => f.id)).toEqual(['f1', 'f2']);
    expect(queue.getSnapshot()).toEqual([]);
  });

  it('cancelling aborts the request and forgets the file, whatever it answers later', async () => {
    const { upload, calls } = scriptedUploader();
    const queue = new UploadQueue({ upload });
    queue.add([file('big.bin', 5000)]);
    const key = queue.getSnapshot()[0]!.key;
    calls[0]!.progress(1000, 5000);
    queue.remove(key);
    expect(calls[0]!.aborted).toBe(true);
    expect(queue.getSnapshot()).toEqual([]);
    calls[0]!.resolve(info('f1', 'big.bin', 5000));
    calls[0]!.progress(5000, 5000);
    await tick();
    expect(queue.getSnapshot()).toEqual([]);
  });

  it('a network failure can be retried, and starts over from the first byte', async () => {
    const { upload, calls } = scriptedUploader();
    const queue = new UploadQueue({ upload });
    queue.add([file('photo.jpg', 3000, 'image/jpeg')]);
    calls[0]!.progress(2000, 3000);
    calls[0]!.reject(uploadErrorOf(0, undefined, 3000));
    await tick();
    expect(queue.getSnapshot()[0]).toMatchObject({ state: 'failed', retryable: true });
    expect(queue.getSnapshot()[0]!.error).toMatch(/could not be reached/);
    expect(queue.failed).toBe(1);
    queue.retry(queue.getSnapshot()[0]!.key);
    expect(calls).toHaveLength(2);
    expect(queue.getSnapshot()[0]).toMatchObject({ state: 'uploading', loaded: 0, error: null });
    calls[1]!.resolve(info('f9', 'photo.jpg', 3000));
    await tick();
    expect(queue.ready).toBe(true);
  });

  it('restarts every interrupted upload when asked (back online), not those refused for the file', async () => {
    const { upload, calls } = scriptedUploader();
    const queue = new UploadQueue({ upload });
    queue.add([file('a.bin', 10), file('b.bin', 10)]);
    calls[0]!.reject(new UploadError('network', 'offline'));
    calls[1]!.reject(uploadErrorOf(409, { error: { code: 'quota_exceeded', message: 'quota' } }, 10));
    await tick();
    queue.retryInterrupted();
    expect(calls.map((c) => c.name)).toEqual(['a.bin', 'b.bin', 'a.bin']);
    expect(queue.getSnapshot()[1]).toMatchObject({ state: 'failed', retryable: false, error: expect.stringMatching(/quota/) });
    queue.retry(queue.getSnapshot()[1]!.key);
    expect(calls).toHaveLength(3);
  });

  it('refuses an empty file and one over the limit without uploading them, and says why', () => {
    const { upload, calls } = scriptedUploader();
    const queue = new UploadQueue({ upload, bytesMax: 25 * 1024 * 1024 });
    queue.add([file('empty.txt', 0), file('huge.bin', 26 * 1024 * 1024)]);
    expect(calls).toEqual([]);
    expect(queue.getSnapshot().map((u) => [u.state, u.error])).toEqual([
      ['failed', 'This file is empty.'],
      ['failed', 'Too large: 26 MB, over the 25 MB limit.'],
    ]);
    expect(queue.ready).toBe(false);
  });

  it('takes at most ten files for one message and says what it left out', () => {
    const { upload, calls } = scriptedUploader();
    const queue = new UploadQueue({ upload });
    expect(queue.add(Array.from({ length: 8 }, (_, i) => file(`${i}.txt`, 1)))).toBeNull();
    expect(queue.add(Array.from({ length: 4 }, (_, i) => file(`x${i}.txt`, 1)))).toMatch(/at most 10 files; 2 not added/);
    expect(queue.size).toBe(10);
    expect(calls).toHaveLength(10);
  });
});

describe('uploadErrorOf', () => {
  it('tells the causes apart, and which may succeed when tried again', () => {
    const cases: Array<[number, unknown, string, boolean]> = [
      [0, undefined, 'network', true],
      [413, { error: { code: 'body_too_large', message: 'a file is at most 26214400 bytes' } }, 'too_large', false],
      [409, { error: { code: 'quota_exceeded', message: '' } }, 'quota', false],
      [400, { error: { code: 'invalid_input', message: 'the file is empty' } }, 'invalid', false],
      [401, undefined, 'unauthorized', false],
      [429, { error: { code: 'rate_limited', message: '' } }, 'busy', true],
      [507, { error: { code: 'storage_full', message: '' } }, 'busy', true],
      [503, undefined, 'busy', true],
      [500, { error: { code: 'internal', message: 'oops' } }, 'other', true],
    ];
    for (const [status, payload, kind, retryable] of cases) {
      const error = uploadErrorOf(status, payload, 100);
      expect([status, error.kind, error.retryable]).toEqual([status, kind, retryable]);
    }
    expect(uploadErrorOf(413, { error: { code: 'body_too_large', message: 'a file is at most 8388608 bytes' } }, 9 * 1024 * 1024).message).toBe(
      'Too large: 9 MB, over the server’s 8 MB limit.',
    );
    expect(uploadErrorOf(413, undefined, 2048).message).toBe('Too large: 2 KB, over the server’s limit.');
  });
});
