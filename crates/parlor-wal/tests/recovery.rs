//! Recovery on open: torn tails are cut, damage to synced data is refused, never a panic.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use parlor_wal::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, Wal, WalError, WalOptions};

/// Bytes the record at `offset` takes on disk (payloads are derived from offsets).
fn frame_bytes(offset: u64) -> u64 {
    RECORD_HEADER_BYTES + payload(offset).len() as u64
}

/// Byte position of record `offset` in a segment starting at `base`.
fn record_position(base: u64, offset: u64) -> u64 {
    SEGMENT_HEADER_BYTES + (base..offset).map(frame_bytes).sum::<u64>()
}

fn base_of(segment: &Path) -> u64 {
    segment
        .file_stem()
        .and_then(|stem| stem.to_str())
        .and_then(|stem| stem.parse().ok())
        .expect("segment name")
}

/// A closed log holding the derived payloads for `0..count`, one record per append, as a
/// crash after the last sync leaves it (without the seal of a clean close).
fn log_with(dir: &Path, options: &WalOptions, count: u64) {
    {
        let (wal, _) = Wal::open(dir, options.clone()).expect("open");
        for offset in 0..count {
            append_derived(&wal, offset..offset + 1);
        }
    }
    as_after_a_crash(dir);
}

fn segment_header(base: u64) -> Vec<u8> {
    let mut header = b"PWAL".to_vec();
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&base.to_le_bytes());
    let crc = crc32c::crc32c(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    header
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open segment")
        .write_all(bytes)
        .expect("append");
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open segment")
        .set_len(len)
        .expect("truncate");
}

fn flip_byte(path: &Path, position: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open segment");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, position).expect("read");
    file.write_all_at(&[byte[0] ^ 0x40], position)
        .expect("write");
}

fn expect_corrupt(
    result: Result<(Wal, parlor_wal::Recovery), WalError>,
) -> (std::path::PathBuf, u64, String) {
    match result {
        Err(WalError::Corrupt {
            segment,
            position,
            reason,
        }) => (segment, position, reason),
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok((_, recovery)) => panic!("expected Corrupt, opened with {recovery:?}"),
    }
}

#[test]
fn torn_tail_is_truncated_and_appends_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    log_with(dir.path(), &small_segments(), 20);
    let last = last_segment(dir.path());
    let len = fs::metadata(&last).expect("metadata").len();
    set_len(&last, len - 5);
    let (wal, recovery) = Wal::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(recovery.next_offset, 19, "the chopped record is gone");
    assert_eq!(recovery.truncated_bytes, frame_bytes(19) - 5);
    assert_eq!(
        fs::metadata(&last).expect("metadata").len(),
        len - frame_bytes(19)
    );
    assert_derived(&wal, 0..19);
    append_derived(&wal, 19..21);
    assert_derived(&wal, 0..21);
}

#[test]
fn garbage_after_the_last_record_is_truncated() {
    for garbage in [
        vec![0u8; 300],
        vec![0xab; 17],
        b"PWAL not a record at all".to_vec(),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        log_with(dir.path(), &small_segments(), 20);
        append_bytes(&last_segment(dir.path()), &garbage);
        let (wal, recovery) = Wal::open(dir.path(), small_segments()).expect("reopen");
        assert_eq!(recovery.next_offset, 20);
        assert_eq!(recovery.truncated_bytes, garbage.len() as u64);
        append_derived(&wal, 20..21);
        assert_derived(&wal, 0..21);
    }
}

#[test]
fn damaged_record_followed_by_valid_records_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    log_with(dir.path(), &WalOptions::default(), 10);
    let last = last_segment(dir.path());
    let position = record_position(0, 3);
    flip_byte(&last, position + RECORD_HEADER_BYTES + 2);
    let (segment, found_position, reason) =
        expect_corrupt(Wal::open(dir.path(), WalOptions::default()));
    assert_eq!((segment, found_position), (last.clone(), position));
    assert!(
        reason.contains("offset 4"),
        "names the valid record behind the damage: {reason}"
    );
    // Refusing must not have modified the file.
    assert_eq!(
        fs::metadata(&last).expect("metadata").len(),
        record_position(0, 10)
    );
}

