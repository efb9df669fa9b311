import { useEffect, useState } from 'react';

import { Dialog } from '../../components/ui/Dialog.tsx';
import { Icon } from '../../components/ui/Icon.tsx';
import type { FileInfo } from '../../lib/api/types.ts';
import { downloadUrl, fileUrl, humanSize } from '../../lib/files/format.ts';

interface ImageViewerProps {
  images: readonly FileInfo[];
  index: number;
  onClose: () => void;
}

/**
 * A message's images at full size, one at a time: Escape closes (the dialog's), the arrow
 * keys and the buttons go to the previous and next one, and Download saves the original.
 */
export function ImageViewer({ images, index, onClose }: ImageViewerProps) {
  const [at, setAt] = useState(() => Math.min(Math.max(index, 0), images.length - 1));
  const image = images[at]!;
  const several = images.length > 1;

  useEffect(() => {
    if (!several) return;
    const onKey = (event: KeyboardEvent) => {
      if (event.key === 'ArrowLeft') setAt((i) => (i - 1 + images.length) % images.length);
      else if (event.key === 'ArrowRight') setAt((i) => (i + 1) % images.length);
    };
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, [several, images.length]);

  return (
    <Dialog title={image.name} onClose={onClose} className="is-viewer">
      <figure className="viewer-figure">
        <img key={image.id} src={fileUrl(image.id)} alt={image.name} width={image.image?.width} height={image.image?.height} />
        <figcaption className="viewer-caption">
          {several ? (
            <span>
              {at + 1} of {images.length} ·{' '}
            </span>
          ) : null}
          {image.image ? `${image.image.width} × ${image.image.height} · ` : ''}
          {humanSize(image.size)}
        </figcaption>
      </figure>
      <div className="viewer-actions">
        {several ? (
          <button type="button" className="icon-button" aria-label="Previous image" title="Previous image (←)" onClick={() => setAt((at - 1 + images.length) % images.length)}>
            <Icon name="prev" />
          </button>
        ) : null}
        <a className="button" href={downloadUrl(image.id)} download={image.name} data-autofocus>
          <Icon name="download" /> Download
        </a>
        {several ? (
          <button type="button" className="icon-button" aria-label="Next image" title="Next image (→)" onClick={() => setAt((at + 1) % images.length)}>
            <Icon name="next" />
          </button>
        ) : null}
      </div>
    </Dialog>
  );
}
