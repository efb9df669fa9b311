import type { MouseEvent } from 'react';

import { Icon, type IconName } from '../../components/ui/Icon.tsx';
import type { FileInfo } from '../../lib/api/types.ts';
import { downloadUrl, fileKind, fileUrl, fitBox, humanSize, isInlineImage, kindLabel, thumbnailUrl, type FileKind } from '../../lib/files/format.ts';

/** The largest box of one image alone (the server's thumbnails are at most 320 px a side). */
const SINGLE_BOX_PX = 320;

const KIND_ICONS: Record<FileKind, IconName> = {
  image: 'image',
  video: 'film',
  audio: 'music',
  pdf: 'fileText',
  archive: 'archive',
  text: 'fileText',
  document: 'fileText',
  other: 'file',
};

interface MessageFilesProps {
  files: readonly FileInfo[];
  /** Opens the full-size viewer on the message's images, at `index` among them. */
  onOpenImage: (images: readonly FileInfo[], index: number) => void;
}

/**
 * A message's files: images inline as thumbnails (one alone at its own proportions, several
 * as a grid), sized before they load so nothing jumps; every other file as a card to
 * download. Each image is a link to the original, so a middle click opens it in a tab.
 */
export function MessageFiles({ files, onOpenImage }: MessageFilesProps) {
  const images = files.filter(isInlineImage);
  const others = files.filter((f) => !isInlineImage(f));
  const open = (event: MouseEvent<HTMLAnchorElement>, index: number) => {
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    onOpenImage(images, index);
  };
  return (
    <div className="message-files">
      {images.length > 0 ? (
        <div className={images.length === 1 ? 'file-images is-single' : 'file-images is-grid'}>
          {images.map((image, i) => {
            const natural = image.image!;
            const box = images.length === 1 ? fitBox(natural.width, natural.height, SINGLE_BOX_PX, SINGLE_BOX_PX) : null;
            return (
              <a key={image.id} className="file-image" href={fileUrl(image.id)} title={`Open ${image.name}`} onClick={(event) => open(event, i)}>
                <img
                  src={thumbnailUrl(image.id)}
                  alt={image.name}
                  loading="lazy"
                  decoding="async"
                  width={box?.width ?? natural.width}
                  height={box?.height ?? natural.height}
                />
              </a>
            );
          })}
        </div>
      ) : null}
      {others.map((file) => (
        <FileCard key={file.id} file={file} />
      ))}
    </div>
  );
}

function FileCard({ file }: { file: FileInfo }) {
  const kind = kindLabel(file.content_type, file.name);
  const size = humanSize(file.size);
  return (
    <a className="file-card" href={downloadUrl(file.id)} download={file.name} aria-label={`Download ${file.name}, ${kind}, ${size}`} title={`Download ${file.name}`}>
      <span className="file-card-icon" aria-hidden="true">
        <Icon name={KIND_ICONS[fileKind(file.content_type, file.name)]} />
      </span>
      <span className="file-card-text">
        <span className="file-card-name">{file.name}</span>
        <span className="file-card-meta">
          {kind} · {size}
        </span>
      </span>
      <span className="file-card-download" aria-hidden="true">
        <Icon name="download" />
      </span>
    </a>
  );
}
