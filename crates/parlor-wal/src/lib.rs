//! `parlor-wal`: a segmented, CRC-checked, group-committed write-ahead log of opaque byte records.
//!
//! It knows bytes, not messages, and depends on nothing of Parlor's (std and `crc32c` only), so it
//! can be tested, reasoned about and reused on its own. `parlor-embedded` builds its queue on it.
//!
//! # Map
//!
//! - `fs`: the file layer, [`FileSystem`]: the operating system's, or [`sim::SimFs`], a simulated
//!   disk that loses power, for tests.
//! - `segment`: the on-disk format and the ordered file operations (create segment, sync).
//! - `recovery`: what [`Wal::open`] does: check every segment, cut a torn tail, refuse damage,
//!   check the seal, and build the read index.
//! - `seal`: the end offset recorded by a clean close, so that a cut tail is detected.
//! - `writer`: the bounded append queue and the single writer thread (group commit).
//! - `reader`: [`Reader`], sequential reads of durable records across segments.
//! - `cursor`: durable consumer cursors, one atomically replaced file each.
//!
//! # On disk
//!
//! `dir/{base_offset:020}.wal` segments, each a 20-byte header (magic, version, base offset, CRC)
//! followed by records `[len u32 LE][crc32c u32 LE][offset u64 LE][group u32 LE][payload]`, the
//! CRC covering length, offset, group and payload. `group` is the record's index in the commit
//! group it was written and synced with, its top bit set on the group's last record.
//! (Version 1 segments, written before groups were marked, have no `group` field; they are
//! read, never written.) `dir/cursors/{name}` hold cursors; `dir/END`, the seal, holds the end
//! offset while the log is closed cleanly; `dir/LOCK` is locked (`flock`) while a `Wal` is open,
//! so two processes never append to the same log.
//!
//! # Invariants
//!
//! - Offsets are record indices: gap-free, in append order, never reused.
//! - A record is acknowledged (its `done` called with `Ok`) only after an fdatasync covering it;
//!   [`Wal::durable_end`] moves only then, and readers never see records at or beyond it.
//! - Every segment but the last is complete and synced: the writer syncs a segment before it
//!   creates the next. So only the last segment can have a torn tail, and only in its last
//!   group, which recovery cuts whole: a group is written, synced once, and only then
//!   acknowledged, so one that is not whole on disk was never acknowledged. Damage anywhere
//!   else, or damage followed by a valid record of a later group, is [`WalError::Corrupt`] and
//!   `open` refuses. (Damage inside the last group cannot be told from a torn write; it is cut
//!   and reported in [`Recovery::truncated_bytes`].)
//! - After a failed fsync (or a write that failed for another reason than space) the log is
//!   poisoned for good: the process must exit and recover. A write that runs out of space
//!   (ENOSPC, EDQUOT) is not a failed fsync: nothing of its group was acknowledged, so the group
//!   is cut off again (`ftruncate`), refused with [`WalError::StorageFull`], and the log goes on.
//! - A group of appends never straddles two segments, so a segment may exceed
//!   [`WalOptions::segment_bytes_max`] by up to one group; recovery and readers assume nothing
//!   about segment sizes.
//! - Segments are deleted oldest first, only when every cursor has passed all of their records,
//!   and never the last one.
//! - Cursors never move backwards and never past the durable end.

#![warn(missing_docs)]

mod cursor;
mod error;
mod fs;
mod reader;
mod recovery;
mod seal;
mod segment;
pub mod sim;
mod writer;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::{self, JoinHandle, ThreadId};

pub use crate::error::WalError;
pub use crate::fs::{FileSystem, OpenMode, WalFile};
pub use crate::reader::Reader;
#[doc(hidden)]
pub use crate::segment::SyncHook;
pub use crate::segment::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};

use crate::fs::OsFs;
use crate::recovery::ReadIndex;
use crate::segment::{GROUP_RECORDS_MAX, segment_file_name};
use crate::writer::{Done, Pending, Queue, Writer};

/// Records that may wait in the append queue (not counting the group being written). With the
/// default `record_bytes_max` the byte bound below usually binds first; this one bounds the
/// bookkeeping for floods of tiny records.
pub const APPEND_QUEUE_RECORDS_MAX: usize = 65_536;

