//! Logs written by earlier releases open with nothing lost. `tests/fixtures/v1` was written by
//! the last release with version 1 segments (no commit groups): records 0..40 with the payloads
//! of `common::payload`, appended three at a time into 512-byte segments, then cursor `reader`
//! committed at 12 and `other` at 9, which deleted the segments below offset 9.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use parlor_wal::{Wal, WalOptions};

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create");
    for entry in fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).expect("copy");
        }
    }
}

fn fixture_options() -> WalOptions {
    with_cursors(small_segments(), &["reader", "other"])
}

#[test]
fn a_version_1_log_opens_with_every_record_and_cursor_and_takes_new_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    copy_dir(&fixture, dir.path());
    let old_segments = segment_files(dir.path());

    let (wal, recovery) = Wal::open(dir.path(), fixture_options()).expect("open the v1 log");
    assert_eq!(recovery.next_offset, 40);
    assert_eq!(recovery.truncated_bytes, 0);
    assert_eq!(recovery.segments, old_segments.len());
    assert_eq!(wal.start_offset(), 9);
    assert_eq!(
        (wal.cursor("reader").ok(), wal.cursor("other").ok()),
        (Some(12), Some(9))
    );
    assert_derived(&wal, 9..40);
    // Appends go to a new segment in the current format; the old ones are left as they were.
    append_derived_in_batches(&wal, 40..60, 4);
    assert_derived(&wal, 9..60);
    for old in &old_segments {
        assert_eq!(
            fs::read(old).expect("read"),
            fs::read(fixture.join(old.file_name().expect("name"))).expect("read fixture"),
        );
    }
    drop(wal);

    let (wal, recovery) = Wal::open(dir.path(), fixture_options()).expect("reopen");
    assert_eq!((recovery.next_offset, recovery.truncated_bytes), (60, 0));
    assert_derived(&wal, 9..60);
    // The old segments go as usual once every cursor has passed them.
    wal.commit_cursor("other", 45).expect("commit");
    wal.commit_cursor("reader", 45).expect("commit");
    assert!(wal.start_offset() >= 40, "{}", wal.start_offset());
    assert_derived(&wal, wal.start_offset()..60);
}

#[test]
fn a_torn_tail_in_a_version_1_segment_is_cut_as_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1"),
        dir.path(),
    );
    let last = last_segment(dir.path());
    let len = fs::metadata(&last).expect("metadata").len();
    // Record 39 is the last one and ends the file; cutting 5 bytes tears it.
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open")
        .set_len(len - 5)
        .expect("truncate");
    let (wal, recovery) = Wal::open(dir.path(), fixture_options()).expect("open");
    assert_eq!(recovery.next_offset, 39);
    assert_derived(&wal, 9..39);
    append_derived(&wal, 39..41);
    assert_derived(&wal, 9..41);
}
