//! [`DirBlobStore`]: blobs as files under one directory (the data directory's `blobs/`).
//!
//! Layout: `<root>/ab/cdef…` for the key `abcdef…` (the first two hex digits fan the files
//! out over at most 256 directories), and `<root>/.tmp/` for copies being written. A blob
//! appears under its final name in one step, whole: a hard link to the staged file (same
//! filesystem) or a rename of a fsynced copy, followed by a fsync of the directory. So a
//! final name never holds a partial file, and `.tmp/` holds only what a crash interrupted,
//! which `open` removes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parlor_core::BackendError;
use parlor_core::blobs::{BlobKey, BlobRead, BlobStore, resolve_range};
use tokio::io::AsyncReadExt;
use uuid::Uuid;

/// Bytes per chunk of a body: large enough that a read costs few trips to the blocking
/// pool, small enough that many concurrent downloads stay cheap.
const CHUNK_BYTES: u64 = 64 * 1024;
const TMP_DIR: &str = ".tmp";

/// A [`BlobStore`] on a local directory.
///
/// `put_file` hard-links the staged file into place when it is on the same filesystem (no
/// copy, and the caller still removes its own name afterwards), else copies it to
/// `.tmp/`, fsyncs and renames the copy. Either way the blob's directory is fsynced before
/// `Ok`. A full device (ENOSPC, EDQUOT) is `StorageFull`, with the partial copy removed.
/// Blocking file IO runs on tokio's blocking pool.
/// A handle: clones share the directory.
#[derive(Clone, Debug)]
pub struct DirBlobStore {
    root: PathBuf,
}

