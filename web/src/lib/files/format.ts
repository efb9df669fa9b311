// How files are named to people: sizes in binary units, a kind by type (for an icon and a
// word), a one-line summary for the chat list, and the URLs the server serves them at.

import type { FileId, FileInfo } from '../api/types.ts';

const UNITS = ['KB', 'MB', 'GB', 'TB'] as const;

/**
 * "512 bytes", "1.5 KB", "25 MB": powers of 1024 (the server's limits are MiB), one decimal
 * under 10, none above, as file managers show them.
 */
export function humanSize(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) return '';
  if (bytes < 1024) return bytes === 1 ? '1 byte' : `${bytes} bytes`;
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const rounded = value < 10 ? Math.round(value * 10) / 10 : Math.round(value);
  // 1023.9 KB rounds to 1024 KB: say 1 MB instead.
  if (rounded >= 1024 && unit < UNITS.length - 1) return `1 ${UNITS[unit + 1]}`;
  return `${rounded} ${UNITS[unit]}`;
}

export type FileKind = 'image' | 'video' | 'audio' | 'pdf' | 'archive' | 'text' | 'document' | 'other';

const ARCHIVES = /^application\/(zip|gzip|x-gzip|x-tar|x-7z-compressed|x-rar-compressed|vnd\.rar|x-bzip2|x-xz|zstd)$/;
const DOCUMENTS = /^application\/(msword|rtf|vnd\.(openxmlformats-officedocument|oasis\.opendocument|ms-excel|ms-powerpoint)[\w.+-]*)$/;

/** A kind by (sniffed) content type, falling back to the name's extension. */
export function fileKind(contentType: string, name = ''): FileKind {
  const type = contentType.toLowerCase().split(';')[0]!.trim();
  if (type.startsWith('image/')) return 'image';
  if (type.startsWith('video/')) return 'video';
  if (type.startsWith('audio/')) return 'audio';
  if (type === 'application/pdf') return 'pdf';
  if (ARCHIVES.test(type)) return 'archive';
  if (DOCUMENTS.test(type)) return 'document';
  if (type.startsWith('text/') || type === 'application/json') return 'text';
  const extension = /\.([A-Za-z0-9]{1,8})$/.exec(name)?.[1]?.toLowerCase() ?? '';
  if (['zip', 'gz', 'tgz', 'tar', '7z', 'rar', 'xz', 'bz2'].includes(extension)) return 'archive';
  if (['doc', 'docx', 'odt', 'xls', 'xlsx', 'ods', 'ppt', 'pptx', 'odp', 'rtf'].includes(extension)) return 'document';
  if (['txt', 'md', 'csv', 'log', 'json'].includes(extension)) return 'text';
  return 'other';
}

const KIND_WORDS: Record<FileKind, string> = {
  image: 'Image',
  video: 'Video',
  audio: 'Audio',
  pdf: 'PDF',
  archive: 'Archive',
  text: 'Text',
  document: 'Document',
  other: 'File',
};

/** "PDF", "Image", or the extension in capitals ("CSV") when it says more than "File". */
export function kindLabel(contentType: string, name = ''): string {
  const kind = fileKind(contentType, name);
  const extension = /\.([A-Za-z0-9]{1,5})$/.exec(name)?.[1]?.toUpperCase();
  if ((kind === 'other' || kind === 'text' || kind === 'document' || kind === 'archive') && extension) return extension;
  return KIND_WORDS[kind];
}

/** The images shown inline: those the server made a thumbnail of. */
export function isInlineImage(file: FileInfo): boolean {
  return file.image !== undefined;
}

/**
 * What a chat list row says of a message's files when it has no text: "🖼 Photo",
 * "🖼 3 photos", "📎 report.pdf", "📎 3 files".
 */
export function filesSummary(files: readonly FileInfo[]): string {
  if (files.length === 0) return '';
  const images = files.filter(isInlineImage).length;
  if (images === files.length) return images === 1 ? '🖼️ Photo' : `🖼️ ${images} photos`;
  return files.length === 1 ? `📎 ${files[0]!.name}` : `📎 ${files.length} files`;
}

const BASE = '/api/v1/files/';

/** The file's bytes, inline for images. */
export function fileUrl(id: FileId): string {
  return BASE + encodeURIComponent(id);
}

/** The same bytes as an attachment: the browser saves them. */
export function downloadUrl(id: FileId): string {
  return `${fileUrl(id)}?download=1`;
}

/** A JPEG or WebP at most 320 px a side (images only). */
export function thumbnailUrl(id: FileId): string {
  return `${fileUrl(id)}/thumbnail`;
}

/** The box an image of `width × height` gets when it must fit in `maxWidth × maxHeight`, never enlarged. */
export function fitBox(width: number, height: number, maxWidth: number, maxHeight: number): { width: number; height: number } {
  if (width <= 0 || height <= 0) return { width: maxWidth, height: maxHeight };
  const scale = Math.min(1, maxWidth / width, maxHeight / height);
  return { width: Math.max(1, Math.round(width * scale)), height: Math.max(1, Math.round(height * scale)) };
}