/// Frame bytes (payload plus 16-byte header per record) that may wait in the append queue. Bounds
/// the memory held for appends that are not yet durable to this (plus the group being written).
pub const APPEND_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;

const LOCK_FILE: &str = "LOCK";

/// How a log is laid out and which cursors it keeps. Passed to [`Wal::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A new segment starts when the current one would grow beyond this many bytes (default
    /// 64 MiB), at the start of a group of appends: a group (at most about
    /// [`APPEND_QUEUE_BYTES_MAX`]) is never split, so a segment may exceed this by up to one
    /// group, and a group larger than a segment gets a segment of its own.
    pub segment_bytes_max: u64,
    /// Longer records are refused with [`WalError::RecordTooLarge`] (default 1 MiB).
    pub record_bytes_max: u32,
    /// The durable consumer cursors this log keeps, each `[a-z0-9_-]{1,64}`. Segment deletion
    /// waits for all of them.
    pub cursor_names: Vec<String>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_max: 64 * 1024 * 1024,
            record_bytes_max: 1024 * 1024,
            cursor_names: Vec::new(),
        }
    }
}

/// What [`Wal::open`] found on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Offset the next appended record gets (equals the durable end after open).
    pub next_offset: u64,
    /// Bytes cut off the last segment as a torn tail (0 after a clean shutdown).
    pub truncated_bytes: u64,
    /// Segment files that existed before open (0 for a new log).
    pub segments: usize,
}

/// A handle on an open log. Cheap to clone (an `Arc` inside), `Send + Sync`. The writer thread
/// stops when [`Wal::close`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

/// Owned by the handles; dropping the last one closes the log.
struct Inner {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    writer_thread: ThreadId,
}

/// State shared by handles, readers and the writer thread.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub segment_bytes_max: u64,
    pub record_bytes_max: u32,
    pub fs: Arc<dyn FileSystem>,
    pub queue: Mutex<Queue>,
    /// Wakes the writer when `queue` gets a batch or is closing.
    pub work: Condvar,
    pub durable_end: AtomicU64,
    pub start_offset: AtomicU64,
    /// Base of the newest segment; lets readers see a roll without taking `segments`.
    pub last_segment_base: AtomicU64,
    /// Base offsets of the segments on disk, ascending. Lock order: `cursors` before `segments`.
    pub segments: Mutex<Vec<u64>>,
    pub poisoned: AtomicBool,
    pub poison_cause: Mutex<Option<String>>,
    /// Durable cursor values; the lock also serializes commits.
    pub cursors: Mutex<BTreeMap<String, u64>>,
    /// Where readers start skipping to reach an offset (see [`ReadIndex`]): durable records only.
    pub index: Mutex<ReadIndex>,
    /// How far the last segment is durable; set by the writer before `durable_end` moves.
    pub durable_tail: Mutex<DurableTail>,
}

/// The last segment's base and its durable length in bytes.
#[derive(Clone, Copy)]
pub(crate) struct DurableTail {
    pub base: u64,
    pub bytes: u64,
}

