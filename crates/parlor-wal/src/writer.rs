//! The append queue and the writer thread that group-commits it.
//!
//! Callers push batches into a bounded queue and return at once. The writer takes everything
//! queued (a group), encodes it into one buffer, writes it (into a new segment if it does not fit
//! the current one), fdatasyncs once, publishes the new durable end and only then calls every
//! batch's `done`. A group that runs out of space is cut back and refused with
//! [`WalError::StorageFull`]; any other failure poisons the log.

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::fs::WalFile;
use crate::recovery::INDEX_SPACING_BYTES;
use crate::segment::{
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, create_segment_file, encode_record, sync_file,
    sync_new_segment,
};
use crate::{DurableTail, Shared, WalError, lock, seal};

/// The callback of one `append_with`.
pub(crate) type Done = Box<dyn FnOnce(Result<Range<u64>, WalError>) + Send>;

/// Bytes buffered before a `write` while encoding one group. Bounds the writer's buffer for huge
/// groups; below it, a whole group is a single write.
const WRITE_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// One `append_with` waiting for the writer.
pub(crate) struct Pending {
    pub records: Vec<Vec<u8>>,
    pub done: Done,
}

/// What callers and the writer share under `Shared::queue`.
#[derive(Default)]
pub(crate) struct Queue {
    pub batches: Vec<Pending>,
    /// Records in `batches`.
    pub records: usize,
    /// Frame bytes in `batches`.
    pub bytes: usize,
    /// Set by `close`: nothing more is accepted, the writer drains `batches` and exits.
    pub closing: bool,
}

/// The writer thread's own state: the open last segment and the next offset to assign.
pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    /// Held for the writer's lifetime so no second `Wal` appends to the same directory; the OS
    /// releases it with the handle, also after `kill -9`.
    pub _dir_lock: Box<dyn Send + Sync>,
    pub file: Box<dyn WalFile>,
    /// Bytes in the current segment, including what sits in `buf`.
    pub segment_bytes: u64,
    /// Records in the current segment, including what sits in `buf`.
    pub segment_records: u64,
    /// Bytes of the current segment already handed to `write`.
    pub written_bytes: u64,
    pub next_offset: u64,
    pub buf: Vec<u8>,
    /// Byte position of the current segment's newest read-index entry.
    pub indexed_at: Option<u64>,
    /// Read-index entries of the group being written, published once it is durable.
    pub new_index_entries: Vec<(u64, u64)>,
}

/// Why a group was not acknowledged.
enum GroupFailure {
    /// A write (or a new segment's creation) ran out of space before the group's fsync. What
    /// the group wrote was cut off again and the writer's counters are as before the group, so
    /// the log is exactly as if the group had never been queued, and the next group is tried
    /// normally: service resumes as soon as space is back.
    StorageFull,
    /// Nobody knows what is on disk (a failed fsync, an IO error, a cut-back that failed):
    /// the log is poisoned. Recovery on the next open finds out.
    Broken {
        context: &'static str,
        error: std::io::Error,
    },
}

fn broken(context: &'static str) -> impl FnOnce(std::io::Error) -> GroupFailure {
    move |error| GroupFailure::Broken { context, error }
}

