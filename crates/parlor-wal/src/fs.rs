//! The file layer. Every file operation the log does goes through [`FileSystem`], so a test can
//! put a simulated disk that loses power ([`crate::sim::SimFs`]) where the operating system's
//! files are ([`OsFs`]).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::segment::SyncHook;

/// How [`FileSystem::open`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, for reading.
    Read,
    /// An existing file, for reading and writing.
    ReadWrite,
    /// A new file for reading and writing; fails with `AlreadyExists` if there is one.
    CreateNew,
    /// A file for writing, created if missing, emptied if not.
    CreateTruncate,
}

/// The directory operations the log needs, in POSIX terms: what a crash keeps of them is only
/// what [`FileSystem::sync_dir`] made durable.
pub trait FileSystem: Send + Sync {
    /// Creates `dir`; `AlreadyExists` if it exists.
    fn create_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` is a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// The names of the entries of `dir` that are valid UTF-8, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file. A handle keeps working after its file is removed or renamed.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn WalFile>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, atomically replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the creations, renames and removals of entries in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created if missing), released when the guard drops or
    /// the process dies. `WouldBlock` when someone else holds it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>>;
}

/// An open file, read and written at explicit positions.
pub trait WalFile: Send + Sync {
    /// Reads into `buf` from `position`; fewer bytes at the end of the file, 0 past it.
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize>;
    /// Writes `buf` at `position`, growing the file as needed (a gap reads as zeros).
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()>;
    /// The file's length in bytes.
    fn byte_len(&self) -> io::Result<u64>;
    /// Cuts or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// fdatasync: the file's data and length are durable when it returns `Ok`.
    fn sync_data(&self) -> io::Result<()>;

    /// Fills `buf` from `position`; `UnexpectedEof` if the file ends first.
    fn read_exact_at(&self, mut buf: &mut [u8], mut position: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, position) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ends before the bytes asked for",
                    ));
                }
                Ok(read) => {
                    buf = &mut buf[read..];
                    position += read as u64;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// The operating system's files. Every fsync first runs the [`SyncHook`], whose error counts as
/// a failed fsync (fault-injection tests; production's hook does nothing).
pub(crate) struct OsFs {
    pub hook: SyncHook,
}

impl OsFs {
    pub(crate) fn with_hook(hook: SyncHook) -> Arc<dyn FileSystem> {
        Arc::new(OsFs { hook })
    }
}

struct OsFile {
    file: File,
    hook: SyncHook,
}

impl FileSystem for OsFs {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir(dir)
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn WalFile>> {
        let mut options = OpenOptions::new();
        match mode {
            OpenMode::Read => options.read(true),
            OpenMode::ReadWrite => options.read(true).write(true),
            OpenMode::CreateNew => options.read(true).write(true).create_new(true),
            OpenMode::CreateTruncate => options.write(true).create(true).truncate(true),
        };
        Ok(Box::new(OsFile {
            file: options.open(path)?,
            hook: Arc::clone(&self.hook),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let handle = File::open(dir)?;
        (self.hook)(&handle)?;
        handle.sync_all()
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "another open wal holds it",
            )),
            Err(TryLockError::Error(error)) => Err(error),
        }
    }
}

impl WalFile for OsFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        self.file.read_at(buf, position)
    }

    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.file, buf, position)
    }

    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        (self.hook)(&self.file)?;
        self.file.sync_data()
    }
}

/// Sequential reads through a buffer, over positioned reads: the log's scans and readers.
pub(crate) struct ReadAhead {
    file: Box<dyn WalFile>,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    buf_start: u64,
    /// Valid bytes in `buf`.
    buf_len: usize,
    /// File position of the next byte `read_exact` returns.
    position: u64,
    /// Never buffer bytes at or beyond this position.
    limit: u64,
}

impl ReadAhead {
    pub(crate) fn new(file: Box<dyn WalFile>, capacity: usize, position: u64) -> ReadAhead {
        ReadAhead {
            file,
            buf: vec![0; capacity],
            buf_start: position,
            buf_len: 0,
            position,
            limit: u64::MAX,
        }
    }

    /// Bytes at or beyond `limit` are read only when asked for, never ahead. Bytes already
    /// buffered beyond a lowered limit are dropped.
    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
        let buf_end = self.buf_start + self.buf_len as u64;
        if buf_end > limit {
            self.buf_len = limit.saturating_sub(self.buf_start) as usize;
        }
    }

    pub(crate) fn file(&self) -> &dyn WalFile {
        &*self.file
    }

    /// Moves to `position`, keeping buffered bytes when they cover it.
    pub(crate) fn seek(&mut self, position: u64) {
        self.position = position;
    }

    /// Fills `out` from the current position; `UnexpectedEof` if the file ends first.
    pub(crate) fn read_exact(&mut self, mut out: &mut [u8]) -> io::Result<()> {
        while !out.is_empty() {
            let buf_end = self.buf_start + self.buf_len as u64;
            if self.position < self.buf_start || self.position >= buf_end {
                let ahead =
                    (self.buf.len() as u64).min(self.limit.saturating_sub(self.position)) as usize;
                if out.len() >= ahead {
                    // Nothing to gain from the buffer: read straight into `out`.
                    self.file.read_exact_at(out, self.position)?;
                    self.position += out.len() as u64;
                    return Ok(());
                }
                let read = self.file.read_at(&mut self.buf[..ahead], self.position)?;
                if read == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ends before the bytes asked for",
                    ));
                }
                self.buf_start = self.position;
                self.buf_len = read;
                continue;
            }
            let from = (self.position - self.buf_start) as usize;
            let take = out.len().min(self.buf_len - from);
            out[..take].copy_from_slice(&self.buf[from..from + take]);
            out = &mut out[take..];
            self.position += take as u64;
        }
        Ok(())
    }
}
