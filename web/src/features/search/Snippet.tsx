import { Fragment } from 'react';

import type { SnippetSegment } from '../../lib/api/types.ts';

/** A search hit's snippet as React text, the matched words in <mark> (never an HTML string). */
export function Snippet({ segments }: { segments: readonly SnippetSegment[] }) {
  return (
    <span className="snippet">
      {segments.map((segment, i) => (segment.hit ? <mark key={i}>{segment.text}</mark> : <Fragment key={i}>{segment.text}</Fragment>))}
    </span>
  );
}