/// ENOSPC or EDQUOT: the write failed for space, and the bytes it did not write are not on disk.
fn is_out_of_space(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// The writer's counters at the start of a group, to restore when the group is cut back.
#[derive(Clone, Copy)]
struct Position {
    next_offset: u64,
    segment_bytes: u64,
    segment_records: u64,
    written_bytes: u64,
    indexed_at: Option<u64>,
}

impl Writer {
    /// Runs until `close` and the queue is drained.
    pub(crate) fn run(mut self) {
        while let Some(group) = self.next_group() {
            if self.shared.poisoned.load(Ordering::Acquire) {
                fail_all(group, || WalError::Poisoned);
                continue;
            }
            match self.write_group(&group) {
                Ok(ranges) => {
                    self.publish_durable_tail();
                    // Published before any `done`, so whoever is told "durable" can read it.
                    self.shared
                        .durable_end
                        .store(self.next_offset, Ordering::Release);
                    for (pending, range) in group.into_iter().zip(ranges) {
                        call(pending.done, Ok(range));
                    }
                }
                Err(GroupFailure::StorageFull) => fail_all(group, || WalError::StorageFull),
                Err(GroupFailure::Broken { context, error }) => {
                    // No retry and no rollback: after a failed fsync nobody knows what is on
                    // disk (the kernel may have dropped the dirty pages). Recovery on the next
                    // open finds out.
                    *lock(&self.shared.poison_cause) = Some(format!("{context}: {error}"));
                    self.shared.poisoned.store(true, Ordering::Release);
                    fail_all(group, || WalError::Poisoned);
                }
            }
            if self.buf.capacity() > 2 * WRITE_CHUNK_BYTES {
                self.buf = Vec::new();
            }
        }
        // Closed cleanly: record where the log ends, so the next open can tell a cut tail from
        // an end. The directory lock is still held, so no other `Wal` appends meanwhile. If
        // this fails, the next open treats the log as after a crash.
        if !self.shared.poisoned.load(Ordering::Acquire) {
            let _ = seal::write(&*self.shared.fs, &self.shared.dir, self.next_offset);
        }
    }

    /// Waits for work; `None` once closing and drained.
    fn next_group(&self) -> Option<Vec<Pending>> {
        let mut queue = lock(&self.shared.queue);
        loop {
            if !queue.batches.is_empty() {
                queue.records = 0;
                queue.bytes = 0;
                return Some(std::mem::take(&mut queue.batches));
            }
            if queue.closing {
                return None;
            }
            queue = self
                .shared
                .work
                .wait(queue)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Writes and syncs a group, all or nothing; returns the offsets given to each batch.
    ///
    /// A group never straddles a roll: one that does not fit in the current segment starts a
    /// new one (unless the current one is still empty: a group larger than a whole segment gets
    /// a segment of its own). So a segment can exceed `segment_bytes_max` by up to one group
    /// (bounded by [`crate::APPEND_QUEUE_BYTES_MAX`] plus one batch), and a group that runs out
    /// of space is cut back inside one file.
    fn write_group(&mut self, group: &[Pending]) -> Result<Vec<Range<u64>>, GroupFailure> {
        self.buf.clear();
        self.new_index_entries.clear();
        let group_bytes: u64 = group
            .iter()
            .flat_map(|pending| &pending.records)
            .map(|record| RECORD_HEADER_BYTES + record.len() as u64)
            .sum();
        if self.segment_records > 0
            && self.segment_bytes + group_bytes > self.shared.segment_bytes_max
        {
            self.roll()?;
        }
        let start = Position {
            next_offset: self.next_offset,
            segment_bytes: self.segment_bytes,
            segment_records: self.segment_records,
            written_bytes: self.written_bytes,
            indexed_at: self.indexed_at,
        };
        let ranges = match self.write_records(group) {
            Ok(ranges) => ranges,
            Err(error) if is_out_of_space(&error) => {
                self.cut_back(start)?;
                return Err(GroupFailure::StorageFull);
            }
            Err(error) => return Err(broken("write a segment")(error)),
        };
        sync_file(&*self.file).map_err(broken("sync a segment"))?;
        Ok(ranges)
    }

    /// Tells readers how far the last segment is durable, and where its new records are.
    fn publish_durable_tail(&mut self) {
        if !self.new_index_entries.is_empty() {
            lock(&self.shared.index).extend(self.new_index_entries.drain(..));
        }
        *lock(&self.shared.durable_tail) = DurableTail {
            base: self.shared.last_segment_base.load(Ordering::Acquire),
            bytes: self.written_bytes,
        };
    }

    fn write_records(&mut self, group: &[Pending]) -> std::io::Result<Vec<Range<u64>>> {
        let mut ranges = Vec::with_capacity(group.len());
        let group_records: usize = group.iter().map(|pending| pending.records.len()).sum();
        let mut index_in_group = 0;
        for pending in group {
            let start = self.next_offset;
            for record in &pending.records {
                let position = self.segment_bytes;
                if self
                    .indexed_at
                    .is_none_or(|at| position - at >= INDEX_SPACING_BYTES)
                {
                    self.new_index_entries.push((self.next_offset, position));
                    self.indexed_at = Some(position);
                }
                let last_in_group = index_in_group + 1 == group_records;
                encode_record(
                    &mut self.buf,
                    self.next_offset,
                    index_in_group,
                    last_in_group,
                    record,
                );
                index_in_group += 1;
                self.next_offset += 1;
                self.segment_records += 1;
                self.segment_bytes += RECORD_HEADER_BYTES + record.len() as u64;
                if self.buf.len() >= WRITE_CHUNK_BYTES {
                    self.flush()?;
                }
            }
            ranges.push(start..self.next_offset);
        }
        self.flush()?;
        Ok(ranges)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&self.buf, self.written_bytes)?;
        self.written_bytes += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Undoes a group that ran out of space: truncating frees the blocks it got, and nothing of
    /// it was acknowledged. If even that fails, what is on disk is unknown: poison.
    fn cut_back(&mut self, start: Position) -> Result<(), GroupFailure> {
        self.buf.clear();
        self.new_index_entries.clear();
        self.indexed_at = start.indexed_at;
        self.file
            .set_len(start.written_bytes)
            .map_err(broken("cut back a segment after running out of space"))?;
        self.next_offset = start.next_offset;
        self.segment_bytes = start.segment_bytes;
        self.segment_records = start.segment_records;
        self.written_bytes = start.written_bytes;
        Ok(())
    }

    /// Seals the current segment and starts the next one at `next_offset`. Called between
    /// groups, with nothing buffered.
    fn roll(&mut self) -> Result<(), GroupFailure> {
        debug_assert!(self.buf.is_empty(), "a roll happens between groups");
        // The old segment is synced before the new one exists: recovery relies on every segment
        // but the last being complete.
        sync_file(&*self.file).map_err(broken("sync a sealed segment"))?;
        let base = self.next_offset;
        let file = match create_segment_file(&*self.shared.fs, &self.shared.dir, base) {
            Ok(file) => file,
            // The half-created file is gone again; the old segment stays the last one.
            Err(error) if is_out_of_space(&error) => return Err(GroupFailure::StorageFull),
            Err(error) => return Err(broken("create a segment")(error)),
        };
        sync_new_segment(&*self.shared.fs, &self.shared.dir, &*file)
            .map_err(broken("sync a new segment"))?;
        lock(&self.shared.segments).push(base);
        self.shared.last_segment_base.store(base, Ordering::Release);
        self.file = file;
        self.segment_bytes = SEGMENT_HEADER_BYTES;
        self.written_bytes = SEGMENT_HEADER_BYTES;
        self.segment_records = 0;
        self.indexed_at = None;
        Ok(())
    }
}

fn fail_all(group: Vec<Pending>, error: impl Fn() -> WalError) {
    for pending in group {
        call(pending.done, Err(error()));
    }
}

/// Calls a `done`. A panicking callback is the caller's bug, but it must not kill the writer:
/// every later `append` would hang. The panic hook has already reported it.
pub(crate) fn call(done: Done, result: Result<Range<u64>, WalError>) {
    let _ = catch_unwind(AssertUnwindSafe(move || done(result)));
}