#[test]
fn a_last_group_torn_in_its_first_record_is_cut_whole_though_later_ones_landed() {
    // Before the fsync of a group, the kernel may write its later sectors and not its first: the
    // group was never acknowledged, so it goes, and the log opens.
    let dir = tempfile::tempdir().expect("tempdir");
    let options = WalOptions::default();
    {
        let (wal, _) = Wal::open(dir.path(), options.clone()).expect("open");
        append_derived(&wal, 0..4);
        append_derived(&wal, 4..10);
    }
    as_after_a_crash(dir.path());
    let last = last_segment(dir.path());
    let len = fs::metadata(&last).expect("metadata").len();
    flip_byte(&last, record_position(0, 4) + RECORD_HEADER_BYTES + 1);
    let (wal, recovery) = Wal::open(dir.path(), options).expect("a torn last group opens");
    assert_eq!(recovery.next_offset, 4);
    assert_eq!(recovery.truncated_bytes, len - record_position(0, 4));
    assert_derived(&wal, 0..4);
    append_derived(&wal, 4..5);
    assert_derived(&wal, 0..5);
}

#[test]
fn a_last_group_missing_its_last_record_is_cut_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = WalOptions::default();
    {
        let (wal, _) = Wal::open(dir.path(), options.clone()).expect("open");
        append_derived(&wal, 0..3);
        append_derived(&wal, 3..8);
    }
    as_after_a_crash(dir.path());
    let last = last_segment(dir.path());
    // Records 3..7 are whole; the group's commit marker, record 7, is gone.
    set_len(&last, record_position(0, 7));
    let (wal, recovery) = Wal::open(dir.path(), options).expect("open");
    assert_eq!(recovery.next_offset, 3);
    assert_derived(&wal, 0..3);
}

#[test]
fn damaged_length_field_followed_by_valid_records_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    log_with(dir.path(), &WalOptions::default(), 10);
    let last = last_segment(dir.path());
    // A length far past the end looks like a torn write; the records after it prove it is not.
    flip_byte(&last, record_position(0, 5) + 3);
    let (_, position, _) = expect_corrupt(Wal::open(dir.path(), WalOptions::default()));
    assert_eq!(position, record_position(0, 5));
}

#[test]
fn damaged_last_record_is_cut_as_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    log_with(dir.path(), &WalOptions::default(), 10);
    flip_byte(
        &last_segment(dir.path()),
        record_position(0, 9) + RECORD_HEADER_BYTES,
    );
    let (wal, recovery) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_eq!(
        (recovery.next_offset, recovery.truncated_bytes),
        (9, frame_bytes(9))
    );
    assert_derived(&wal, 0..9);
}

#[test]
fn truncated_non_last_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    log_with(dir.path(), &small_segments(), 30);
    let first = segment_files(dir.path()).remove(0);
    let len = fs::metadata(&first).expect("metadata").len();
    set_len(&first, len - 3);
    let (segment, _, _) = expect_corrupt(Wal::open(dir.path(), small_segments()));
    assert_eq!(segment, first);
}

#[test]
fn garbage_after_a_non_last_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    log_with(dir.path(), &small_segments(), 30);
    let first = segment_files(dir.path()).remove(0);
    let len = fs::metadata(&first).expect("metadata").len();
    append_bytes(&first, &[0u8; 40]);
    let (segment, position, _) = expect_corrupt(Wal::open(dir.path(), small_segments()));
    assert_eq!((segment, position), (first, len));
}

#[test]
fn missing_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    log_with(dir.path(), &small_segments(), 30);
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 3);
    fs::remove_file(&segments[1]).expect("remove");
    let (segment, _, reason) = expect_corrupt(Wal::open(dir.path(), small_segments()));
    assert_eq!(segment, segments[2]);
    assert!(reason.contains("previous segment ends"), "{reason}");
}

