import { describe, expect, it } from 'vitest';

import { linkify } from './linkify.ts';

describe('linkify', () => {
  it('leaves plain text alone, markup included', () => {
    const body = '<b>hi</b> & <script>alert(1)</script>';
    expect(linkify(body)).toEqual([{ kind: 'text', text: body }]);
  });

  it('finds http and https links and keeps the text around them', () => {
    expect(linkify('see https://example.com/a?b=1 and http://x.test')).toEqual([
      { kind: 'text', text: 'see ' },
      { kind: 'link', text: 'https://example.com/a?b=1', href: 'https://example.com/a?b=1' },
      { kind: 'text', text: ' and ' },
      { kind: 'link', text: 'http://x.test', href: 'http://x.test/' },
    ]);
  });

  it('leaves sentence punctuation out of the link but keeps balanced parentheses', () => {
    expect(linkify('go to https://example.com/x.')[1]).toMatchObject({ text: 'https://example.com/x' });
    expect(linkify('(https://example.com/y)')[1]).toMatchObject({ text: 'https://example.com/y' });
    expect(linkify('https://en.wikipedia.org/wiki/Foo_(bar)')[0]).toMatchObject({
      text: 'https://en.wikipedia.org/wiki/Foo_(bar)',
    });
  });

  it('never links other schemes', () => {
    for (const body of ['javascript:alert(1)', 'data:text/html,<b>x</b>', 'vbscript:x', 'file:///etc/passwd']) {
      expect(linkify(body)).toEqual([{ kind: 'text', text: body }]);
    }
  });

  it('keeps every character of the body, in order', () => {
    const body = 'a https://b.test/c, d\nhttps://e.test) f';
    expect(
      linkify(body)
        .map((s) => s.text)
        .join(''),
    ).toBe(body);
  });
});
