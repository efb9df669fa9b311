import { describe, expect, it } from 'vitest';

import type { FileInfo } from '../api/types.ts';
import { downloadUrl, filesSummary, fileKind, fitBox, humanSize, kindLabel, thumbnailUrl } from './format.ts';

describe('humanSize', () => {
  it('speaks in bytes, then KB, MB, GB of 1024, one decimal under ten', () => {
    expect(humanSize(0)).toBe('0 bytes');
    expect(humanSize(1)).toBe('1 byte');
    expect(humanSize(1023)).toBe('1023 bytes');
    expect(humanSize(1024)).toBe('1 KB');
    expect(humanSize(1536)).toBe('1.5 KB');
    expect(humanSize(12_345)).toBe('12 KB');
    expect(humanSize(1024 * 1024 - 1)).toBe('1 MB');
    expect(humanSize(25 * 1024 * 1024)).toBe('25 MB');
    expect(humanSize(3.25 * 1024 ** 3)).toBe('3.3 GB');
  });
});

describe('file kinds', () => {
  it('come from the content type, else from the extension', () => {
    expect(fileKind('image/png')).toBe('image');
    expect(fileKind('application/pdf')).toBe('pdf');
    expect(fileKind('application/zip')).toBe('archive');
    expect(fileKind('text/plain; charset=utf-8')).toBe('text');
    expect(fileKind('application/octet-stream', 'notes.docx')).toBe('document');
    expect(fileKind('application/octet-stream', 'blob')).toBe('other');
    expect(kindLabel('application/pdf', 'a.pdf')).toBe('PDF');
    expect(kindLabel('text/csv', 'data.csv')).toBe('CSV');
    expect(kindLabel('application/octet-stream', 'noext')).toBe('File');
  });
});

describe('filesSummary', () => {
  const photo: FileInfo = { id: 'f1', name: 'photo.jpg', content_type: 'image/jpeg', size: 10, image: { width: 4, height: 3 } };
  const pdf: FileInfo = { id: 'f2', name: 'report.pdf', content_type: 'application/pdf', size: 10 };
  it('names one file, counts several, calls images photos', () => {
    expect(filesSummary([])).toBe('');
    expect(filesSummary([photo])).toBe('🖼️ Photo');
    expect(filesSummary([photo, photo])).toBe('🖼️ 2 photos');
    expect(filesSummary([pdf])).toBe('📎 report.pdf');
    expect(filesSummary([photo, pdf])).toBe('📎 2 files');
  });
});

describe('urls and boxes', () => {
  it('point at the files API', () => {
    expect(downloadUrl('a b')).toBe('/api/v1/files/a%20b?download=1');
    expect(thumbnailUrl('x')).toBe('/api/v1/files/x/thumbnail');
  });

  it('fits an image in a box without enlarging it', () => {
    expect(fitBox(1200, 800, 320, 320)).toEqual({ width: 320, height: 213 });
    expect(fitBox(100, 50, 320, 320)).toEqual({ width: 100, height: 50 });
    expect(fitBox(500, 2000, 320, 320)).toEqual({ width: 80, height: 320 });
  });
});
