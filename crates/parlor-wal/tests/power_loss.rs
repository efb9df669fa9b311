//! Power loss, simulated. A log on [`SimFs`] runs a random workload (appends alone and in bursts
//! that share a commit group, cursor commits that delete segments) and loses power at a random
//! operation. The disk keeps what a power loss may keep: each unsynced write dropped, kept or torn
//! at 512-byte sectors, in any order; each directory's unsynced changes up to some point. Now and
//! then power goes again while the log recovers. The log must then open, never refuse, and hold
//! every acknowledged record, in order, each batch whole or not at all, with no cursor behind
//! its acknowledged value.
//!
//! `PARLOR_POWER_LOSS_SEEDS=N` runs N seeds instead of the default (and `..._FIRST` moves the
//! first one), for long runs: `cargo test -p parlor-wal --release --test power_loss`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, mpsc};

use common::{Rng, payload};
use parlor_wal::sim::SimFs;
use parlor_wal::{Wal, WalError, WalOptions};

const SEEDS_DEFAULT: u64 = 3_000;
const LOG: &str = "/data/log";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|value| value.parse().unwrap_or_else(|_| panic!("{name}={value:?}")))
        .unwrap_or(default)
}

fn options(rng: &mut Rng) -> WalOptions {
    WalOptions {
        segment_bytes_max: 128 + rng.below(8192),
        record_bytes_max: 4096,
        cursor_names: vec!["reader".to_owned()],
    }
}

fn open(disk: &SimFs, options: &WalOptions) -> Result<(Wal, parlor_wal::Recovery), WalError> {
    Wal::open_on(Arc::new(disk.clone()), Path::new(LOG), options.clone())
}

/// What the workload was told before power went.
#[derive(Default)]
struct Acknowledged {
    /// One past the last acknowledged record.
    records_end: u64,
    /// Where every batch handed to the log ends, acknowledged or not: the log must end at one.
    batch_ends: BTreeSet<u64>,
    /// The last cursor value committed with `Ok`, and every value tried.
    cursor: u64,
    cursors_tried: BTreeSet<u64>,
}

/// What one seed met, to show that the runs cover what they should.
#[derive(Default)]
struct Seen {
    cut_mid_workload: bool,
    torn_bytes_cut: bool,
    power_lost_in_recovery: bool,
    acknowledged: u64,
}

/// Runs the workload on `disk` until it ends or power goes; an error other than the lost power
/// is a failure.
fn workload(disk: &SimFs, options: &WalOptions, rng: &mut Rng) -> Result<Acknowledged, String> {
    let mut acked = Acknowledged::default();
    acked.batch_ends.insert(0);
    acked.cursors_tried.insert(0);
    let unexpected = |error: WalError| {
        if disk.is_powered_off() {
            Ok(())
        } else {
            Err(format!("before the power loss: {error}"))
        }
    };
    let wal = match open(disk, options) {
        Ok((wal, _)) => wal,
        Err(error) => return unexpected(error).map(|()| acked),
    };
    let mut next = 0;
    for _ in 0..40 {
        match rng.below(10) {
            0..6 => {
                let batch = 1 + rng.below(5);
                acked.batch_ends.insert(next + batch);
                let records = (next..next + batch).map(payload).collect();
                match wal.append(records) {
                    Ok(range) if range == (next..next + batch) => acked.records_end = range.end,
                    Ok(range) => return Err(format!("append got {range:?}, not {next}..")),
                    Err(error) => return unexpected(error).map(|()| acked),
                }
                next += batch;
            }
            6..9 => {
                // Batches queued together, so the writer usually puts them in one group.
                let (sender, receiver) = mpsc::channel();
                let batches = 2 + rng.below(4);
                for _ in 0..batches {
                    let batch = 1 + rng.below(4);
                    acked.batch_ends.insert(next + batch);
                    let sender = sender.clone();
                    let records = (next..next + batch).map(payload).collect();
                    wal.append_with(records, Box::new(move |result| drop(sender.send(result))));
                    next += batch;
                }
                for _ in 0..batches {
                    match receiver.recv().expect("every batch is answered") {
                        Ok(range) => acked.records_end = acked.records_end.max(range.end),
                        Err(error) => unexpected(error)?,
                    }
                }
                if disk.is_powered_off() {
                    return Ok(acked);
                }
            }
            _ => {
                let end = wal.durable_end();
                let to = acked.cursor + rng.below(end - acked.cursor + 1);
                acked.cursors_tried.insert(to);
                match wal.commit_cursor("reader", to) {
                    Ok(()) => acked.cursor = acked.cursor.max(to),
                    Err(error) => return unexpected(error).map(|()| acked),
                }
            }
        }
    }
    Ok(acked)
}

