//! The write-ahead log opened on damaged or arbitrary bytes, on a simulated disk.
//!
//! Half the inputs are a real log (records and batch sizes from the input, written by `Wal`,
//! closed cleanly or as a crash leaves it) that the rest of the input damages: bytes flipped,
//! a file cut. The others are raw bytes cut into two segments and a cursor file. Opening gives
//! a log or an error, never a panic; an open log (which recovery checked whole) reads back to
//! its end without an error, and every record it serves is the one written at that offset; it
//! takes an append and opens again with that append as its last record.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use parlor_wal::sim::SimFs;
use parlor_wal::{FileSystem, OpenMode, Wal, WalError, WalOptions};

const DIR: &str = "/log";

fn options() -> WalOptions {
    WalOptions {
        segment_bytes_max: 512,
        record_bytes_max: 64 * 1024,
        cursor_names: vec!["reader".to_owned()],
    }
}

fn write(disk: &SimFs, path: &Path, bytes: &[u8]) {
    let file = disk.open(path, OpenMode::CreateNew).expect("create");
    file.write_all_at(bytes, 0).expect("write");
    file.sync_data().expect("sync");
}

/// A log written from `input`: each record's length from one byte, its bytes from the input;
/// a batch ends after a record whose length byte is odd. Returns the records.
fn real_log(disk: &SimFs, input: &[u8], sealed: bool) -> Vec<Vec<u8>> {
    let (wal, _) = Wal::open_on(Arc::new(disk.clone()), Path::new(DIR), options()).expect("open");
    let mut records = Vec::new();
    let mut batch = Vec::new();
    let mut rest = input;
    while let [len, tail @ ..] = rest {
        let len = (*len as usize).min(tail.len());
        batch.push(tail[..len].to_vec());
        rest = &tail[len..];
        if len % 2 == 1 || rest.is_empty() {
            records.extend(batch.iter().cloned());
            wal.append(std::mem::take(&mut batch)).expect("append");
        }
    }
    if records.len() > 2 {
        wal.commit_cursor("reader", 2).expect("commit");
    }
    drop(wal);
    if !sealed {
        disk.remove_file(&Path::new(DIR).join("END"))
            .expect("unseal");
        disk.sync_dir(Path::new(DIR)).expect("sync");
    }
    records
}

fn files(disk: &SimFs) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = disk
        .list(Path::new(DIR))
        .expect("list")
        .into_iter()
        .filter(|name| name != "LOCK" && name != "cursors")
        .map(|name| Path::new(DIR).join(name))
        .collect();
    files.sort();
    files.push(Path::new(DIR).join("cursors/reader"));
    files
}

/// Flips bytes named by `edits` (file, position, xor: 4 bytes each); a shorter last edit
/// (file, length) cuts a file instead.
fn damage(disk: &SimFs, edits: &[u8]) {
    let files = files(disk);
    for edit in edits.chunks(4) {
        let file = &files[edit[0] as usize % files.len()];
        let Ok(mut bytes) = disk.read_file(file) else {
            continue;
        };
        if bytes.is_empty() {
            continue;
        }
        match *edit {
            [_, high, low, xor] => {
                let at = usize::from(u16::from_le_bytes([low, high])) % bytes.len();
                bytes[at] ^= xor.max(1);
            }
            [_, cut, ..] => bytes.truncate(cut as usize % bytes.len()),
            _ => continue,
        }
        disk.replace_file(file, bytes).expect("damage");
    }
}

fn raw_log(disk: &SimFs, data: &[u8]) {
    let [first, second, cursor, rest @ ..] = data else {
        return;
    };
    let dir = Path::new(DIR);
    disk.create_dir(dir).expect("mkdir");
    disk.create_dir(&dir.join("cursors")).expect("mkdir");
    let first = (*first as usize * 8).min(rest.len());
    let second = (first + *second as usize * 8).min(rest.len());
    write(disk, &dir.join(format!("{:020}.wal", 0)), &rest[..first]);
    if second > first {
        // The second segment's name claims a base the first might end at.
        let base = 1 + u64::from(*cursor) % 8;
        write(
            disk,
            &dir.join(format!("{base:020}.wal")),
            &rest[first..second],
        );
    }
    if *cursor & 0x80 != 0 {
        write(disk, &dir.join("cursors/reader"), &rest[second..]);
    } else {
        let base = 9 + u64::from(*cursor >> 3);
        write(disk, &dir.join(format!("{base:020}.wal")), &rest[second..]);
    }
    disk.sync_dir(dir).expect("sync");
    disk.sync_dir(&dir.join("cursors")).expect("sync");
}

fuzz_target!(|data: &[u8]| {
    let [mode, split, rest @ ..] = data else {
        return;
    };
    let disk = SimFs::new();
    let written = if mode & 1 == 0 {
        let (log, edits) = rest.split_at((*split as usize * 4).min(rest.len()));
        let records = real_log(&disk, log, mode & 2 == 0);
        damage(&disk, edits);
        Some(records)
    } else {
        raw_log(&disk, rest);
        None
    };
    let open = || Wal::open_on(Arc::new(disk.clone()), Path::new(DIR), options());
    let (wal, recovery) = match open() {
        Ok(opened) => opened,
        Err(WalError::Corrupt { .. } | WalError::Io { .. }) => return,
        Err(other) => panic!("open: {other}"),
    };
    let mut reader = wal
        .reader(wal.start_offset())
        .expect("a reader at the start");
    loop {
        match reader.next() {
            Ok(Some((offset, record))) => {
                if let Some(written) = &written {
                    assert_eq!(
                        Some(&record),
                        written.get(offset as usize),
                        "record {offset}"
                    );
                }
            }
            Ok(None) => break,
            Err(error) => panic!("read after a recovery that passed: {error}"),
        }
    }
    assert_eq!(reader.position(), recovery.next_offset);
    let appended = wal.append(vec![b"after".to_vec()]).expect("append");
    drop(wal);
    let (wal, recovery) = open().expect("reopen after an append");
    assert_eq!(recovery.next_offset, appended.end);
    let mut reader = wal.reader(appended.start).expect("reader");
    assert_eq!(
        reader.next().expect("read"),
        Some((appended.start, b"after".to_vec()))
    );
});
