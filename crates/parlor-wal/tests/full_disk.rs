//! A full device is an outage, not a failed fsync: on a real tmpfs that fills up, appends are
//! refused with `StorageFull`, nothing of them reaches the log, and once space is freed the
//! same log goes on. These tests mount a tmpfs (they need root, as on CI) and fail if they
//! cannot.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

use common::*;
use parlor_wal::{Wal, WalError, WalOptions};

/// Held by each test while it runs. `mount` forks: a child forked by one test while another
/// drops its `Wal` holds a copy of the lock file's descriptor until it execs, and the reopen
/// finds the log still locked. (Under nextest each test is a process of its own anyway.)
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A tmpfs of `size_bytes` mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
    _alone: MutexGuard<'static, ()>,
}

impl Tmpfs {
    fn mount(size_bytes: u64) -> Tmpfs {
        let alone = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed ({status}); these tests need root"
        );
        Tmpfs { dir, _alone: alone }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes junk until the device is full, so the next write that needs a new page fails.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("junk");
        let mut file = fs::File::create(&path).expect("create junk");
        let page = vec![0xa5u8; 4096];
        loop {
            match file.write_all(&page) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
                Err(error) => panic!("filling the tmpfs: {error}"),
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(self.dir.path()).status();
        if !matches!(status, Ok(status) if status.success()) && !std::thread::panicking() {
            panic!("unmounting the test tmpfs failed: {status:?}");
        }
    }
}

/// Appends one derived record per batch from `next` on until the device refuses one; returns
/// the next offset to append. Panics on any other outcome.
fn append_until_full(wal: &Wal, mut next: u64, record: impl Fn(u64) -> Vec<u8>) -> u64 {
    loop {
        match wal.append(vec![record(next)]) {
            Ok(range) => {
                assert_eq!(range, next..next + 1);
                next += 1;
            }
            Err(WalError::StorageFull) => return next,
            Err(error) => panic!("append {next}: {error}"),
        }
        assert!(next < 100_000, "the tmpfs never filled up");
    }
}

fn check_reopened(dir: &Path, options: WalOptions, records: &[(u64, Vec<u8>)]) {
    let (wal, recovery) = Wal::open(dir, options).expect("reopen");
    assert_eq!(recovery.truncated_bytes, 0, "nothing torn to cut");
    assert_eq!(recovery.next_offset, records.len() as u64);
    assert_eq!(read_all(&wal, 0), records);
}

#[test]
fn full_device_refuses_the_append_without_poisoning_and_recovers_once_space_is_freed() {
    let tmpfs = Tmpfs::mount(256 * 1024);
    let log = tmpfs.path().join("log");
    let options = WalOptions::default();
    let (wal, _) = Wal::open(&log, options.clone()).expect("open");
    append_derived(&wal, 0..10);
    let junk = tmpfs.fill();

    let next = append_until_full(&wal, 10, payload);
    assert!(!wal.is_poisoned(), "{:?}", wal.poison_cause());
    assert_eq!(
        wal.durable_end(),
        next,
        "a refused append publishes nothing"
    );
    // Still full: refused again, still not poisoned.
    assert!(matches!(
        wal.append(vec![payload(next)]),
        Err(WalError::StorageFull)
    ));
    assert!(!wal.is_poisoned());

    fs::remove_file(&junk).expect("free space");
    let batch = (next..next + 50).map(payload).collect();
    assert_eq!(
        wal.append(batch).expect("append after freeing space"),
        next..next + 50
    );
    assert_derived(&wal, 0..next + 50);
    drop(wal);

    let expected: Vec<_> = (0..next + 50)
        .map(|offset| (offset, payload(offset)))
        .collect();
    check_reopened(&log, options, &expected);
}

#[test]
fn full_device_while_creating_a_segment_leaves_no_half_created_segment() {
    let tmpfs = Tmpfs::mount(256 * 1024);
    let log = tmpfs.path().join("log");
    // Every record fills a 4 KiB page and a segment of its own, so every append rolls and the
    // append that meets the full device fails creating its segment.
    let options = WalOptions {
        segment_bytes_max: 4096,
        ..WalOptions::default()
    };
    let record = |offset: u64| vec![offset as u8; 4000];
    let (wal, _) = Wal::open(&log, options.clone()).expect("open");
    let junk = tmpfs.fill();

    let next = append_until_full(&wal, 0, record);
    assert!(!wal.is_poisoned(), "{:?}", wal.poison_cause());
    assert_eq!(
        segment_files(&log).len() as u64,
        next.max(1),
        "one segment per record, none half-created"
    );

    fs::remove_file(&junk).expect("free space");
    assert_eq!(
        wal.append(vec![record(next)]).expect("append"),
        next..next + 1
    );
    drop(wal);

    let expected: Vec<_> = (0..=next).map(|offset| (offset, record(offset))).collect();
    check_reopened(&log, options, &expected);
}

#[test]
fn group_that_runs_out_of_space_mid_write_is_cut_back_whole() {
    let tmpfs = Tmpfs::mount(256 * 1024);
    let log = tmpfs.path().join("log");
    let options = WalOptions::default();
    let (wal, _) = Wal::open(&log, options.clone()).expect("open");
    append_derived(&wal, 0..3);
    let junk = tmpfs.fill();
    // Free a few pages, then ask for far more: part of the batch is written before the device
    // is full, and all of it must go.
    fs::File::options()
        .write(true)
        .open(&junk)
        .and_then(|file| {
            let len = file.metadata()?.len();
            file.set_len(len - 3 * 4096)
        })
        .expect("free three pages");
    let batch: Vec<Vec<u8>> = (3..200).map(|offset| vec![offset as u8; 1000]).collect();
    assert!(matches!(wal.append(batch), Err(WalError::StorageFull)));
    assert!(!wal.is_poisoned());
    assert_eq!(wal.durable_end(), 3);
    // The cut-back freed what the batch had taken: three pages' worth fits again.
    append_derived(&wal, 3..6);
    drop(wal);

    let expected: Vec<_> = (0..6).map(|offset| (offset, payload(offset))).collect();
    check_reopened(&log, options, &expected);
}
