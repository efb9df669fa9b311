// Small text must stay readable: WCAG AA asks 4.5:1 for text under 18.66px bold / 24px.
// The colours come from styles.css itself (light and dark), so a change there is checked.

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

const css = readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), 'styles.css'), 'utf8');

function variables(block: string): Record<string, string> {
  return Object.fromEntries([...block.matchAll(/(--[\w-]+):\s*(#[0-9a-f]{6})\s*;/gi)].map((m) => [m[1]!, m[2]!]));
}

const rootStart = css.indexOf(':root {');
const light = variables(css.slice(rootStart, css.indexOf('}', rootStart)));
const darkStart = css.indexOf(':root {', css.indexOf('@media (prefers-color-scheme: dark)'));
const dark = { ...light, ...variables(css.slice(darkStart, css.indexOf('}', darkStart))) };

function luminance(hex: string): number {
  const channel = (i: number) => {
    const v = parseInt(hex.slice(1 + 2 * i, 3 + 2 * i), 16) / 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * channel(0) + 0.7152 * channel(1) + 0.0722 * channel(2);
}

function contrast(a: string, b: string): number {
  const [high, low] = [luminance(a), luminance(b)].sort((x, y) => y - x) as [number, number];
  return (high + 0.05) / (low + 0.05);
}

/** Small text (timestamps, hints, receipts) and the surfaces it sits on. */
const PAIRS: ReadonlyArray<[string, string]> = [
  ['--text-3', '--surface'],
  ['--text-3', '--bg'],
  ['--text-3', '--surface-2'],
  ['--text-3', '--accent-soft'],
  ['--text-3', '--theirs'],
  ['--text-2', '--surface-2'],
  ['--mine-meta', '--mine'],
  ['--mine-text', '--mine'],
  ['--mention-text', '--mention-bg'],
  ['--mention-text', '--mention-me'],
  ['--danger', '--bg'],
  ['--accent', '--surface'],
];

describe('contrast of small text', () => {
  for (const [scheme, colours] of [['light', light], ['dark', dark]] as const) {
    for (const [fg, bg] of PAIRS) {
      it(`${fg} on ${bg} is at least 4.5:1 in ${scheme} mode`, () => {
        expect(colours[fg], fg).toBeDefined();
        expect(colours[bg], bg).toBeDefined();
        expect(contrast(colours[fg]!, colours[bg]!)).toBeGreaterThanOrEqual(4.5);
      });
    }
  }
});
