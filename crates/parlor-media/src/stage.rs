//! Streaming an upload's body into a staged file, hashing and counting as it goes.

use std::error::Error;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tempfile::TempPath;
use tokio::io::{AsyncWriteExt, BufWriter};

/// How many leading bytes [`Staged::head`] keeps: what [`crate::sniff`] looks at.
pub const HEAD_BYTES: usize = 4096;

/// Writes reach the file in pieces this big, so a body of small chunks costs few blocking
/// writes (tokio runs each file write on its blocking pool).
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// A complete upload in a temporary file of the staging directory, fsynced.
///
/// The file is removed when this is dropped (or [`discard`](Self::discard)ed) unless it was
/// [`keep`](Self::keep)t; a blob store that renamed it away leaves nothing to remove, which is
/// fine.
pub struct Staged {
    path: TempPath,
    len_bytes: u64,
    sha256_hex: String,
    head: Vec<u8>,
}

impl Staged {
    /// Where the file is: a fresh name in the staging directory, never the client's.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The body's length, at least 1 and at most `body_bytes_max` given to [`stage`].
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// The lowercase hex SHA-256 of the body (64 characters): the blob's content address.
    pub fn sha256_hex(&self) -> &str {
        &self.sha256_hex
    }

    /// The first [`HEAD_BYTES`] of the body, or all of it if it is shorter.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Keeps the file past this value's life and says where it is.
    pub fn keep(self) -> io::Result<PathBuf> {
        self.path.keep().map_err(|e| e.error)
    }

    /// Removes the file now, reporting a failure a drop would ignore. A file already gone
    /// (renamed away by a blob store) is fine.
    pub fn discard(self) -> io::Result<()> {
        match self.path.close() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

// By hand: a derived Debug would print the 4 KiB head into every log line.
impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("path", &self.path())
            .field("len_bytes", &self.len_bytes)
            .field("sha256_hex", &self.sha256_hex)
            .finish_non_exhaustive()
    }
}

/// Why a body was not staged. Nothing is left in the staging directory in every case.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The body passed the limit; reading stopped there.
    #[error("body is longer than {body_bytes_max} bytes")]
    TooLarge { body_bytes_max: u64 },
    /// The body had no bytes.
    #[error("body is empty")]
    Empty,
    /// The staging filesystem is full (or the quota is spent): wait, or free space.
    #[error("no space left to stage the body")]
    StorageFull(#[source] io::Error),
    /// The body's stream failed (the client went away, a read timed out).
    #[error("reading the body failed")]
    Body(#[source] Box<dyn Error + Send + Sync>),
    /// Creating, writing or syncing the staged file failed for another reason.
    #[error("writing the staged file failed")]
    Io(#[source] io::Error),
}

/// Writes `body` to a new temporary file in `dir`, computing its SHA-256 and length, and
/// fsyncs the file before returning.
///
/// Refuses a body longer than `body_bytes_max` as soon as a chunk passes it (nothing past the
/// limit is written) and an empty body; in every failure, and when the returned future is
/// dropped before it completes, the partial file is removed. Memory use is one chunk, the
/// write buffer and [`HEAD_BYTES`], whatever the body's size.
///
/// The directory entry is not synced: the staged file only matters until it is handed to a
/// blob store, which makes its own copy or rename durable.
pub async fn stage<S, E>(body: S, dir: &Path, body_bytes_max: u64) -> Result<Staged, StageError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<Box<dyn Error + Send + Sync>>,
{
    let (file, path) = create_in(dir.to_owned()).await?;
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, tokio::fs::File::from_std(file));
    let mut hasher = Sha256::new();
    let mut len_bytes: u64 = 0;
    let mut head = Vec::with_capacity(HEAD_BYTES);

    // On every early return `path` is dropped, which removes the file.
    let mut body = pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| StageError::Body(e.into()))?;
        len_bytes = len_bytes.saturating_add(chunk.len() as u64);
        if len_bytes > body_bytes_max {
            return Err(StageError::TooLarge { body_bytes_max });
        }
        hasher.update(&chunk);
        let wanted = (HEAD_BYTES - head.len()).min(chunk.len());
        head.extend_from_slice(&chunk[..wanted]);
        writer.write_all(&chunk).await.map_err(write_error)?;
    }
    if len_bytes == 0 {
        return Err(StageError::Empty);
    }
    writer.flush().await.map_err(write_error)?;
    // Some filesystems (delayed allocation, NFS) only report a full disk here.
    writer.into_inner().sync_all().await.map_err(write_error)?;

    Ok(Staged {
        path,
        len_bytes,
        sha256_hex: hex(&hasher.finalize()),
        head,
    })
}

/// Creates the file with a random name (`O_EXCL`, mode 0600) on the blocking pool.
async fn create_in(dir: PathBuf) -> Result<(std::fs::File, TempPath), StageError> {
    let created = tokio::task::spawn_blocking(move || {
        tempfile::Builder::new()
            .prefix(".upload-")
            .suffix(".part")
            .tempfile_in(dir)
    })
    .await
    .map_err(|e| StageError::Io(io::Error::other(e)))?;
    Ok(created.map_err(write_error)?.into_parts())
}

/// A full disk or a spent quota is its own error: the caller waits rather than fails.
fn write_error(e: io::Error) -> StageError {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StageError::StorageFull(e),
        _ => StageError::Io(e),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn enospc_and_edquot_are_storage_full() {
        // Linux errno values; the kinds are what `write_error` matches on.
        for errno in [28, 122] {
            let e = io::Error::from_raw_os_error(errno);
            assert!(
                matches!(write_error(e), StageError::StorageFull(_)),
                "errno {errno}"
            );
        }
        assert!(matches!(
            write_error(io::Error::from(io::ErrorKind::PermissionDenied)),
            StageError::Io(_)
        ));
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
