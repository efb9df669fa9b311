// The dependency rules of web/ (ARCHITECTURE.md, `web/`), checked on the source: features never import
// each other, lib never imports features or app, the sync engine stays free of React.

import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

const src = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) return files(full);
    return /\.(ts|tsx)$/.test(name) ? [full] : [];
  });
}

function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/^\s*import\s[^'"]*['"]([^'"]+)['"]/gm)].map((m) => m[1]!);
}

/** The top-level area of a file under src: "features/chats", "lib/sync", "app", … */
function area(file: string): string {
  const parts = path.relative(src, file).split(path.sep);
  return parts[0] === 'features' || parts[0] === 'lib' || parts[0] === 'components' ? `${parts[0]}/${parts[1]}` : parts[0]!;
}

const edges = files(src)
  .filter((file) => !file.endsWith('.test.ts') && !file.endsWith('.test.tsx'))
  .flatMap((file) =>
    imports(file)
      .filter((spec) => spec.startsWith('.'))
      .map((spec) => ({ from: area(file), to: area(path.resolve(path.dirname(file), spec)), file, spec })),
  );

describe('architecture', () => {
  it('sees the imports it checks', () => {
    expect(edges.length).toBeGreaterThan(30);
    expect(edges).toContainEqual(expect.objectContaining({ from: 'app', to: 'features/chats' }));
  });

  it('features never import each other', () => {
    const crossing = edges.filter((e) => e.from.startsWith('features/') && e.to.startsWith('features/') && e.from !== e.to);
    expect(crossing).toEqual([]);
  });

  it('lib and components never import features or app', () => {
    const upward = edges.filter(
      (e) => (e.from.startsWith('lib/') || e.from.startsWith('components/')) && (e.to.startsWith('features/') || e.to === 'app'),
    );
    expect(upward).toEqual([]);
  });

  it('the sync engine and the socket are plain TypeScript without React', () => {
    const reactUsers = files(path.join(src, 'lib')).filter((file) => imports(file).some((spec) => spec.startsWith('react')));
    expect(reactUsers).toEqual([]);
  });

  it('never renders an HTML string', () => {
    const forbidden = ['dangerously', 'SetInnerHTML'].join(''); // not spelled out: this file is checked too
    const users = files(src).filter((file) => readFileSync(file, 'utf8').includes(forbidden));
    expect(users).toEqual([]);
  });

  it('has no barrel files', () => {
    expect(files(src).filter((file) => /^index\.tsx?$/.test(path.basename(file)))).toEqual([]);
  });
});
