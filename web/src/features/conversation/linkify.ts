// Splits a message body into text and http(s) links. Nothing else in a body means
// anything: the result is rendered as React text nodes and <a> elements only.

export type Segment = { kind: 'text'; text: string } | { kind: 'link'; text: string; href: string };

const URL_PATTERN = /\bhttps?:\/\/[^\s<>"'`]+/gi;
const SENTENCE_PUNCTUATION = '.,;:!?\'"]}';

export function linkify(body: string): Segment[] {
  const segments: Segment[] = [];
  let last = 0;
  for (const match of body.matchAll(URL_PATTERN)) {
    const start = match.index;
    const url = trimTrailing(match[0]);
    const href = safeHref(url);
    if (!href) continue;
    if (start > last) segments.push({ kind: 'text', text: body.slice(last, start) });
    segments.push({ kind: 'link', text: url, href });
    last = start + url.length;
  }
  if (last < body.length) segments.push({ kind: 'text', text: body.slice(last) });
  return segments;
}

/**
 * "see https://example.com/x." — the period ends the sentence, not the link; a closing
 * parenthesis stays only when the link opened it (Wikipedia-style URLs).
 */
function trimTrailing(url: string): string {
  for (;;) {
    const end = url.at(-1);
    if (end !== undefined && SENTENCE_PUNCTUATION.includes(end)) {
      url = url.slice(0, -1);
    } else if (end === ')' && count(url, '(') < count(url, ')')) {
      url = url.slice(0, -1);
    } else {
      return url;
    }
  }
}

function count(text: string, ch: string): number {
  return text.split(ch).length - 1;
}

function safeHref(candidate: string): string | null {
  try {
    const url = new URL(candidate);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}
