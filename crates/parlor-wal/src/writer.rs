//! The append queue and the writer thread that group-commits it.
//!
//! Callers push batches into a bounded queue and return at once. The writer takes everything
//! queued, encodes it into one buffer, writes it (rolling segments as needed), fdatasyncs once,
//! publishes the new durable end and only then calls every batch's `done`.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::segment::{
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, create_segment, encode_record, sync_file,
};
use crate::{Shared, WalError, lock};

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
    pub _dir_lock: File,
    pub file: File,
    /// Bytes in the current segment, including what sits in `buf`.
    pub segment_bytes: u64,
    /// Records in the current segment, including what sits in `buf`.
    pub segment_records: u64,
    /// Bytes of the current segment already handed to `write`.
    pub written_bytes: u64,
    pub next_offset: u64,
    pub buf: Vec<u8>,
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
                    // Published before any `done`, so whoever is told "durable" can read it.
                    self.shared
                        .durable_end
                        .store(self.next_offset, Ordering::Release);
                    for (pending, range) in group.into_iter().zip(ranges) {
                        call(pending.done, Ok(range));
                    }
                }
                Err((context, error)) => {
                    // No retry and no rollback: after a failed write or fsync nobody knows what is
                    // on disk. Recovery on the next open finds out.
                    *lock(&self.shared.poison_cause) = Some(format!("{context}: {error}"));
                    self.shared.poisoned.store(true, Ordering::Release);
                    fail_all(group, || WalError::Poisoned);
                }
            }
            if self.buf.capacity() > 2 * WRITE_CHUNK_BYTES {
                self.buf = Vec::new();
            }
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

    /// Writes and syncs a group; returns the offsets given to each batch.
    fn write_group(
        &mut self,
        group: &[Pending],
    ) -> Result<Vec<Range<u64>>, (&'static str, std::io::Error)> {
        let mut ranges = Vec::with_capacity(group.len());
        self.buf.clear();
        for pending in group {
            let start = self.next_offset;
            for record in &pending.records {
                let frame_bytes = RECORD_HEADER_BYTES + record.len() as u64;
                // A record that does not fit goes into a new segment, unless the current one is
                // still empty: a record larger than a whole segment gets a segment of its own.
                if self.segment_records > 0
                    && self.segment_bytes + frame_bytes > self.shared.segment_bytes_max
                {
                    self.roll()?;
                }
                encode_record(&mut self.buf, self.next_offset, record);
                self.next_offset += 1;
                self.segment_records += 1;
                self.segment_bytes += frame_bytes;
                if self.buf.len() >= WRITE_CHUNK_BYTES {
                    self.flush()?;
                }
            }
            ranges.push(start..self.next_offset);
        }
        self.flush()?;
        sync_file(&self.shared.sync, &self.file).map_err(|error| ("sync a segment", error))?;
        Ok(ranges)
    }

    fn flush(&mut self) -> Result<(), (&'static str, std::io::Error)> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&self.buf, self.written_bytes)
            .map_err(|error| ("write a segment", error))?;
        self.written_bytes += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Seals the current segment and starts the next one at `next_offset`.
    fn roll(&mut self) -> Result<(), (&'static str, std::io::Error)> {
        self.flush()?;
        // The old segment is synced before the new one exists: recovery relies on every segment
        // but the last being complete.
        sync_file(&self.shared.sync, &self.file)
            .map_err(|error| ("sync a sealed segment", error))?;
        let base = self.next_offset;
        let file = create_segment(&self.shared.dir, base, &self.shared.sync)
            .map_err(|error| ("create a segment", error))?;
        lock(&self.shared.segments).push(base);
        self.shared.last_segment_base.store(base, Ordering::Release);
        self.file = file;
        self.segment_bytes = SEGMENT_HEADER_BYTES;
        self.written_bytes = SEGMENT_HEADER_BYTES;
        self.segment_records = 0;
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
