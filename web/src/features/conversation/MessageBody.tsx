import { memo, type ReactNode } from 'react';

import { parseBody, type Block, type Inline } from './markdown.ts';

interface MessageBodyProps {
  body: string;
  /** Usernames the server resolved as mentions, and whether each one is me. */
  mentions?: ReadonlyMap<string, boolean>;
}

const NO_MENTIONS: ReadonlyMap<string, boolean> = new Map();

/**
 * A body in Parlor's markdown subset, built as React elements: text is always a text node,
 * only http(s) URLs become links, and no HTML string is ever made.
 */
export const MessageBody = memo(function MessageBody({ body, mentions = NO_MENTIONS }: MessageBodyProps) {
  const blocks = parseBody(body, new Set(mentions.keys()));
  return <div className="message-body">{blocks.map((block, i) => renderBlock(block, i, mentions))}</div>;
});

function renderBlock(block: Block, key: number, mentions: ReadonlyMap<string, boolean>): ReactNode {
  switch (block.kind) {
    case 'paragraph':
      return <p key={key}>{block.children.map((node, i) => renderInline(node, i, mentions))}</p>;
    case 'code':
      return (
        <pre key={key} className="code-block">
          <code>{block.text}</code>
        </pre>
      );
    case 'quote':
      return <blockquote key={key}>{block.children.map((child, i) => renderBlock(child, i, mentions))}</blockquote>;
  }
}

function renderInline(node: Inline, key: number, mentions: ReadonlyMap<string, boolean>): ReactNode {
  switch (node.kind) {
    case 'text':
      return <span key={key}>{node.text}</span>;
    case 'code':
      return <code key={key}>{node.text}</code>;
    case 'link':
      return (
        <a key={key} href={node.href} target="_blank" rel="noopener noreferrer nofollow">
          {node.text}
        </a>
      );
    case 'mention': {
      const me = mentions.get(node.username) ?? false;
      return (
        <span key={key} className={me ? 'mention is-me' : 'mention'} title={me ? 'Mentions you' : undefined}>
          @{node.username}
        </span>
      );
    }
    case 'strong':
      return <strong key={key}>{node.children.map((child, i) => renderInline(child, i, mentions))}</strong>;
    case 'em':
      return <em key={key}>{node.children.map((child, i) => renderInline(child, i, mentions))}</em>;
    case 'strike':
      return <s key={key}>{node.children.map((child, i) => renderInline(child, i, mentions))}</s>;
  }
}
