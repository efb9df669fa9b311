// `POST /api/v1/files?name=…` with the file's bytes as the body, over XMLHttpRequest: fetch
// reports no upload progress. What the server answers is turned into an `UploadError` whose
// kind says whether trying again can help.

import type { FileInfo } from '../api/types.ts';
import { CSRF_HEADER } from '../api/client.ts';
import { humanSize } from './format.ts';
import { UploadError, type Uploader, type UploadRequest } from './uploads.ts';

/** The uploader of the browser: one XMLHttpRequest per file, same origin, session cookie. */
export const xhrUpload: Uploader = (file, name, onProgress): UploadRequest => {
  const xhr = new XMLHttpRequest();
  const done = new Promise<FileInfo>((resolve, reject) => {
    xhr.open('POST', `/api/v1/files?name=${encodeURIComponent(name)}`);
    xhr.setRequestHeader(CSRF_HEADER, '1');
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.withCredentials = true;
    xhr.upload.onprogress = (event) => onProgress(event.loaded, event.lengthComputable ? event.total : file.size);
    xhr.onerror = () => reject(uploadErrorOf(0, undefined, file.size));
    xhr.ontimeout = () => reject(uploadErrorOf(0, undefined, file.size));
    xhr.onload = () => {
      let payload: unknown;
      try {
        payload = JSON.parse(xhr.responseText);
      } catch {
        payload = undefined;
      }
      const info = (payload as { file?: FileInfo } | undefined)?.file;
      if (xhr.status === 201 || (xhr.status >= 200 && xhr.status < 300 && info)) {
        if (info && typeof info.id === 'string') resolve(info);
        else reject(new UploadError('other', 'The server answered without the file.'));
      } else {
        reject(uploadErrorOf(xhr.status, payload, file.size));
      }
    };
    xhr.send(file);
  });
  return { done, abort: () => xhr.abort() };
};

/** What a failed upload's answer means to a person (status 0: no answer at all). */
export function uploadErrorOf(status: number, payload: unknown, size: number): UploadError {
  const error = (payload as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  const code = typeof error?.code === 'string' ? error.code : '';
  const message = typeof error?.message === 'string' ? error.message : '';
  if (status === 0) return new UploadError('network', 'Upload failed: the server could not be reached.');
  if (status === 413 || code === 'body_too_large') {
    // The server names its limit in bytes ("a file is at most 8388608 bytes").
    const limit = /at most (\d+) bytes/.exec(message)?.[1];
    const over = limit ? `over the server’s ${humanSize(Number(limit))} limit` : 'over the server’s limit';
    return new UploadError('too_large', `Too large: ${humanSize(size)}, ${over}.`);
  }
  if (code === 'quota_exceeded') return new UploadError('quota', 'Over your storage quota: this file does not fit.');
  if (status === 401) return new UploadError('unauthorized', 'Your session ended: log in again to upload.');
  if (status === 400 || status === 415 || code === 'invalid_input' || code === 'unsupported_media_type') {
    return new UploadError('invalid', message ? `Not accepted: ${message}` : 'This file was not accepted.');
  }
  if (status === 429 || code === 'rate_limited') return new UploadError('busy', 'Too many uploads at once; retry in a moment.');
  if (status === 507 || code === 'storage_full') return new UploadError('busy', 'The server is out of space; retry later.');
  if (status === 503 || status === 502 || status === 504) return new UploadError('busy', 'The server is unavailable; retry in a moment.');
  return new UploadError('other', message ? `Upload failed: ${message}` : `Upload failed (the server answered ${status}).`);
}
