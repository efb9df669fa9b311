// The safe markdown subset of message bodies, parsed into a small tree that MessageBody
// turns into React elements (never an HTML string): **bold**, _italic_ or *italic*,
// ~~strike~~, `inline code`, ``` code blocks ```, "> " quotes, http(s) links (linkify.ts)
// and @mentions of the members the server resolved. Anything else stays text.

import { linkify } from './linkify.ts';

export type Inline =
  | { kind: 'text'; text: string }
  | { kind: 'code'; text: string }
  | { kind: 'strong' | 'em' | 'strike'; children: Inline[] }
  | { kind: 'link'; text: string; href: string }
  | { kind: 'mention'; username: string };

export type Block =
  | { kind: 'paragraph'; children: Inline[] }
  | { kind: 'code'; text: string }
  | { kind: 'quote'; children: Block[] };

/** How deep emphasis and quotes nest before the rest is taken as text (bounds the work). */
const DEPTH_MAX = 8;
const FENCE = /^\s*```/;
const QUOTE = /^>\s?/;

/** `mentionable`: the usernames this body may mention (those the server resolved). */
export function parseBody(body: string, mentionable: ReadonlySet<string> = new Set()): Block[] {
  return parseBlocks(body.split('\n'), mentionable, 0);
}

function parseBlocks(lines: string[], mentionable: ReadonlySet<string>, depth: number): Block[] {
  const blocks: Block[] = [];
  let paragraph: string[] = [];
  const flush = () => {
    if (paragraph.length === 0) return;
    blocks.push({ kind: 'paragraph', children: parseInline(paragraph.join('\n'), mentionable, depth) });
    paragraph = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (FENCE.test(line)) {
      const close = lines.findIndex((l, j) => j > i && FENCE.test(l));
      if (close < 0) {
        paragraph.push(line);
        continue;
      }
      flush();
      blocks.push({ kind: 'code', text: lines.slice(i + 1, close).join('\n') });
      i = close;
    } else if (QUOTE.test(line) && depth < DEPTH_MAX) {
      flush();
      const quoted: string[] = [];
      while (i < lines.length && QUOTE.test(lines[i]!)) {
        quoted.push(lines[i]!.replace(QUOTE, ''));
        i++;
      }
      i--;
      blocks.push({ kind: 'quote', children: parseBlocks(quoted, mentionable, depth + 1) });
    } else {
      paragraph.push(line);
    }
  }
  flush();
  return blocks;
}

interface Match {
  start: number;
  end: number;
  node: Inline;
}

const CODE = /`([^`\n]+)`/;
const EMPHASIS: ReadonlyArray<{ kind: 'strong' | 'em' | 'strike'; pattern: RegExp }> = [
  { kind: 'strong', pattern: /\*\*(?=\S)([\s\S]*?\S)\*\*/ },
  { kind: 'strike', pattern: /~~(?=\S)([\s\S]*?\S)~~/ },
  // A single * or _ only around words, so snake_case_names and 2*3*4 stay text.
  { kind: 'em', pattern: /(?<![\w*])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?![\w*])/ },
  { kind: 'em', pattern: /(?<![\w_])_(?=[^\s_])([^_\n]*?[^\s_])_(?![\w_])/ },
];
const MENTION = /(?<![\w@.])@([A-Za-z0-9_.-]{3,32})/g;

export function parseInline(text: string, mentionable: ReadonlySet<string> = new Set(), depth = 0): Inline[] {
  const out: Inline[] = [];
  let rest = text;
  while (rest !== '') {
    const next = firstMatch(rest, mentionable, depth);
    if (!next) {
      pushText(out, rest, mentionable);
      break;
    }
    if (next.start > 0) pushText(out, rest.slice(0, next.start), mentionable);
    out.push(next.node);
    rest = rest.slice(next.end);
  }
  return out;
}

/** The earliest construct in `text`; on a tie code wins, then links, then emphasis. */
function firstMatch(text: string, mentionable: ReadonlySet<string>, depth: number): Match | null {
  const candidates: Match[] = [];
  const code = CODE.exec(text);
  if (code) candidates.push({ start: code.index, end: code.index + code[0].length, node: { kind: 'code', text: code[1]! } });
  let offset = 0;
  for (const segment of linkify(text)) {
    if (segment.kind === 'link') {
      candidates.push({ start: offset, end: offset + segment.text.length, node: { kind: 'link', text: segment.text, href: segment.href } });
      break;
    }
    offset += segment.text.length;
  }
  if (depth < DEPTH_MAX) {
    for (const { kind, pattern } of EMPHASIS) {
      const m = pattern.exec(text);
      if (m) {
        candidates.push({
          start: m.index,
          end: m.index + m[0].length,
          node: { kind, children: parseInline(m[1]!, mentionable, depth + 1) },
        });
      }
    }
  }
  let best: Match | null = null;
  for (const c of candidates) if (!best || c.start < best.start) best = c;
  return best;
}

function pushText(out: Inline[], text: string, mentionable: ReadonlySet<string>): void {
  let last = 0;
  if (mentionable.size > 0) {
    for (const m of text.matchAll(MENTION)) {
      const username = m[1]!;
      if (!mentionable.has(username)) continue;
      if (m.index > last) out.push({ kind: 'text', text: text.slice(last, m.index) });
      out.push({ kind: 'mention', username });
      last = m.index + m[0].length;
    }
  }
  if (last < text.length) out.push({ kind: 'text', text: text.slice(last) });
}

/** The body as plain text (previews, notifications, reply excerpts): the markers dropped. */
export function plainText(body: string): string {
  return flatten(parseBody(body)).replace(/\s+/g, ' ').trim();
}

function flatten(blocks: Block[]): string {
  return blocks
    .map((b) => (b.kind === 'code' ? b.text : b.kind === 'quote' ? flatten(b.children) : flattenInline(b.children)))
    .join(' ');
}

function flattenInline(nodes: Inline[]): string {
  return nodes
    .map((n) => {
      switch (n.kind) {
        case 'text':
        case 'code':
        case 'link':
          return n.text;
        case 'mention':
          return `@${n.username}`;
        default:
          return flattenInline(n.children);
      }
    })
    .join('');
}
