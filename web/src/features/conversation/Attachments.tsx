import { Icon, type IconName } from '../../components/ui/Icon.tsx';
import { fileKind, humanSize } from '../../lib/files/format.ts';
import type { UploadView } from '../../lib/files/uploads.ts';

interface AttachmentsProps {
  uploads: readonly UploadView[];
  onRemove: (key: string) => void;
  onRetry: (key: string) => void;
}

const KIND_ICONS: Partial<Record<string, IconName>> = { video: 'film', audio: 'music', archive: 'archive', pdf: 'fileText', text: 'fileText', document: 'fileText' };

/**
 * The files chosen for the next message, above the box: a preview (images) or an icon,
 * name, size, progress while uploading, and per file a way to remove it (cancelling its
 * upload) or, when the network cut it off, to upload it again from the start.
 */
function offline(): boolean {
  return typeof navigator !== 'undefined' && navigator.onLine === false;
}

export function Attachments({ uploads, onRemove, onRetry }: AttachmentsProps) {
  if (uploads.length === 0) return null;
  return (
    <ul className="attachments" aria-label="Files to send">
      {uploads.map((upload) => {
        const percent = upload.size > 0 ? Math.round((upload.loaded / upload.size) * 100) : 0;
        const removeLabel = upload.state === 'uploading' ? `Cancel upload of ${upload.name}` : `Remove ${upload.name}`;
        return (
          <li key={upload.key} className={`attachment is-${upload.state}`} aria-label={upload.name}>
            <span className="attachment-thumb" aria-hidden="true">
              {upload.previewUrl ? <img src={upload.previewUrl} alt="" /> : <Icon name={KIND_ICONS[fileKind(upload.type, upload.name)] ?? 'file'} />}
            </span>
            <span className="attachment-text">
              <span className="attachment-name" title={upload.name}>
                {upload.name}
              </span>
              {upload.state === 'failed' ? (
                <span className="attachment-error" role="alert">
                  {upload.retryable ? 'Upload failed — ' : upload.error}
                  {upload.retryable ? (
                    <button
                      type="button"
                      className="link-button"
                      aria-label={`Retry uploading ${upload.name}`}
                      title={`${upload.error ?? 'Upload failed.'} Retrying starts the upload over.`}
                      onClick={() => onRetry(upload.key)}
                    >
                      Retry
                    </button>
                  ) : null}
                  {upload.retryable ? (
                    // The API has no resumable uploads: say that a retry sends the file again.
                    <span className="attachment-hint"> ({offline() ? 'starts over once online' : 'starts over'})</span>
                  ) : null}
                </span>
              ) : (
                <span className="attachment-meta">
                  {upload.state === 'done' ? (
                    <span className="attachment-done" title="Uploaded">
                      <Icon name="check" />
                      <span className="visually-hidden">uploaded, </span>
                    </span>
                  ) : null}
                  {upload.state === 'uploading' ? `${humanSize(upload.loaded)} of ${humanSize(upload.size)}` : humanSize(upload.size)}
                </span>
              )}
              {upload.state === 'uploading' ? (
                <progress className="attachment-progress" max={100} value={percent} aria-label={`Uploading ${upload.name}`}>
                  {percent}%
                </progress>
              ) : null}
            </span>
            <button type="button" className="icon-button small attachment-remove" aria-label={removeLabel} title={removeLabel} onClick={() => onRemove(upload.key)}>
              <Icon name="close" />
            </button>
          </li>
        );
      })}
    </ul>
  );
}
