import { describe, expect, it } from 'vitest';

import { parseBody, parseInline, plainText } from './markdown.ts';

describe('markdown subset', () => {
  it('parses bold, italic, strike and inline code', () => {
    expect(parseInline('a **b** _c_ *d* ~~e~~ `f`')).toEqual([
      { kind: 'text', text: 'a ' },
      { kind: 'strong', children: [{ kind: 'text', text: 'b' }] },
      { kind: 'text', text: ' ' },
      { kind: 'em', children: [{ kind: 'text', text: 'c' }] },
      { kind: 'text', text: ' ' },
      { kind: 'em', children: [{ kind: 'text', text: 'd' }] },
      { kind: 'text', text: ' ' },
      { kind: 'strike', children: [{ kind: 'text', text: 'e' }] },
      { kind: 'text', text: ' ' },
      { kind: 'code', text: 'f' },
    ]);
  });

  it('leaves snake_case, arithmetic and lone markers as text', () => {
    for (const text of ['snake_case_name', '2*3*4', 'a ** b', '_ spaced _', 'unclosed **bold']) {
      expect(parseInline(text)).toEqual([{ kind: 'text', text }]);
    }
  });

  it('does not interpret markup inside code, and keeps links whole', () => {
    expect(parseInline('`**not bold**`')).toEqual([{ kind: 'code', text: '**not bold**' }]);
    expect(parseInline('see https://example.com/a_b_c ok')).toEqual([
      { kind: 'text', text: 'see ' },
      { kind: 'link', text: 'https://example.com/a_b_c', href: 'https://example.com/a_b_c' },
      { kind: 'text', text: ' ok' },
    ]);
    expect(parseInline('javascript:alert(1) <b>x</b>')).toEqual([{ kind: 'text', text: 'javascript:alert(1) <b>x</b>' }]);
  });

  it('parses code blocks and quotes, nesting inline markup in quotes', () => {
    expect(parseBody('> **quoted**\n> more\nafter\n```\nx = *1*\n```')).toEqual([
      {
        kind: 'quote',
        children: [{ kind: 'paragraph', children: [{ kind: 'strong', children: [{ kind: 'text', text: 'quoted' }] }, { kind: 'text', text: '\nmore' }] }],
      },
      { kind: 'paragraph', children: [{ kind: 'text', text: 'after' }] },
      { kind: 'code', text: 'x = *1*' },
    ]);
    expect(parseBody('```\nnever closed')).toEqual([{ kind: 'paragraph', children: [{ kind: 'text', text: '```\nnever closed' }] }]);
  });

  it('marks mentions of the members the server resolved, not e-mail addresses', () => {
    expect(parseInline('hi @ann and @nobody, mail ann@example.org', new Set(['ann']))).toEqual([
      { kind: 'text', text: 'hi ' },
      { kind: 'mention', username: 'ann' },
      { kind: 'text', text: ' and @nobody, mail ann@example.org' },
    ]);
  });

  it('flattens to plain text for previews', () => {
    expect(plainText('**Hey** _you_\n> `x`')).toBe('Hey you x');
  });
});
