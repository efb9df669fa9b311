//! Damage at rest is detected, never served. In a log closed cleanly (sealed: `END` holds its
//! end), a bit flipped or a file cut anywhere (any segment, cursor file or the seal) makes the
//! log refuse to open. After a crash (no seal) the same damage makes it refuse, or cut its last
//! group and say so in `Recovery::truncated_bytes`, but for one case no log can tell without a
//! record of its end: the last segment cut exactly between two groups, past every cursor,
//! looks like a log that ended there. A record the log serves is always the one written.
//! Damage while the log is open is caught by the reader's CRC check.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{Rng, payload};
use parlor_wal::sim::SimFs;
use parlor_wal::{FileSystem, Wal, WalError, WalOptions};

const LOG: &str = "/log";
const RECORDS: u64 = 120;

fn options() -> WalOptions {
    WalOptions {
        segment_bytes_max: 1024,
        record_bytes_max: 4096,
        cursor_names: vec!["reader".to_owned(), "archive".to_owned()],
    }
}

/// A closed log of `RECORDS` records in batches of 1 to 4, over several segments, with both
/// cursors committed past its first segments; without its seal unless `sealed`, as a crash
/// after the last sync leaves it. Returns the disk and where each batch ends.
fn closed_log(sealed: bool) -> (SimFs, Vec<u64>) {
    let disk = SimFs::new();
    let (wal, _) = Wal::open_on(Arc::new(disk.clone()), Path::new(LOG), options()).expect("open");
    let mut rng = Rng(7);
    let mut ends = vec![0];
    let mut next = 0;
    while next < RECORDS {
        let end = (next + 1 + rng.below(4)).min(RECORDS);
        wal.append((next..end).map(payload).collect())
            .expect("append");
        ends.push(end);
        next = end;
    }
    wal.commit_cursor("reader", 30).expect("commit");
    wal.commit_cursor("archive", 25).expect("commit");
    assert!(wal.start_offset() > 0, "segments were deleted");
    drop(wal);
    let seal = Path::new(LOG).join("END");
    if !sealed {
        disk.remove_file(&seal).expect("remove the seal");
        disk.sync_dir(Path::new(LOG)).expect("sync");
    }
    assert_eq!(disk.read_file(&seal).is_ok(), sealed);
    (disk, ends)
}

fn files(disk: &SimFs) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = disk
        .list(Path::new(LOG))
        .expect("list")
        .into_iter()
        .filter(|name| name.ends_with(".wal"))
        .map(|name| Path::new(LOG).join(name))
        .collect();
    files.sort();
    files.extend(
        ["reader", "archive"]
            .iter()
            .map(|name| Path::new(LOG).join("cursors").join(name)),
    );
    let seal = Path::new(LOG).join("END");
    if disk.read_file(&seal).is_ok() {
        files.push(seal);
    }
    files
}

enum Damage {
    FlipBit,
    Cut,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Refused = 0,
    /// Opened without the last group, and said so.
    CutReported = 1,
    /// Opened at an earlier group boundary of the last segment, which a cut there looks like.
    EndedEarlier = 2,
}

/// Damages one file of a copy of `disk`, opens the log and checks what it serves.
fn damage_and_open(disk: &SimFs, ends: &[u64], rng: &mut Rng, damage: &Damage) -> Outcome {
    let disk = disk.after_power_loss(0);
    let files = files(&disk);
    let file = &files[rng.below(files.len() as u64) as usize];
    let mut bytes = disk.read_file(file).expect("read");
    let what = match damage {
        Damage::FlipBit => {
            let at = rng.below(bytes.len() as u64) as usize;
            let bit = rng.below(8);
            bytes[at] ^= 1 << bit;
            format!("bit {bit} of byte {at} of {}", file.display())
        }
        Damage::Cut => {
            let len = rng.below(bytes.len() as u64) as usize;
            bytes.truncate(len);
            format!("{} cut to {len} bytes", file.display())
        }
    };
    disk.replace_file(file, bytes).expect("damage");
    let (wal, recovery) = match Wal::open_on(Arc::new(disk.clone()), Path::new(LOG), options()) {
        Err(WalError::Corrupt { .. }) => return Outcome::Refused,
        Err(other) => panic!("{what}: expected Corrupt or a reported cut, got {other}"),
        Ok(opened) => opened,
    };
    let end = recovery.next_offset;
    let last_group_start = ends[ends.len() - 2];
    let last_segment = files
        .iter()
        .rfind(|path| path.extension().is_some_and(|ext| ext == "wal"));
    let outcome = if end == last_group_start && recovery.truncated_bytes > 0 {
        Outcome::CutReported
    } else if matches!(damage, Damage::Cut) && Some(file) == last_segment && ends.contains(&end) {
        Outcome::EndedEarlier
    } else {
        panic!("{what}: opened with {recovery:?}, nothing refused")
    };
    assert!(
        (wal.cursor("reader").ok(), wal.cursor("archive").ok()) == (Some(30), Some(25)),
        "{what}: cursors changed"
    );
    let mut reader = wal.reader(wal.start_offset()).expect("reader");
    for offset in wal.start_offset()..end {
        match reader.next() {
            Ok(Some((found, record))) => {
                assert_eq!(found, offset, "{what}");
                assert_eq!(
                    record,
                    payload(offset),
                    "{what}: record {offset} served wrong"
                );
            }
            other => panic!("{what}: record {offset}: {other:?}"),
        }
    }
    outcome
}