#[test]
fn empty_partial_or_header_only_last_segment_is_accepted() {
    let next_base = 30;
    for new_segment in [
        Vec::new(),
        segment_header(next_base)[..7].to_vec(),
        segment_header(next_base),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        log_with(dir.path(), &small_segments(), 30);
        let before = segment_files(dir.path()).len();
        let path = dir.path().join(format!("{next_base:020}.wal"));
        fs::write(&path, &new_segment).expect("write new segment");
        let (wal, recovery) = Wal::open(dir.path(), small_segments()).expect("reopen");
        assert_eq!(recovery.next_offset, 30);
        assert_eq!(recovery.segments, before + 1);
        assert_eq!(
            fs::metadata(&path).expect("metadata").len(),
            SEGMENT_HEADER_BYTES
        );
        append_derived(&wal, 30..32);
        assert_derived(&wal, 0..32);
    }
}

#[test]
fn last_segment_with_a_bad_header_and_records_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    log_with(dir.path(), &small_segments(), 30);
    let last = last_segment(dir.path());
    flip_byte(&last, 9);
    let (segment, position, _) = expect_corrupt(Wal::open(dir.path(), small_segments()));
    assert_eq!((segment, position), (last, 0));
}

#[test]
fn damaged_cursor_file_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = with_cursors(small_segments(), &["c"]);
    {
        let (wal, _) = Wal::open(dir.path(), options.clone()).expect("open");
        append_derived(&wal, 0..3);
        wal.commit_cursor("c", 2).expect("commit");
    }
    let cursor = dir.path().join("cursors").join("c");
    flip_byte(&cursor, 5);
    let (path, _, _) = expect_corrupt(Wal::open(dir.path(), options));
    assert_eq!(path, cursor);
}

#[test]
fn damaged_tail_never_loses_a_record_acknowledged_before_the_damage() {
    for seed in 1..=150u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let dir = tempfile::tempdir().expect("tempdir");
        let options = WalOptions {
            segment_bytes_max: 64 + rng.below(1024),
            ..WalOptions::default()
        };
        let mut count = 0;
        // Each append is a commit group of its own: recovery keeps or cuts it whole.
        let mut group_ends = Vec::new();
        {
            let (wal, _) = Wal::open(dir.path(), options.clone()).expect("open");
            for _ in 0..1 + rng.below(6) {
                let batch = 1 + rng.below(8);
                append_derived(&wal, count..count + batch);
                count += batch;
                group_ends.push(count);
            }
        }
        as_after_a_crash(dir.path());
        let last = last_segment(dir.path());
        let base = base_of(&last);
        let len = fs::metadata(&last).expect("metadata").len();
        assert_eq!(len, record_position(base, count), "seed {seed}: layout");
        // Damage point: where the last segment stops being what the log wrote.
        let (damage_at, garbage) = match rng.below(3) {
            0 => (len, rng.bytes(1, 300)),
            1 => (rng.below(len + 1), Vec::new()),
            // Cut, then garbage, behind an intact header (a damaged header followed by data is
            // corruption by design: records are only written after the header was synced).
            _ => (
                SEGMENT_HEADER_BYTES + rng.below(len - SEGMENT_HEADER_BYTES + 1),
                rng.bytes(1, 64),
            ),
        };
        set_len(&last, damage_at);
        append_bytes(&last, &garbage);
        let survivors = group_ends
            .iter()
            .copied()
            .filter(|&end| end >= base && record_position(base, end) <= damage_at)
            .max()
            .unwrap_or(base);

        let (wal, recovery) = Wal::open(dir.path(), options.clone())
            .unwrap_or_else(|error| panic!("seed {seed}: damage at {damage_at} of {len}: {error}"));
        assert_eq!(
            recovery.next_offset, survivors,
            "seed {seed}: damage at {damage_at} of {len}"
        );
        assert_derived(&wal, 0..survivors);
        append_derived(&wal, survivors..survivors + 1);
        drop(wal);
        let (wal, recovery) = Wal::open(dir.path(), options).expect("second reopen");
        assert_eq!(
            (recovery.next_offset, recovery.truncated_bytes),
            (survivors + 1, 0),
            "seed {seed}"
        );
        assert_derived(&wal, 0..survivors + 1);
    }
}