impl DirBlobStore {
    /// Opens the blob directory `root`, creating it if needed, and removes the copies a crash
    /// left half-written in `root/.tmp/`.
    pub fn open(root: &Path) -> Result<DirBlobStore, BackendError> {
        let tmp = root.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(|error| io_error("create", &tmp, error))?;
        let entries = fs::read_dir(&tmp).map_err(|error| io_error("read", &tmp, error))?;
        for entry in entries {
            let path = entry.map_err(|error| io_error("read", &tmp, error))?.path();
            fs::remove_file(&path).map_err(|error| io_error("remove", &path, error))?;
        }
        // Every fan-out directory, up front: a put then never creates one, so it never
        // depends on a directory entry that another put created and has not fsynced yet.
        for fan in 0..=255u8 {
            let dir = root.join(format!("{fan:02x}"));
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(io_error("create", &dir, error)),
            }
        }
        sync_dir(root)?;
        Ok(DirBlobStore {
            root: root.to_path_buf(),
        })
    }

    /// Where the blob `key` lives: `<root>/ab/cdef…`.
    pub fn path_of(&self, key: &BlobKey) -> PathBuf {
        let (fan, rest) = key.as_str().split_at(2);
        self.root.join(fan).join(rest)
    }

    fn put_blocking(&self, key: &BlobKey, staged: &Path, len: u64) -> Result<(), BackendError> {
        let found = match fs::metadata(staged) {
            Ok(metadata) if metadata.is_file() => metadata.len(),
            Ok(_) => {
                return Err(BackendError::rejected(format!(
                    "the staged {} is not a file",
                    staged.display()
                )));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(BackendError::rejected(format!(
                    "the staged file {} is missing",
                    staged.display()
                ))
                .with_source(error));
            }
            Err(error) => return Err(io_error("read", staged, error)),
        };
        if found != len {
            return Err(BackendError::rejected(format!(
                "the staged file {} has {found} bytes, not {len}",
                staged.display()
            )));
        }
        let path = self.path_of(key);
        let dir = path.parent().expect("a blob path has a directory");
        if stored_len(&path)?.is_some() {
            // Whole, but perhaps put a moment ago by a call that has not fsynced the
            // directory yet: this `Ok` must not come before that.
            return sync_dir(dir);
        }
        match fs::hard_link(staged, &path) {
            Ok(()) => match File::open(&path).and_then(|file| file.sync_all()) {
                // The caller fsynced the file; this costs nothing then, and covers a caller
                // that did not.
                Ok(()) => return sync_dir(dir),
                // After a failed fsync the kernel may have dropped the staged file's pages,
                // and a later fsync of the same file would not say so: unlink it and write a
                // copy of our own instead.
                Err(_) => {
                    remove_if_present(&path)?;
                }
            },
            // A concurrent put of the same key got there first: same bytes.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return sync_dir(dir),
            // Another filesystem (EXDEV), or one without hard links: copy.
            Err(_) => {}
        }
        self.copy_into_place(staged, len, &path, dir)
    }

    /// Copies `staged` to a temporary file, fsyncs it and renames it to `path`.
    fn copy_into_place(
        &self,
        staged: &Path,
        len: u64,
        path: &Path,
        dir: &Path,
    ) -> Result<(), BackendError> {
        let tmp = self.root.join(TMP_DIR).join(format!(
            "{}.{}",
            path.file_name()
                .expect("a blob path has a name")
                .to_string_lossy(),
            Uuid::now_v7().simple()
        ));
        let copied = (|| {
            let mut source = File::open(staged).map_err(|error| io_error("open", staged, error))?;
            let mut copy = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|error| io_error("create", &tmp, error))?;
            // `io::copy` between files is copy_file_range or sendfile on Linux: the kernel
            // moves the bytes, never more than a buffer of them in our memory.
            let copied =
                io::copy(&mut source, &mut copy).map_err(|error| io_error("write", &tmp, error))?;
            if copied != len {
                return Err(BackendError::rejected(format!(
                    "the staged file {} changed while it was copied ({copied} bytes, not {len})",
                    staged.display()
                )));
            }
            copy.sync_all()
                .map_err(|error| io_error("fsync", &tmp, error))?;
            fs::rename(&tmp, path).map_err(|error| io_error("rename", &tmp, error))
        })();
        if let Err(error) = copied {
            // Best effort: `open` clears what is left.
            let _ = fs::remove_file(&tmp);
            return Err(error);
        }
        sync_dir(dir)
    }

    fn open_blocking(
        &self,
        key: &BlobKey,
        range: Option<Range<u64>>,
    ) -> Result<Option<(File, u64, Range<u64>)>, BackendError> {
        let path = self.path_of(key);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error("open", &path, error)),
        };
        let total_len = file
            .metadata()
            .map_err(|error| io_error("read", &path, error))?
            .len();
        let range = resolve_range(range.as_ref(), total_len)?;
        file.seek(SeekFrom::Start(range.start))
            .map_err(|error| io_error("seek", &path, error))?;
        Ok(Some((file, total_len, range)))
    }

    fn delete_blocking(&self, key: &BlobKey) -> Result<(), BackendError> {
        let path = self.path_of(key);
        if remove_if_present(&path)? {
            sync_dir(path.parent().expect("a blob path has a directory"))?;
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for DirBlobStore {
    async fn put_file(&self, key: &BlobKey, staged: &Path, len: u64) -> Result<(), BackendError> {
        let store = self.clone();
        let (key, staged) = (key.clone(), staged.to_path_buf());
        blocking(move || store.put_blocking(&key, &staged, len)).await
    }

    async fn get(
        &self,
        key: &BlobKey,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobRead>, BackendError> {
        let store = self.clone();
        let key = key.clone();
        let Some((file, total_len, range)) =
            blocking(move || store.open_blocking(&key, range)).await?
        else {
            return Ok(None);
        };
        Ok(Some(BlobRead {
            total_len,
            body: chunks(tokio::fs::File::from_std(file), range.end - range.start),
            range,
        }))
    }

    async fn len(&self, key: &BlobKey) -> Result<Option<u64>, BackendError> {
        let path = self.path_of(key);
        blocking(move || stored_len(&path)).await
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), BackendError> {
        let store = self.clone();
        let key = key.clone();
        blocking(move || store.delete_blocking(&key)).await
    }
}

/// `remaining` bytes of `file` from where it stands, in chunks of up to [`CHUNK_BYTES`].
fn chunks(
    file: tokio::fs::File,
    remaining: u64,
) -> futures::stream::BoxStream<'static, Result<Bytes, BackendError>> {
    futures::stream::try_unfold((file, remaining), |(mut file, remaining)| async move {
        if remaining == 0 {
            return Ok(None);
        }
        let mut chunk = vec![0; remaining.min(CHUNK_BYTES) as usize];
        let read = file.read(&mut chunk).await.map_err(|error| {
            BackendError::unavailable(format!("read a blob: {error}")).with_source(error)
        })?;
        if read == 0 {
            return Err(BackendError::unavailable(format!(
                "a blob file ended {remaining} bytes early"
            )));
        }
        chunk.truncate(read);
        Ok(Some((Bytes::from(chunk), (file, remaining - read as u64))))
    })
    .boxed()
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| BackendError::unavailable(format!("a blob task failed: {error}")))?
}

fn stored_len(path: &Path) -> Result<Option<u64>, BackendError> {
    match fs::metadata(path) {
        Ok(metadata) => Ok(Some(metadata.len())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error("read", path, error)),
    }
}

/// Removes `path`; `false` if it was not there.
fn remove_if_present(path: &Path) -> Result<bool, BackendError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io_error("remove", path, error)),
    }
}

/// Makes the entries of `dir` (a file created, renamed or removed in it) durable.
fn sync_dir(dir: &Path) -> Result<(), BackendError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| io_error("fsync", dir, error))
}

/// A full device is `StorageFull` (retry once space is freed); anything else `Unavailable`.
fn io_error(doing: &str, path: &Path, error: io::Error) -> BackendError {
    let message = format!("{doing} {}: {error}", path.display());
    match error.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            BackendError::storage_full(message)
        }
        _ => BackendError::unavailable(message),
    }
    .with_source(error)
}