/// Locks a mutex, ignoring std's poisoning: no code here panics while holding one (callbacks run
/// outside locks), and the log has its own notion of poisoned.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Wal {
    /// Opens or creates the log in `dir` (creating the directory), recovers the tail and starts
    /// the writer thread.
    ///
    /// Errors: [`WalError::Corrupt`] when synced data is damaged (the log refuses to open rather
    /// than drop acknowledged records); [`WalError::Io`] on IO failure, when another open `Wal`
    /// holds the directory (`WouldBlock`) or for invalid cursor names (`InvalidInput`).
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovery), WalError> {
        Wal::open_with_sync_hook(dir, options, segment::no_sync_hook())
    }

    /// [`Wal::open`] with a hook that runs before every fsync; an error from it counts as a
    /// failed fsync. For fault-injection tests only.
    #[doc(hidden)]
    pub fn open_with_sync_hook(
        dir: &Path,
        options: WalOptions,
        sync: SyncHook,
    ) -> Result<(Wal, Recovery), WalError> {
        Wal::open_on(OsFs::with_hook(sync), dir, options)
    }

    /// [`Wal::open`] on another file layer than the operating system's, such as
    /// [`sim::SimFs`], the simulated disk of the power-loss tests.
    pub fn open_on(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        options: WalOptions,
    ) -> Result<(Wal, Recovery), WalError> {
        cursor::validate_names(&options.cursor_names)?;
        create_dir_durably(&*fs, dir)?;
        let dir_lock = fs
            .lock(&dir.join(LOCK_FILE))
            .map_err(WalError::io("lock the log directory"))?;
        let sealed_end = seal::read(&*fs, dir)?;
        let recovered = recovery::recover(&*fs, dir, sealed_end)?;
        let cursors = cursor::load(&*fs, dir, &options.cursor_names)?;
        for (name, &value) in &cursors {
            if value > recovered.next_offset {
                return Err(WalError::corrupt(
                    cursor::cursor_dir(dir).join(name),
                    0,
                    format!(
                        "cursor is at offset {value}, past the end of the log at {}",
                        recovered.next_offset
                    ),
                ));
            }
        }
        let recovery = Recovery {
            next_offset: recovered.next_offset,
            truncated_bytes: recovered.truncated_bytes,
            segments: recovered.found,
        };
        let tail_base = *recovered
            .segments
            .last()
            .expect("recovery leaves a segment");
        let indexed_at = recovered
            .index
            .range(tail_base..)
            .next_back()
            .map(|(_, &byte)| byte);
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            segment_bytes_max: options.segment_bytes_max,
            record_bytes_max: options.record_bytes_max,
            fs,
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            durable_end: AtomicU64::new(recovered.next_offset),
            start_offset: AtomicU64::new(recovered.segments[0]),
            last_segment_base: AtomicU64::new(tail_base),
            segments: Mutex::new(recovered.segments),
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(None),
            cursors: Mutex::new(cursors),
            index: Mutex::new(recovered.index),
            durable_tail: Mutex::new(DurableTail {
                base: tail_base,
                bytes: recovered.tail_bytes,
            }),
        });
        seal::remove(&*shared.fs, dir)?;
        let writer = Writer {
            shared: Arc::clone(&shared),
            _dir_lock: dir_lock,
            file: recovered.tail,
            segment_bytes: recovered.tail_bytes,
            segment_records: recovered.tail_records,
            written_bytes: recovered.tail_bytes,
            next_offset: recovered.next_offset,
            buf: Vec::new(),
            indexed_at,
            new_index_entries: Vec::new(),
        };
        let handle = thread::Builder::new()
            .name("parlor-wal-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(WalError::io("spawn the writer thread"))?;
        let inner = Inner {
            shared,
            writer_thread: handle.thread().id(),
            writer: Mutex::new(Some(handle)),
        };
        Ok((
            Wal {
                inner: Arc::new(inner),
            },
            recovery,
        ))
    }

    /// Group commit: queues `records` and returns at once, without IO. The writer thread writes
    /// every queued batch, covers them all with one fdatasync, then calls `done` with the offsets
    /// given to these records (consecutive, in order; empty for an empty batch).
    ///
    /// `done` is called exactly once: on the writer thread after the fsync that covers the records
    /// (`Ok`), with [`WalError::StorageFull`] if the device had no room for them (nothing of them
    /// is in the log; retry once space is freed), or with [`WalError::Poisoned`] if that write or
    /// fsync failed otherwise. A batch that is refused
    /// up front gets its `done` called right here on the caller's thread, before this returns:
    /// [`WalError::RecordTooLarge`] (one record too long refuses the whole batch),
    /// [`WalError::Poisoned`], [`WalError::Closed`], or [`WalError::Io`] with
    /// [`io::ErrorKind::WouldBlock`] when the queue is full ([`APPEND_QUEUE_RECORDS_MAX`],
    /// [`APPEND_QUEUE_BYTES_MAX`]; a batch alone in the queue is always admitted) — retry later.
    ///
    /// `done` runs on the writer thread and should be quick (send on a channel); while it runs,
    /// nothing is written. It must not call [`Wal::append`]. A panic in it is caught.
    pub fn append_with(
        &self,
        records: Vec<Vec<u8>>,
        done: Box<dyn FnOnce(Result<Range<u64>, WalError>) + Send>,
    ) {
        let shared = &self.inner.shared;
        let max = shared.record_bytes_max;
        if let Some(record) = records.iter().find(|record| record.len() > max as usize) {
            return done(Err(WalError::RecordTooLarge {
                bytes: record.len(),
                max,
            }));
        }
        // A group is at most a full queue and one batch; its records' indices must fit.
        if records.len() > GROUP_RECORDS_MAX - APPEND_QUEUE_RECORDS_MAX {
            return done(Err(WalError::invalid_input(
                "queue an append",
                format!("a batch of {} records is too many", records.len()),
            )));
        }
        if shared.poisoned.load(Ordering::Acquire) {
            return done(Err(WalError::Poisoned));
        }
        let bytes = records
            .iter()
            .map(|record| record.len() + RECORD_HEADER_BYTES as usize)
            .sum::<usize>();
        let refused = {
            let mut queue = lock(&shared.queue);
            if queue.closing {
                Some((WalError::Closed, done))
            } else if !queue.batches.is_empty()
                && (queue.records + records.len() > APPEND_QUEUE_RECORDS_MAX
                    || queue.bytes + bytes > APPEND_QUEUE_BYTES_MAX)
            {
                let full = WalError::Io {
                    context: "queue an append",
                    source: io::Error::new(io::ErrorKind::WouldBlock, "the append queue is full"),
                };
                Some((full, done))
            } else {
                queue.records += records.len();
                queue.bytes += bytes;
                queue.batches.push(Pending { records, done });
                None
            }
        };
        match refused {
            Some((error, done)) => done(Err(error)),
            None => shared.work.notify_one(),
        }
    }

    /// Blocking convenience over [`Wal::append_with`]: returns once the records are durable.
    ///
    /// # Panics
    ///
    /// When called on the writer thread (from a `done` callback), which would deadlock.
    pub fn append(&self, records: Vec<Vec<u8>>) -> Result<Range<u64>, WalError> {
        assert_ne!(
            thread::current().id(),
            self.inner.writer_thread,
            "Wal::append called from a done callback would wait for itself"
        );
        let (sender, receiver) = mpsc::sync_channel(1);
        let done: Done = Box::new(move |result| {
            let _ = sender.send(result);
        });
        self.append_with(records, done);
        // A dropped sender without a result means the writer died; nothing more will be written.
        receiver.recv().unwrap_or(Err(WalError::Closed))
    }

    /// Offset one past the last durable (fsynced) record. Readers never see records at or beyond it.
    pub fn durable_end(&self) -> u64 {
        self.inner.shared.durable_end.load(Ordering::Acquire)
    }

    /// Offset of the first record still on disk; records below it were deleted with their segments.
    pub fn start_offset(&self) -> u64 {
        self.inner.shared.start_offset.load(Ordering::Acquire)
    }

    /// A reader of durable records starting at `from`.
    ///
    /// Errors: [`WalError::OffsetGone`] when `from < start_offset()`. A `from` beyond the durable
    /// end is allowed; the reader returns records once they exist.
    pub fn reader(&self, from: u64) -> Result<Reader, WalError> {
        let start = self.start_offset();
        if from < start {
            return Err(WalError::OffsetGone {
                offset: from,
                start,
            });
        }
        Ok(Reader::new(Arc::clone(&self.inner.shared), from))
    }

    /// The durable value of cursor `name`: the offset its consumer reads next (0 for a new one —
    /// which is below [`Wal::start_offset`] if the cursor was added after segments were deleted).
    ///
    /// Errors: [`WalError::UnknownCursor`] for a name not in [`WalOptions::cursor_names`].
    pub fn cursor(&self, name: &str) -> Result<u64, WalError> {
        lock(&self.inner.shared.cursors)
            .get(name)
            .copied()
            .ok_or_else(|| WalError::UnknownCursor(name.to_owned()))
    }

    /// Durably stores cursor `name` at `offset` (temporary file, fsync, rename, directory fsync),
    /// then deletes every whole segment that all cursors have passed. A value at or below the
    /// current one is ignored: a cursor never moves backwards.
    ///
    /// Blocks on IO; call it from a blocking context. Works after [`Wal::close`] too.
    ///
    /// Errors: [`WalError::UnknownCursor`]; [`WalError::Io`] with `InvalidInput` when `offset` is
    /// past [`Wal::durable_end`] (a consumer cannot have read that far); [`WalError::Io`] when
    /// storing fails (the cursor keeps its old value) or a segment cannot be deleted (the cursor
    /// is stored; deletion is retried on the next commit).
    pub fn commit_cursor(&self, name: &str, offset: u64) -> Result<(), WalError> {
        let shared = &self.inner.shared;
        let mut cursors = lock(&shared.cursors);
        let current = *cursors
            .get(name)
            .ok_or_else(|| WalError::UnknownCursor(name.to_owned()))?;
        let end = self.durable_end();
        if offset > end {
            return Err(WalError::invalid_input(
                "commit a cursor",
                format!("cursor {name:?} at offset {offset} would pass the durable end {end}"),
            ));
        }
        if offset <= current {
            return Ok(());
        }
        cursor::store(&*shared.fs, &shared.dir, name, offset)?;
        cursors.insert(name.to_owned(), offset);
        let passed_by_all = cursors
            .values()
            .copied()
            .min()
            .expect("the committed cursor exists");
        shared.delete_segments_below(passed_by_all)
    }

    /// True after an fsync (or a write, for another reason than space) failed: every later append
    /// fails with [`WalError::Poisoned`]. The process should exit; a restart recovers.
    pub fn is_poisoned(&self) -> bool {
        self.inner.shared.poisoned.load(Ordering::Acquire)
    }

    /// What failed when the log was poisoned, with the OS error, for the operator's log line.
    pub fn poison_cause(&self) -> Option<String> {
        lock(&self.inner.shared.poison_cause).clone()
    }

    /// Stops accepting appends, waits until the writer has written and synced everything queued,
    /// and stops it (which releases the directory lock). Idempotent; also done when the last
    /// handle is dropped. Called from a `done` callback it does not wait (the writer would wait
    /// for itself); the writer then stops after the current group and what is queued.
    pub fn close(&self) {
        self.inner.close();
    }
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.inner.shared.dir)
            .field("start_offset", &self.start_offset())
            .field("durable_end", &self.durable_end())
            .field("poisoned", &self.is_poisoned())
            .finish()
    }
}