/// `runs` damages of a fresh copy of the log each, and what they led to.
fn outcomes(sealed: bool, damage: Damage, runs: usize, seed: u64) -> [usize; 3] {
    let (disk, ends) = closed_log(sealed);
    let mut rng = Rng(seed);
    let mut counts = [0; 3];
    for _ in 0..runs {
        counts[damage_and_open(&disk, &ends, &mut rng, &damage) as usize] += 1;
    }
    eprintln!(
        "sealed {sealed}, {runs} damages: refused {}, last group cut and reported {}, ended \
         earlier {}",
        counts[0], counts[1], counts[2]
    );
    counts
}

#[test]
fn a_flipped_bit_anywhere_in_a_sealed_log_is_refused() {
    assert_eq!(outcomes(true, Damage::FlipBit, 2_000, 11), [2_000, 0, 0]);
}

#[test]
fn a_file_cut_anywhere_in_a_sealed_log_is_refused() {
    assert_eq!(outcomes(true, Damage::Cut, 1_000, 13), [1_000, 0, 0]);
}

#[test]
fn after_a_crash_a_flipped_bit_is_refused_or_cuts_only_a_reported_last_group() {
    let [refused, cut, earlier] = outcomes(false, Damage::FlipBit, 2_000, 11);
    assert_eq!(earlier, 0, "a flipped bit is never taken for an end");
    assert!(refused > 1_500 && cut > 0, "refused {refused}, cut {cut}");
}

#[test]
fn after_a_crash_a_file_cut_is_refused_unless_it_looks_like_an_earlier_end() {
    let [refused, cut, _] = outcomes(false, Damage::Cut, 1_000, 13);
    assert!(refused > 700 && cut > 0, "refused {refused}, cut {cut}");
}

#[test]
fn a_bit_flipped_while_the_log_is_open_fails_the_read_and_is_never_served() {
    let (disk, _) = closed_log(true);
    let mut rng = Rng(17);
    for _ in 0..300 {
        let disk = disk.after_power_loss(0);
        let (wal, _) =
            Wal::open_on(Arc::new(disk.clone()), Path::new(LOG), options()).expect("open");
        let segments: Vec<PathBuf> = files(&disk)
            .into_iter()
            .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
            .collect();
        let segment = &segments[rng.below(segments.len() as u64) as usize];
        let mut bytes = disk.read_file(segment).expect("read");
        // Past the header: a damaged header fails the read as well, but says so differently.
        let at = 20 + rng.below(bytes.len() as u64 - 20) as usize;
        bytes[at] ^= 1 << rng.below(8);
        disk.replace_file(segment, bytes).expect("damage");
        let mut reader = wal.reader(wal.start_offset()).expect("reader");
        let mut offset = wal.start_offset();
        let failed = loop {
            match reader.next() {
                Ok(Some((found, record))) => {
                    assert_eq!((found, record), (offset, payload(offset)), "served wrong");
                    offset += 1;
                }
                Ok(None) => break false,
                Err(WalError::Corrupt { .. }) => break true,
                Err(other) => panic!("expected Corrupt, got {other}"),
            }
        };
        assert!(
            failed,
            "a flipped bit at byte {at} of {segment:?} went unnoticed"
        );
    }
}
