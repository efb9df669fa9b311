//! Helpers shared by the integration tests.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use parlor_wal::{Wal, WalError, WalOptions};

/// The bytes of the record at `offset`: derivable from the offset alone, 8 to 135 bytes long, so
/// any misplaced, shortened or garbled record is detected.
pub fn payload(offset: u64) -> Vec<u8> {
    // Fibonacci hashing: the top 7 bits of the product vary well from one offset to the next.
    let len = 8 + (offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 57) as usize;
    let mut bytes = offset.to_le_bytes().to_vec();
    bytes.extend((8..len).map(|i| (offset as usize).wrapping_mul(31).wrapping_add(i) as u8));
    bytes
}

/// Small segments so a few dozen records span several of them.
pub fn small_segments() -> WalOptions {
    WalOptions {
        segment_bytes_max: 512,
        record_bytes_max: 4096,
        cursor_names: Vec::new(),
    }
}

pub fn with_cursors(mut options: WalOptions, names: &[&str]) -> WalOptions {
    options.cursor_names = names.iter().map(|name| name.to_string()).collect();
    options
}

/// Appends the derived payloads for `offsets` as one batch and checks the offsets it got.
pub fn append_derived(wal: &Wal, offsets: Range<u64>) {
    let records = offsets.clone().map(payload).collect();
    assert_eq!(wal.append(records).expect("append"), offsets);
}

/// [`append_derived`] in batches of `batch_len`: a group never straddles two segments, so it takes
/// several appends to fill several segments.
pub fn append_derived_in_batches(wal: &Wal, offsets: Range<u64>, batch_len: u64) {
    let mut start = offsets.start;
    while start < offsets.end {
        let end = (start + batch_len).min(offsets.end);
        append_derived(wal, start..end);
        start = end;
    }
}

/// Everything a fresh reader returns from `from` until it catches up.
pub fn read_all(wal: &Wal, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut reader = wal.reader(from).expect("reader");
    let mut records = Vec::new();
    while let Some(record) = reader.next().expect("read") {
        records.push(record);
    }
    records
}

/// Asserts that the log holds exactly the derived payloads for `offsets`.
pub fn assert_derived(wal: &Wal, offsets: Range<u64>) {
    let records = read_all(wal, offsets.start);
    let expected: Vec<_> = offsets.map(|offset| (offset, payload(offset))).collect();
    assert_eq!(records.len(), expected.len(), "record count");
    for (found, expected) in records.iter().zip(&expected) {
        assert_eq!(found, expected);
    }
}

/// Removes the seal a clean close leaves (`END`), so the log is as a `kill -9` after its last
/// sync leaves it: recovery then cuts a torn tail instead of refusing any difference.
pub fn as_after_a_crash(dir: &Path) {
    fs::remove_file(dir.join("END")).expect("a cleanly closed log has a seal");
}

pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .expect("list dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    files.sort();
    files
}

pub fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().expect("a segment")
}

/// A sync hook that can be made to fail or to park the writer inside a sync.
#[derive(Clone, Default)]
pub struct Faults {
    inner: Arc<Mutex<FaultState>>,
}

#[derive(Default)]
struct FaultState {
    fail: bool,
    syncs: u64,
    /// When set, the next sync reports on `entered` and waits for `release`.
    gate: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
}

impl Faults {
    pub fn hook(&self) -> parlor_wal::SyncHook {
        let inner = Arc::clone(&self.inner);
        Arc::new(move |_file| {
            let gate = {
                let mut state = inner.lock().expect("fault state");
                state.syncs += 1;
                if state.fail {
                    return Err(std::io::Error::other("injected fsync failure"));
                }
                state.gate.take()
            };
            if let Some((entered, release)) = gate {
                entered.send(()).expect("test waits for the gate");
                release.recv().expect("test releases the gate");
            }
            Ok(())
        })
    }

    pub fn fail_syncs(&self) {
        self.inner.lock().expect("fault state").fail = true;
    }

    pub fn syncs(&self) -> u64 {
        self.inner.lock().expect("fault state").syncs
    }

    /// Parks the next sync. Returns (entered, release): wait on `entered` to know the writer is
    /// inside the sync, send on `release` to let it finish.
    pub fn park_next_sync(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        self.inner.lock().expect("fault state").gate = Some((entered_tx, release_rx));
        (entered_rx, release_tx)
    }
}

/// `append_with` whose result arrives on a channel.
pub fn append_async(
    wal: &Wal,
    records: Vec<Vec<u8>>,
) -> mpsc::Receiver<Result<Range<u64>, WalError>> {
    let (sender, receiver) = mpsc::channel();
    wal.append_with(
        records,
        Box::new(move |result| {
            let _ = sender.send(result);
        }),
    );
    receiver
}

/// xorshift64*: deterministic, so a failing seed reproduces. Seed it with anything but 0.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// Between `len_min` and `len_max` (inclusive) random bytes.
    pub fn bytes(&mut self, len_min: u64, len_max: u64) -> Vec<u8> {
        let len = len_min + self.below(len_max - len_min + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}