impl Inner {
    fn close(&self) {
        lock(&self.shared.queue).closing = true;
        self.shared.work.notify_all();
        if thread::current().id() == self.writer_thread {
            return;
        }
        if let Some(handle) = lock(&self.writer).take() {
            // The writer catches panics from callbacks; a panic of its own has already been
            // reported by the panic hook and left its batches' senders dropped.
            let _ = handle.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    /// Deletes, oldest first, every segment whose records are all below `offset`, never the last.
    fn delete_segments_below(&self, offset: u64) -> Result<(), WalError> {
        let mut segments = lock(&self.segments);
        while segments.len() >= 2 && segments[1] <= offset {
            match self
                .fs
                .remove_file(&self.dir.join(segment_file_name(segments[0])))
            {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(WalError::io("delete a segment")(error)),
            }
            segments.remove(0);
            self.start_offset.store(segments[0], Ordering::Release);
            let start = segments[0];
            lock(&self.index).retain(|&indexed, _| indexed >= start);
            // One deletion at a time reaches the disk, so a crash never leaves a gap in the middle.
            self.fs
                .sync_dir(&self.dir)
                .map_err(WalError::io("sync the log directory"))?;
        }
        Ok(())
    }
}

/// Creates `dir` and any missing parents, syncing the parent of each one it creates, so every
/// new directory survives a crash (a sync covers only the entries of the directory synced).
fn create_dir_durably(fs: &dyn FileSystem, dir: &Path) -> Result<(), WalError> {
    let mut missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|path| !path.as_os_str().is_empty() && !fs.is_dir(path))
        .collect();
    missing.reverse();
    for path in missing {
        match fs.create_dir(path) {
            // Created meanwhile by someone else, who may not have synced it.
            Err(error) if error.kind() != io::ErrorKind::AlreadyExists => {
                return Err(WalError::io("create the log directory")(error));
            }
            _ => {}
        }
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            fs.sync_dir(parent)
                .map_err(WalError::io("sync the parent of a new directory"))?;
        }
    }
    Ok(())
}
