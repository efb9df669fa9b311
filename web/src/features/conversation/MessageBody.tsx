import { memo } from 'react';

import { linkify } from './linkify.ts';

/** A body as text: React escapes it; http(s) links become links, nothing else is interpreted. */
export const MessageBody = memo(function MessageBody({ body }: { body: string }) {
  return (
    <div className="message-body">
      {linkify(body).map((segment, i) =>
        segment.kind === 'link' ? (
          <a key={i} href={segment.href} target="_blank" rel="noopener noreferrer nofollow">
            {segment.text}
          </a>
        ) : (
          <span key={i}>{segment.text}</span>
        ),
      )}
    </div>
  );
});