fn run(seed: u64) -> Result<Seen, String> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let options = options(&mut rng);
    let disk = SimFs::new();
    disk.cut_power_after(1 + rng.below(160));
    let acked = workload(&disk, &options, &mut rng)?;
    let mut seen = Seen {
        cut_mid_workload: disk.is_powered_off(),
        acknowledged: acked.records_end,
        ..Seen::default()
    };
    let mut disk = disk.after_power_loss(rng.next());
    if rng.below(3) == 0 {
        disk.cut_power_after(1 + rng.below(6));
        if let Ok((wal, recovery)) = open(&disk, &options) {
            seen.torn_bytes_cut |= recovery.truncated_bytes > 0;
            drop(wal);
        }
        seen.power_lost_in_recovery = disk.is_powered_off();
        disk = disk.after_power_loss(rng.next());
    }

    let (wal, recovery) = open(&disk, &options).map_err(|error| format!("reopen: {error}"))?;
    seen.torn_bytes_cut |= recovery.truncated_bytes > 0;
    let end = recovery.next_offset;
    if end < acked.records_end {
        return Err(format!(
            "the log ends at {end}, but records up to {} were acknowledged",
            acked.records_end
        ));
    }
    if !acked.batch_ends.contains(&end) {
        return Err(format!("the log ends at {end}, inside a batch"));
    }
    let cursor = wal.cursor("reader").map_err(|error| error.to_string())?;
    if cursor < acked.cursor || !acked.cursors_tried.contains(&cursor) || cursor > end {
        return Err(format!(
            "cursor at {cursor}: acknowledged {}, tried {:?}, log end {end}",
            acked.cursor, acked.cursors_tried
        ));
    }
    let start = wal.start_offset();
    if start > cursor {
        return Err(format!(
            "records from {start} on are left, the cursor is at {cursor}"
        ));
    }
    check_records(&wal, start, end)?;
    wal.append(vec![payload(end)])
        .map_err(|error| format!("append after recovery: {error}"))?;
    drop(wal);
    let (wal, recovery) =
        open(&disk, &options).map_err(|error| format!("clean reopen: {error}"))?;
    if (recovery.next_offset, recovery.truncated_bytes) != (end + 1, 0) {
        return Err(format!("clean reopen found {recovery:?}"));
    }
    check_records(&wal, start, end + 1)?;
    Ok(seen)
}

fn check_records(wal: &Wal, start: u64, end: u64) -> Result<(), String> {
    let mut reader = wal.reader(start).map_err(|error| error.to_string())?;
    for offset in start..end {
        match reader.next() {
            Ok(Some((found, bytes))) if found == offset && bytes == payload(offset) => {}
            other => return Err(format!("record {offset}: {other:?}")),
        }
    }
    match reader.next() {
        Ok(None) => Ok(()),
        other => Err(format!("after the last record: {other:?}")),
    }
}

