//! Appending, reading, group commit, cursors, segment deletion and fsync failure, on real files.

mod common;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use common::*;
use parlor_wal::{APPEND_QUEUE_RECORDS_MAX, Recovery, Wal, WalError, WalOptions};

#[test]
fn records_read_back_in_order_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, recovery) = Wal::open(dir.path(), small_segments()).expect("open");
    assert_eq!(
        recovery,
        Recovery {
            next_offset: 0,
            truncated_bytes: 0,
            segments: 0
        }
    );
    let mut next = 0;
    for batch_len in [1, 3, 7, 1, 12, 2, 20, 4] {
        append_derived(&wal, next..next + batch_len);
        next += batch_len;
    }
    assert_eq!(wal.durable_end(), next);
    assert!(
        segment_files(dir.path()).len() >= 4,
        "512-byte segments must have rolled"
    );
    assert_derived(&wal, 0..next);
    // A reader can also start in the middle of a segment.
    assert_derived(&wal, 17..next);
}

#[test]
fn reopen_continues_offsets_after_the_last_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segments = {
        let (wal, _) = Wal::open(dir.path(), small_segments()).expect("open");
        append_derived(&wal, 0..30);
        segment_files(dir.path()).len()
    };
    let (wal, recovery) = Wal::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(
        recovery,
        Recovery {
            next_offset: 30,
            truncated_bytes: 0,
            segments
        }
    );
    assert_eq!(wal.durable_end(), 30);
    append_derived(&wal, 30..33);
    assert_derived(&wal, 0..33);
}

#[test]
fn concurrent_appends_get_disjoint_gap_free_ranges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), small_segments()).expect("open");
    let threads: Vec<_> = (0..8u8)
        .map(|thread_id| {
            let wal = wal.clone();
            thread::spawn(move || {
                let mut acked = Vec::new();
                for index in 0..100u32 {
                    let records: Vec<Vec<u8>> = (0..1 + index % 3)
                        .map(|part| {
                            let mut record = vec![thread_id];
                            record.extend_from_slice(&index.to_le_bytes());
                            record.extend_from_slice(&part.to_le_bytes());
                            record
                        })
                        .collect();
                    let range = wal.append(records.clone()).expect("append");
                    assert_eq!(range.end - range.start, records.len() as u64);
                    acked.push((range, records));
                }
                acked
            })
        })
        .collect();
    let mut acked: Vec<_> = threads
        .into_iter()
        .flat_map(|thread| thread.join().expect("thread"))
        .collect();
    acked.sort_by_key(|(range, _)| range.start);
    let mut expected_start = 0;
    for (range, _) in &acked {
        assert_eq!(
            range.start, expected_start,
            "ranges must be disjoint and gap-free"
        );
        expected_start = range.end;
    }
    assert_eq!(wal.durable_end(), expected_start);
    let stored = read_all(&wal, 0);
    let sent: Vec<_> = acked
        .into_iter()
        .flat_map(|(range, records)| range.zip(records))
        .collect();
    assert_eq!(stored, sent);
}

#[test]
fn batches_queued_during_a_sync_share_one_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults::default();
    let (wal, _) =
        Wal::open_with_sync_hook(dir.path(), WalOptions::default(), faults.hook()).expect("open");
    let (entered, release) = faults.park_next_sync();
    let first = append_async(&wal, vec![payload(0)]);
    entered.recv().expect("writer is inside the first sync");
    let syncs_before = faults.syncs();
    let queued: Vec<_> = (1..11)
        .map(|offset| append_async(&wal, vec![payload(offset)]))
        .collect();
    assert_eq!(
        wal.durable_end(),
        0,
        "nothing is durable while the sync is parked"
    );
    release.send(()).expect("release");
    assert_eq!(first.recv().expect("done").expect("ok"), 0..1);
    for (index, receiver) in queued.into_iter().enumerate() {
        let offset = index as u64 + 1;
        assert_eq!(
            receiver.recv().expect("done").expect("ok"),
            offset..offset + 1
        );
    }
    assert_eq!(
        faults.syncs(),
        syncs_before + 1,
        "the ten queued batches needed exactly one more fsync"
    );
    assert_derived(&wal, 0..11);
}

#[test]
fn oversized_record_refuses_the_whole_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = WalOptions {
        record_bytes_max: 100,
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir.path(), options).expect("open");
    match wal.append(vec![vec![1; 10], vec![2; 101]]) {
        Err(WalError::RecordTooLarge {
            bytes: 101,
            max: 100,
        }) => {}
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert_eq!(wal.durable_end(), 0);
    assert_eq!(
        wal.append(vec![vec![3; 100]])
            .expect("a record at the limit fits"),
        0..1
    );
    assert_eq!(read_all(&wal, 0), vec![(0, vec![3; 100])]);
}

