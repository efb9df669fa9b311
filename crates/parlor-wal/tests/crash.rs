//! `kill -9` of a process that is appending: every range it was told is durable must read back
//! byte for byte after recovery.
//!
//! The child is this test binary re-executed with `CHILD_DIR_ENV` set, running only
//! `crash_child_entry_point`, which is a no-op in a normal test run.

mod common;

use std::collections::BTreeSet;
use std::env;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use common::*;
use parlor_wal::{Wal, WalOptions};

const CHILD_DIR_ENV: &str = "PARLOR_WAL_CRASH_CHILD_DIR";
/// Batches the child keeps in flight, so the writer really groups them.
const CHILD_IN_FLIGHT_MAX: usize = 16;
/// The child stops by itself after this many records, in case nobody kills it.
const CHILD_RECORDS_MAX: u64 = 1_000_000;

fn options() -> WalOptions {
    // Small segments so the kill can land around rolls too.
    WalOptions {
        segment_bytes_max: 4096,
        ..WalOptions::default()
    }
}

/// Runs only in the child: appends derived payloads (its offsets are predictable because it is the
/// only appender and offsets follow call order) and prints `ack start end` once each is durable.
#[test]
fn crash_child_entry_point() {
    let Ok(dir) = env::var(CHILD_DIR_ENV) else {
        return;
    };
    let (wal, recovery) = Wal::open(dir.as_ref(), options()).expect("child open");
    // Counting semaphore: each finished batch sends one message.
    let (finished, finished_rx) = mpsc::channel::<()>();
    let mut in_flight = 0;
    let mut next = recovery.next_offset;
    let mut batch_len = 1;
    while next < recovery.next_offset + CHILD_RECORDS_MAX {
        while finished_rx.try_recv().is_ok() {
            in_flight -= 1;
        }
        if in_flight == CHILD_IN_FLIGHT_MAX {
            finished_rx.recv().expect("writer alive");
            in_flight -= 1;
        }
        let expected = next..next + batch_len;
        let records = expected.clone().map(payload).collect();
        let finished = finished.clone();
        in_flight += 1;
        wal.append_with(
            records,
            Box::new(move |result| {
                let range = result.expect("child append");
                assert_eq!(range, expected, "offsets follow call order");
                let mut stdout = std::io::stdout().lock();
                writeln!(stdout, "ack {} {}", range.start, range.end).expect("stdout");
                stdout.flush().expect("stdout");
                let _ = finished.send(());
            }),
        );
        next += batch_len;
        batch_len = batch_len % 5 + 1;
    }
    wal.close();
}

/// Kills the child if the test fails before it does, so no appender outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The range in an `ack start end` line. The marker may follow libtest's `test name ... ` on the
/// same line. A line cut short by the kill has no valid range and is ignored.
fn parse_ack(line: &str) -> Option<std::ops::Range<u64>> {
    let (_, range) = line.split_once("ack ")?;
    let (start, end) = range.trim().split_once(' ')?;
    Some(start.parse().ok()?..end.parse().ok()?)
}

#[test]
fn kill_9_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked = BTreeSet::new();
    // Where the next child starts: the recovered end, which may include records that reached the
    // disk but were never acknowledged.
    let mut round_start = 0;
    for round in 1..=3u64 {
        let mut round_acked = BTreeSet::new();
        let child = Command::new(env::current_exe().expect("test binary"))
            .args([
                "crash_child_entry_point",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let mut child = KillOnDrop(child);
        let stdout = BufReader::new(child.0.stdout.take().expect("stdout"));
        let mut lines = stdout.lines();
        let kill_after = 300 * round;
        let mut killed = false;
        for line in lines.by_ref() {
            let Some(range) = parse_ack(&line.expect("child stdout")) else {
                continue;
            };
            round_acked.extend(range);
            if round_acked.len() as u64 >= kill_after {
                child.0.kill().expect("kill -9");
                killed = true;
                break;
            }
        }
        assert!(
            killed,
            "round {round}: the child stopped before it was killed"
        );
        // Acks already in the pipe were printed after durability too.
        for line in lines {
            let Ok(line) = line else { break };
            round_acked.extend(parse_ack(&line).into_iter().flatten());
        }
        child.0.wait().expect("reap child");

        let round_end = round_start + round_acked.len() as u64;
        assert!(
            round_acked.iter().copied().eq(round_start..round_end),
            "round {round}: acks are gap-free"
        );
        acked.extend(round_acked);

        let (wal, recovery) = Wal::open(dir.path(), options()).expect("recover after kill");
        assert!(
            recovery.next_offset >= round_end,
            "round {round}: {recovery:?}, acknowledged up to {round_end}"
        );
        // Every acknowledged record is there; every record present (acknowledged or not) is
        // exactly what was appended at its offset.
        assert!(acked.iter().all(|&offset| offset < recovery.next_offset));
        assert_derived(&wal, 0..recovery.next_offset);
        round_start = recovery.next_offset;
    }
}