#[test]
fn every_acknowledged_record_survives_a_power_loss_at_any_moment() {
    let first = env_u64("PARLOR_POWER_LOSS_SEEDS_FIRST", 1);
    let seeds = env_u64("PARLOR_POWER_LOSS_SEEDS", SEEDS_DEFAULT);
    let mut failures = Vec::new();
    let (mut mid_workload, mut torn, mut in_recovery, mut acknowledged) = (0, 0, 0, 0);
    for seed in first..first + seeds {
        match run(seed) {
            Ok(seen) => {
                mid_workload += u64::from(seen.cut_mid_workload);
                torn += u64::from(seen.torn_bytes_cut);
                in_recovery += u64::from(seen.power_lost_in_recovery);
                acknowledged += seen.acknowledged;
            }
            Err(failure) => failures.push(format!("seed {seed}: {failure}")),
        }
    }
    eprintln!(
        "{seeds} seeds: power lost mid-workload {mid_workload}, torn bytes cut {torn}, power lost \
         again in recovery {in_recovery}, records acknowledged {acknowledged}, failures {}",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The runs must meet what they are here for, or they prove nothing.
    if seeds >= 1_000 {
        assert!(
            mid_workload * 2 > seeds,
            "{mid_workload} of {seeds} cut mid-workload"
        );
        assert!(torn * 20 > seeds, "{torn} of {seeds} cut a torn tail");
        assert!(
            in_recovery * 10 > seeds,
            "{in_recovery} of {seeds} lost power in recovery"
        );
    }
}

#[test]
fn after_a_failed_sync_nothing_more_is_acknowledged_and_what_was_survives() {
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let options = options(&mut rng);
        let disk = SimFs::new();
        let (wal, _) = open(&disk, &options).expect("open");
        let acked = 1 + rng.below(30);
        for offset in 0..acked {
            wal.append(vec![payload(offset)]).expect("append");
        }
        disk.fail_syncs(true);
        assert!(matches!(
            wal.append(vec![payload(acked)]),
            Err(WalError::Poisoned)
        ));
        // The disk works again, but the log stays poisoned: after a failed fsync nobody knows
        // what reached the disk.
        disk.fail_syncs(false);
        assert!(matches!(
            wal.append(vec![payload(acked + 1)]),
            Err(WalError::Poisoned)
        ));
        assert!(wal.is_poisoned());
        assert_eq!(wal.durable_end(), acked, "seed {seed}");
        drop(wal);
        let disk = disk.after_power_loss(rng.next());
        let (wal, recovery) = open(&disk, &options).expect("reopen");
        assert!(
            (acked..=acked + 1).contains(&recovery.next_offset),
            "seed {seed}: {recovery:?}"
        );
        check_records(&wal, 0, recovery.next_offset).unwrap_or_else(|error| panic!("{error}"));
    }
}

#[test]
fn a_reader_starts_near_its_offset_instead_of_reading_the_segment_from_the_start() {
    let disk = SimFs::new();
    let options = WalOptions::default();
    let record = vec![7u8; 1000];
    let count = 4_000u64;
    let read_last = |wal: &Wal, label: &str| {
        let before = disk.bytes_read();
        let mut reader = wal.reader(count - 1).expect("reader");
        assert_eq!(
            reader.next().expect("read"),
            Some((count - 1, record.clone()))
        );
        let read = disk.bytes_read() - before;
        assert!(
            read < 600 * 1024,
            "{label}: {read} bytes read to reach the end of a 4 MB segment"
        );
    };
    let (wal, _) = open(&disk, &options).expect("open");
    for _ in 0..count / 100 {
        wal.append(vec![record.clone(); 100]).expect("append");
    }
    read_last(&wal, "index kept by the writer");
    drop(wal);
    let (wal, _) = open(&disk, &options).expect("reopen");
    read_last(&wal, "index built by recovery");
}

#[test]
fn a_reader_never_reads_bytes_that_are_written_but_not_yet_durable() {
    // A group written and not yet synced may still be cut back (when the device is full) and
    // rewritten with other records at the same offsets: a reader that had buffered it would
    // serve records that were refused.
    let disk = SimFs::new();
    let options = WalOptions::default();
    let (wal, _) = open(&disk, &options).expect("open");
    for offset in 0..50 {
        wal.append(vec![payload(offset)]).expect("append");
    }
    let segment = Path::new(LOG).join(format!("{:020}.wal", 0));
    let durable_bytes = disk.read_file(&segment).expect("read").len() as u64;
    disk.hold_file_syncs(true);
    let appender = {
        let wal = wal.clone();
        std::thread::spawn(move || wal.append(vec![payload(50); 20]))
    };
    while disk.read_file(&segment).expect("read").len() as u64 == durable_bytes {
        std::thread::yield_now();
    }
    // The group is on the disk, its fsync held: a reader reads everything durable.
    let mut reader = wal.reader(0).expect("reader");
    for offset in 0..50 {
        assert_eq!(
            reader.next().expect("read"),
            Some((offset, payload(offset)))
        );
    }
    assert_eq!(reader.next().expect("read"), None);
    assert!(
        disk.read_end(&segment).expect("read end") <= durable_bytes,
        "a reader read past the durable end ({durable_bytes} bytes)"
    );
    disk.hold_file_syncs(false);
    assert_eq!(appender.join().expect("appender").expect("append"), 50..70);
    assert_eq!(reader.next().expect("read"), Some((50, payload(50))));
}