#[test]
fn record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = WalOptions {
        segment_bytes_max: 64,
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir.path(), options.clone()).expect("open");
    let big = |offset: u64| vec![offset as u8; 1000];
    for offset in 0..3 {
        assert_eq!(
            wal.append(vec![big(offset)]).expect("append"),
            offset..offset + 1
        );
    }
    assert_eq!(segment_files(dir.path()).len(), 3);
    drop(wal);
    let (wal, recovery) = Wal::open(dir.path(), options).expect("reopen");
    assert_eq!(recovery.next_offset, 3);
    assert_eq!(
        read_all(&wal, 0),
        (0..3)
            .map(|offset| (offset, big(offset)))
            .collect::<Vec<_>>()
    );
}

#[test]
fn reader_waits_at_the_durable_end_then_continues_across_rolls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), small_segments()).expect("open");
    let mut reader = wal.reader(0).expect("reader");
    assert_eq!(reader.next().expect("read"), None);
    append_derived(&wal, 0..1);
    assert_eq!(reader.next().expect("read"), Some((0, payload(0))));
    assert_eq!(reader.next().expect("read"), None);
    append_derived(&wal, 1..40);
    for offset in 1..40 {
        assert_eq!(reader.position(), offset);
        assert_eq!(
            reader.next().expect("read"),
            Some((offset, payload(offset)))
        );
    }
    assert_eq!(reader.next().expect("read"), None);
    // A reader created beyond the durable end waits for its record.
    let mut ahead = wal.reader(41).expect("reader");
    assert_eq!(ahead.next().expect("read"), None);
    append_derived(&wal, 40..42);
    assert_eq!(ahead.next().expect("read"), Some((41, payload(41))));
}

#[test]
fn fsync_failure_poisons_the_log_and_never_acknowledges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults::default();
    let (wal, _) =
        Wal::open_with_sync_hook(dir.path(), small_segments(), faults.hook()).expect("open");
    append_derived(&wal, 0..5);
    faults.fail_syncs();
    let failed = append_async(&wal, vec![payload(5)]);
    assert!(matches!(
        failed.recv().expect("done is called"),
        Err(WalError::Poisoned)
    ));
    assert!(wal.is_poisoned());
    assert!(
        wal.poison_cause()
            .expect("cause")
            .contains("injected fsync failure")
    );
    assert_eq!(
        wal.durable_end(),
        5,
        "a failed fsync must not publish anything"
    );
    assert!(matches!(
        wal.append(vec![payload(5)]),
        Err(WalError::Poisoned)
    ));
    assert_derived(&wal, 0..5);
    drop(wal);
    // Restart recovers what is on disk: everything acknowledged, and possibly the record whose
    // fsync failed (it may have reached the disk anyway; unacknowledged is not "not written").
    let (wal, recovery) = Wal::open(dir.path(), small_segments()).expect("reopen");
    assert!(!wal.is_poisoned());
    assert!((5..=6).contains(&recovery.next_offset), "{recovery:?}");
    assert_derived(&wal, 0..recovery.next_offset);
}

#[test]
fn fsync_failure_while_rolling_a_segment_poisons_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults::default();
    let (wal, _) =
        Wal::open_with_sync_hook(dir.path(), small_segments(), faults.hook()).expect("open");
    append_derived(&wal, 0..3);
    faults.fail_syncs();
    // Far more than one 512-byte segment: the first failing sync is the one sealing a segment.
    let records = (3..30).map(payload).collect();
    assert!(matches!(wal.append(records), Err(WalError::Poisoned)));
    assert!(wal.is_poisoned());
    assert_eq!(wal.durable_end(), 3);
}

#[test]
fn full_queue_refuses_at_once_with_would_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults::default();
    let (wal, _) =
        Wal::open_with_sync_hook(dir.path(), WalOptions::default(), faults.hook()).expect("open");
    let (entered, release) = faults.park_next_sync();
    let first = append_async(&wal, vec![Vec::new()]);
    entered.recv().expect("writer is parked in a sync");
    let queued: Vec<_> = (0..APPEND_QUEUE_RECORDS_MAX)
        .map(|_| append_async(&wal, vec![Vec::new()]))
        .collect();
    let refused_inline = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&refused_inline);
    wal.append_with(
        vec![Vec::new()],
        Box::new(move |result| {
            assert!(matches!(result, Err(WalError::Io { ref source, .. }) if source.kind() == io::ErrorKind::WouldBlock));
            flag.store(true, Ordering::SeqCst);
        }),
    );
    assert!(
        refused_inline.load(Ordering::SeqCst),
        "a full queue is reported before append_with returns"
    );
    release.send(()).expect("release");
    assert_eq!(first.recv().expect("done").expect("ok"), 0..1);
    for (index, receiver) in queued.into_iter().enumerate() {
        let offset = index as u64 + 1;
        assert_eq!(
            receiver.recv().expect("done").expect("ok"),
            offset..offset + 1
        );
    }
}