#[test]
fn arbitrary_segment_bytes_open_cleanly_or_fail_as_corrupt() {
    let (mut opened, mut refused) = (0, 0);
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0xd1b5_4a32_d192_ed03));
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = match rng.below(3) {
            0 => Vec::new(),
            _ => segment_header(0),
        };
        if rng.below(2) == 0 {
            // Real records, so the damage below lands in valid structure.
            let mut offset = 0;
            while bytes.len() < 600 {
                let payload = payload(offset);
                let len = payload.len() as u32;
                let mut crc = crc32c::crc32c(&len.to_le_bytes());
                crc = crc32c::crc32c_append(crc, &offset.to_le_bytes());
                crc = crc32c::crc32c_append(crc, &payload);
                bytes.extend_from_slice(&len.to_le_bytes());
                bytes.extend_from_slice(&crc.to_le_bytes());
                bytes.extend_from_slice(&offset.to_le_bytes());
                bytes.extend_from_slice(&payload);
                offset += 1;
            }
        }
        let random_tail = rng.bytes(0, 400);
        bytes.extend_from_slice(&random_tail);
        for _ in 0..rng.below(4) {
            if !bytes.is_empty() {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
        }
        fs::write(dir.path().join(format!("{:020}.wal", 0)), &bytes).expect("write segment");
        match Wal::open(dir.path(), WalOptions::default()) {
            Ok((wal, recovery)) => {
                // Whatever survived must read back without error.
                let records = read_all(&wal, 0);
                assert_eq!(records.len() as u64, recovery.next_offset, "seed {seed}");
                for (offset, bytes) in records {
                    assert_eq!(bytes, payload(offset), "seed {seed}");
                }
                opened += 1;
            }
            Err(WalError::Corrupt { .. }) => refused += 1,
            Err(other) => panic!("seed {seed}: expected Ok or Corrupt, got {other}"),
        }
    }
    // Both outcomes must occur, or the inputs (or the recovery) are degenerate.
    assert!(
        opened > 50 && refused > 50,
        "opened {opened}, refused {refused}"
    );
}

#[test]
fn a_cleanly_closed_log_cut_between_two_groups_is_refused() {
    // Without the seal this looks like a log that ended there; with it, it is damage.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
        append_derived(&wal, 0..3);
        append_derived(&wal, 3..5);
    }
    set_len(&last_segment(dir.path()), record_position(0, 3));
    let (path, _, reason) = expect_corrupt(Wal::open(dir.path(), WalOptions::default()));
    assert_eq!(path, dir.path().join("END"));
    assert!(reason.contains("closed cleanly at offset 5"), "{reason}");
    assert!(reason.contains("now ends at offset 3"), "{reason}");
}

#[test]
fn a_cleanly_closed_log_missing_its_last_segment_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (wal, _) = Wal::open(dir.path(), small_segments()).expect("open");
        append_derived_in_batches(&wal, 0..30, 3);
    }
    fs::remove_file(last_segment(dir.path())).expect("remove");
    let (path, _, _) = expect_corrupt(Wal::open(dir.path(), small_segments()));
    assert_eq!(path, dir.path().join("END"));
}

#[test]
fn the_seal_is_gone_while_the_log_is_open_and_back_after_a_clean_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seal = dir.path().join("END");
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    assert!(!seal.exists());
    append_derived(&wal, 0..3);
    drop(wal);
    assert_eq!(fs::read(&seal).expect("sealed").len(), 16);
    let (wal, recovery) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_eq!(recovery.next_offset, 3);
    // A crash from here on must not meet a seal that no longer holds.
    assert!(
        !seal.exists(),
        "open removes the seal before anything is appended"
    );
    append_derived(&wal, 3..4);
    drop(wal);
    flip_byte(&seal, 6);
    let (path, _, reason) = expect_corrupt(Wal::open(dir.path(), WalOptions::default()));
    assert_eq!((path, reason.as_str()), (seal, "crc mismatch"));
}