#[test]
fn close_flushes_what_was_queued_and_then_refuses_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), small_segments()).expect("open");
    let pending: Vec<_> = (0..20)
        .map(|offset| append_async(&wal, vec![payload(offset)]))
        .collect();
    wal.close();
    for (offset, receiver) in (0..).zip(pending) {
        assert_eq!(
            receiver
                .try_recv()
                .expect("acknowledged before close returned")
                .expect("ok"),
            offset..offset + 1
        );
    }
    assert!(matches!(
        wal.append(vec![payload(20)]),
        Err(WalError::Closed)
    ));
    assert_derived(&wal, 0..20);
    // The writer is gone, so the directory is free even while this handle lives.
    let (reopened, recovery) = Wal::open(dir.path(), small_segments()).expect("reopen after close");
    assert_eq!(recovery.next_offset, 20);
    drop(reopened);
}

#[test]
fn second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    match Wal::open(dir.path(), WalOptions::default()) {
        Err(WalError::Io { source, .. }) => assert_eq!(source.kind(), io::ErrorKind::WouldBlock),
        other => panic!("expected the directory lock to refuse, got {other:?}"),
    }
    drop(wal);
    // Dropping the last handle joined the writer thread, which released the lock.
    Wal::open(dir.path(), WalOptions::default()).expect("open after drop");
}

#[test]
fn cursor_survives_reopen_and_never_moves_backwards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = with_cursors(small_segments(), &["persister"]);
    {
        let (wal, _) = Wal::open(dir.path(), options.clone()).expect("open");
        assert_eq!(wal.cursor("persister").expect("cursor"), 0);
        append_derived(&wal, 0..10);
        wal.commit_cursor("persister", 7).expect("commit");
        wal.commit_cursor("persister", 3)
            .expect("a lower value is ignored");
        assert_eq!(wal.cursor("persister").expect("cursor"), 7);
    }
    let (wal, _) = Wal::open(dir.path(), options).expect("reopen");
    assert_eq!(wal.cursor("persister").expect("cursor"), 7);
    wal.commit_cursor("persister", 4).expect("ignored");
    assert_eq!(wal.cursor("persister").expect("cursor"), 7);
    wal.commit_cursor("persister", 10)
        .expect("commit to the durable end");
    assert_eq!(wal.cursor("persister").expect("cursor"), 10);
}

#[test]
fn unknown_or_invalid_cursors_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let invalid = with_cursors(WalOptions::default(), &["Bad.Name"]);
    assert!(matches!(
        Wal::open(dir.path(), invalid),
        Err(WalError::Io { source, .. }) if source.kind() == io::ErrorKind::InvalidInput
    ));
    let (wal, _) =
        Wal::open(dir.path(), with_cursors(WalOptions::default(), &["known"])).expect("open");
    assert!(matches!(wal.cursor("other"), Err(WalError::UnknownCursor(name)) if name == "other"));
    assert!(matches!(
        wal.commit_cursor("other", 0),
        Err(WalError::UnknownCursor(_))
    ));
}

#[test]
fn cursor_past_the_durable_end_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) =
        Wal::open(dir.path(), with_cursors(WalOptions::default(), &["c"])).expect("open");
    append_derived(&wal, 0..2);
    assert!(matches!(
        wal.commit_cursor("c", 3),
        Err(WalError::Io { source, .. }) if source.kind() == io::ErrorKind::InvalidInput
    ));
    assert_eq!(wal.cursor("c").expect("cursor"), 0);
}

#[test]
fn segments_are_deleted_only_after_every_cursor_passed_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = with_cursors(small_segments(), &["fast", "slow"]);
    let (wal, _) = Wal::open(dir.path(), options.clone()).expect("open");
    append_derived_in_batches(&wal, 0..40, 2);
    let segments = segment_files(dir.path()).len();
    assert!(segments >= 4);
    wal.commit_cursor("fast", 40).expect("commit");
    assert_eq!(
        segment_files(dir.path()).len(),
        segments,
        "the slow cursor still needs every segment"
    );
    assert_eq!(wal.start_offset(), 0);

    wal.commit_cursor("slow", 20).expect("commit");
    let start = wal.start_offset();
    assert!(
        start > 0 && start <= 20,
        "deleted whole segments below 20, kept the one holding 20: {start}"
    );
    assert!(segment_files(dir.path()).len() < segments);
    match wal.reader(start - 1) {
        Err(WalError::OffsetGone {
            offset,
            start: gone_start,
        }) => assert_eq!((offset, gone_start), (start - 1, start)),
        other => panic!("expected OffsetGone, got {other:?}"),
    }
    assert_derived(&wal, start..40);

    wal.commit_cursor("slow", 40).expect("commit");
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "only the last segment is kept"
    );
    append_derived(&wal, 40..45);
    drop(wal);
    let (wal, recovery) = Wal::open(dir.path(), options).expect("reopen");
    assert_eq!(recovery.next_offset, 45);
    assert_eq!(wal.cursor("slow").expect("cursor"), 40);
    assert_derived(&wal, wal.start_offset()..45);
}

#[test]
fn reader_in_a_deleted_segment_finishes_it_then_reports_offset_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), with_cursors(small_segments(), &["c"])).expect("open");
    append_derived_in_batches(&wal, 0..40, 2);
    let mut lagging = wal.reader(0).expect("reader");
    assert_eq!(lagging.next().expect("read"), Some((0, payload(0))));
    wal.commit_cursor("c", 40).expect("commit");
    // Its open segment stays readable until its end.
    let mut offset = 1;
    let error = loop {
        match lagging.next() {
            Ok(Some(record)) => assert_eq!(record, (offset, payload(offset))),
            Ok(None) => panic!("cannot catch up over deleted segments"),
            Err(error) => break error,
        }
        offset += 1;
    };
    assert!(
        matches!(error, WalError::OffsetGone { offset: gone, start } if gone == offset && start == wal.start_offset())
    );
}

#[test]
fn sealed_segment_is_synced_before_the_next_one_is_created() {
    use std::os::fd::AsRawFd;
    use std::path::PathBuf;
    use std::sync::Mutex;

    let dir = tempfile::tempdir().expect("tempdir");
    let synced: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
    let record = Arc::clone(&synced);
    let hook: parlor_wal::SyncHook = Arc::new(move |file| {
        let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        record.lock().expect("synced").push(path);
        Ok(())
    });
    let (wal, _) = Wal::open_with_sync_hook(dir.path(), small_segments(), hook).expect("open");
    synced.lock().expect("synced").clear();
    // Several groups, each rolling to a new segment when it does not fit the current one.
    append_derived_in_batches(&wal, 0..20, 3);
    let segments: Vec<_> = segment_files(dir.path())
        .iter()
        .map(|path| path.canonicalize().expect("path"))
        .collect();
    assert!(segments.len() >= 3);
    let synced = synced.lock().expect("synced").clone();
    for pair in segments.windows(2) {
        let sealed = synced.iter().position(|path| *path == pair[0]);
        let next = synced.iter().position(|path| *path == pair[1]);
        assert!(
            matches!((sealed, next), (Some(sealed), Some(next)) if sealed < next),
            "{} must be synced before {} exists; syncs: {synced:?}",
            pair[0].display(),
            pair[1].display()
        );
    }
}

#[test]
fn reader_reports_damage_to_a_durable_record_instead_of_returning_it() {
    use std::os::unix::fs::FileExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    append_derived(&wal, 0..3);
    // Bit rot after recovery: flip a payload byte of record 1 under the open log.
    let segment = std::fs::OpenOptions::new()
        .write(true)
        .open(last_segment(dir.path()))
        .expect("segment");
    let record_1_payload = parlor_wal::SEGMENT_HEADER_BYTES
        + parlor_wal::RECORD_HEADER_BYTES * 2
        + payload(0).len() as u64;
    segment
        .write_all_at(&[!payload(1)[0]], record_1_payload)
        .expect("flip");
    let mut reader = wal.reader(0).expect("reader");
    assert_eq!(
        reader.next().expect("record 0 is intact"),
        Some((0, payload(0)))
    );
    assert!(matches!(reader.next(), Err(WalError::Corrupt { .. })));
    assert_eq!(reader.position(), 1, "a failed read does not advance");
}

#[test]
fn a_group_is_never_split_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), small_segments()).expect("open");
    append_derived(&wal, 0..2);
    // Far more than one 512-byte segment in one batch: it goes whole into a new segment, which
    // grows beyond the maximum by the rest of the group.
    append_derived(&wal, 2..30);
    append_derived(&wal, 30..31);
    let segments = segment_files(dir.path());
    assert_eq!(segments.len(), 3, "{segments:?}");
    assert!(std::fs::metadata(&segments[1]).expect("metadata").len() > 512);
    drop(wal);
    let (wal, recovery) = Wal::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(recovery.next_offset, 31);
    assert_derived(&wal, 0..31);
}
