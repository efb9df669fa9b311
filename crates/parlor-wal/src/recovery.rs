//! What `Wal::open` does before anything is appended: check every segment, cut a torn tail off the
//! last one, and refuse to open when synced data is damaged.
//!
//! Why only the last segment may have a torn tail: the writer fsyncs a segment completely before it
//! creates the next one, so every older segment was whole and synced when it was sealed. Damage
//! there is damage to acknowledged data.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::WalError;
use crate::segment::{
    RECORD_HEADER_BYTES, RecordHeader, SEGMENT_HEADER_BYTES, SyncHook, create_segment,
    decode_segment_header, encode_segment_header, parse_segment_file_name, segment_file_name,
    sync_dir, sync_file,
};

/// Read-ahead for the sequential recovery scan.
const SCAN_BUFFER_BYTES: usize = 256 * 1024;
/// Payload bytes hashed per read, so a huge (or hugely mis-declared) record never needs a buffer
/// of its own size.
const PAYLOAD_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes examined per read while searching a torn tail for a later valid record.
const SEARCH_WINDOW_BYTES: usize = 1024 * 1024;

/// The state of the log after recovery, handed to the writer thread.
pub(crate) struct Recovered {
    /// Base offsets of all segments, ascending and contiguous.
    pub segments: Vec<u64>,
    /// Segment files that were on disk before open (0 for a new log).
    pub found: usize,
    pub next_offset: u64,
    /// Read-write handle on the last segment.
    pub tail: File,
    /// Length of the last segment in bytes (after any truncation).
    pub tail_bytes: u64,
    /// Records in the last segment.
    pub tail_records: u64,
    pub truncated_bytes: u64,
}

/// Recovers the log in `dir`, creating the first segment of a new log.
pub(crate) fn recover(dir: &Path, hook: &SyncHook) -> Result<Recovered, WalError> {
    let bases = list_segments(dir)?;
    let found = bases.len();
    let Some((&last, sealed)) = bases.split_last() else {
        let tail =
            create_segment(dir, 0, hook).map_err(WalError::io("create the first segment"))?;
        return Ok(Recovered {
            segments: vec![0],
            found,
            next_offset: 0,
            tail,
            tail_bytes: SEGMENT_HEADER_BYTES,
            tail_records: 0,
            truncated_bytes: 0,
        });
    };
    let mut expected = bases[0];
    for &base in sealed {
        expected = check_sealed_segment(dir, base, expected)?;
    }
    let tail = recover_last_segment(dir, last, expected, hook)?;
    // Entries created by the crashed run may not have been synced yet; from now on they must stay.
    sync_dir(hook, dir).map_err(WalError::io("sync the log directory"))?;
    Ok(Recovered {
        segments: bases,
        found,
        next_offset: tail.next_offset,
        tail: tail.file,
        tail_bytes: tail.bytes,
        tail_records: tail.records,
        truncated_bytes: tail.truncated_bytes,
    })
}

/// Base offsets of the segment files in `dir`, ascending. Other files are ignored.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).map_err(WalError::io("list the log directory"))? {
        let entry = entry.map_err(WalError::io("list the log directory"))?;
        if let Some(base) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Checks a segment that is not the last: every byte must be a valid record continuing the
/// previous segment. Returns the offset one past its last record.
fn check_sealed_segment(dir: &Path, base: u64, expected: u64) -> Result<u64, WalError> {
    let path = dir.join(segment_file_name(base));
    if base != expected {
        return Err(WalError::corrupt(
            path,
            0,
            format!(
                "segment starts at offset {base} but the previous segment ends at offset {expected}"
            ),
        ));
    }
    let file = File::open(&path).map_err(WalError::io("open a segment"))?;
    let bytes = file
        .metadata()
        .map_err(WalError::io("read segment metadata"))?
        .len();
    if bytes < SEGMENT_HEADER_BYTES {
        return Err(WalError::corrupt(
            path,
            0,
            format!("segment header is truncated to {bytes} bytes"),
        ));
    }
    if let Err(reason) =
        read_segment_header(&file, base).map_err(WalError::io("read a segment header"))?
    {
        return Err(WalError::corrupt(path, 0, reason));
    }
    let scan = scan_records(&file, bytes, base).map_err(WalError::io("scan a segment"))?;
    match scan.bad {
        Some(bad) => Err(WalError::corrupt(path, bad.position, bad.reason)),
        None => Ok(scan.next_offset),
    }
}

struct Tail {
    file: File,
    next_offset: u64,
    bytes: u64,
    records: u64,
    truncated_bytes: u64,
}

/// Recovers the last segment: a torn tail is cut off, damage followed by a valid record is refused.
fn recover_last_segment(
    dir: &Path,
    base: u64,
    expected: u64,
    hook: &SyncHook,
) -> Result<Tail, WalError> {
    let path = dir.join(segment_file_name(base));
    if base != expected {
        return Err(WalError::corrupt(
            path,
            0,
            format!(
                "segment starts at offset {base} but the previous segment ends at offset {expected}"
            ),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(WalError::io("open the last segment"))?;
    let bytes = file
        .metadata()
        .map_err(WalError::io("read segment metadata"))?
        .len();
    let header = if bytes < SEGMENT_HEADER_BYTES {
        Err(format!("segment header is truncated to {bytes} bytes"))
    } else {
        read_segment_header(&file, base).map_err(WalError::io("read a segment header"))?
    };
    if let Err(reason) = header {
        // Records are only written after the header was synced, so a bad header with nothing
        // behind it is an interrupted segment creation: nothing in it was ever acknowledged.
        if bytes > SEGMENT_HEADER_BYTES {
            return Err(WalError::corrupt(path, 0, reason));
        }
        file.set_len(0)
            .map_err(WalError::io("truncate the last segment"))?;
        file.write_all_at(&encode_segment_header(base), 0)
            .map_err(WalError::io("rewrite a segment header"))?;
        sync_file(hook, &file).map_err(WalError::io("sync the last segment"))?;
        return Ok(Tail {
            file,
            next_offset: base,
            bytes: SEGMENT_HEADER_BYTES,
            records: 0,
            truncated_bytes: bytes,
        });
    }
    let scan = scan_records(&file, bytes, base).map_err(WalError::io("scan the last segment"))?;
    let mut truncated_bytes = 0;
    if let Some(bad) = scan.bad {
        let later = find_later_record(&file, bytes, bad.position, scan.next_offset)
            .map_err(WalError::io("scan a torn tail"))?;
        if let Some((position, offset)) = later {
            return Err(WalError::corrupt(
                path,
                bad.position,
                format!(
                    "{}, yet a valid record for offset {offset} follows at byte {position}",
                    bad.reason
                ),
            ));
        }
        file.set_len(bad.position)
            .map_err(WalError::io("truncate a torn tail"))?;
        truncated_bytes = bytes - bad.position;
    }
    // Always sync: records the crashed process wrote may still sit only in the page cache, and the
    // log is about to call them durable.
    sync_file(hook, &file).map_err(WalError::io("sync the last segment"))?;
    Ok(Tail {
        file,
        next_offset: scan.next_offset,
        bytes: scan.valid_bytes,
        records: scan.records,
        truncated_bytes,
    })
}

/// `Ok(Err(reason))` when the header is damaged or names another base offset than the file name.
fn read_segment_header(file: &File, base: u64) -> io::Result<Result<(), String>> {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    file.read_exact_at(&mut header, 0)?;
    Ok(decode_segment_header(&header).and_then(|found| {
        if found == base {
            Ok(())
        } else {
            Err(format!(
                "segment header says base offset {found}, the file name says {base}"
            ))
        }
    }))
}

/// The first bad record of a segment.
struct Bad {
    position: u64,
    reason: String,
}

struct Scan {
    /// Offset one past the last valid record.
    next_offset: u64,
    records: u64,
    /// Bytes up to the end of the last valid record.
    valid_bytes: u64,
    bad: Option<Bad>,
}

/// Reads records from just after the header until the end of the file or the first bad record.
fn scan_records(file: &File, file_bytes: u64, base: u64) -> io::Result<Scan> {
    let mut input = BufReader::with_capacity(SCAN_BUFFER_BYTES, file);
    input.seek(SeekFrom::Start(SEGMENT_HEADER_BYTES))?;
    let mut chunk = vec![0u8; PAYLOAD_CHUNK_BYTES];
    let mut position = SEGMENT_HEADER_BYTES;
    let mut expected = base;
    let bad = loop {
        let remaining = file_bytes - position;
        if remaining == 0 {
            break None;
        }
        if remaining < RECORD_HEADER_BYTES {
            break Some(format!(
                "short record header ({remaining} bytes before the end of the segment)"
            ));
        }
        let mut header_bytes = [0u8; RECORD_HEADER_BYTES as usize];
        input.read_exact(&mut header_bytes)?;
        let header = RecordHeader::decode(&header_bytes);
        if u64::from(header.len) > remaining - RECORD_HEADER_BYTES {
            break Some(format!(
                "record length {} runs past the end of the segment",
                header.len
            ));
        }
        let mut crc = header.crc_seed();
        let mut left = header.len as usize;
        while left > 0 {
            let take = left.min(chunk.len());
            input.read_exact(&mut chunk[..take])?;
            crc = crc32c::crc32c_append(crc, &chunk[..take]);
            left -= take;
        }
        if crc != header.crc {
            break Some("record crc mismatch".to_owned());
        }
        if header.offset != expected {
            break Some(format!(
                "record has offset {} where {expected} was expected",
                header.offset
            ));
        }
        position += header.frame_bytes();
        expected += 1;
    };
    Ok(Scan {
        next_offset: expected,
        records: expected - base,
        valid_bytes: position,
        bad: bad.map(|reason| Bad { position, reason }),
    })
}

/// Looks for any valid record after the bad one at `bad_position`: correct CRC and an offset that
/// fits the sequence, i.e. at least `expected` and at most one more per 16 bytes skipped (every
/// record takes at least a header). Returns its byte position and offset.
///
/// The offset window makes a false match in random garbage practically impossible (it needs a
/// plausible offset, a length inside the file and a matching CRC) while still finding real records
/// behind a damaged one.
fn find_later_record(
    file: &File,
    file_bytes: u64,
    bad_position: u64,
    expected: u64,
) -> io::Result<Option<(u64, u64)>> {
    let header_bytes = RECORD_HEADER_BYTES as usize;
    let mut window = vec![0u8; SEARCH_WINDOW_BYTES + header_bytes - 1];
    let mut start = bad_position + 1;
    while start + RECORD_HEADER_BYTES <= file_bytes {
        let read = (file_bytes - start).min(window.len() as u64) as usize;
        file.read_exact_at(&mut window[..read], start)?;
        let last_candidate = (read - header_bytes).min(SEARCH_WINDOW_BYTES - 1);
        for index in 0..=last_candidate {
            let position = start + index as u64;
            let header = RecordHeader::decode(
                window[index..index + header_bytes]
                    .try_into()
                    .expect("16 bytes in the window"),
            );
            let skipped_records_max = (position - bad_position) / RECORD_HEADER_BYTES;
            let plausible = header.offset >= expected
                && header.offset - expected <= skipped_records_max
                && position + header.frame_bytes() <= file_bytes;
            if plausible && payload_crc(file, position + RECORD_HEADER_BYTES, header)? == header.crc
            {
                return Ok(Some((position, header.offset)));
            }
        }
        start += SEARCH_WINDOW_BYTES as u64;
    }
    Ok(None)
}

/// The CRC of a record whose payload starts at `position`, read in bounded chunks.
fn payload_crc(file: &File, position: u64, header: RecordHeader) -> io::Result<u32> {
    let mut chunk = vec![0u8; PAYLOAD_CHUNK_BYTES.min(header.len as usize)];
    let mut crc = header.crc_seed();
    let mut done = 0u64;
    while done < u64::from(header.len) {
        let take = (u64::from(header.len) - done).min(chunk.len() as u64) as usize;
        file.read_exact_at(&mut chunk[..take], position + done)?;
        crc = crc32c::crc32c_append(crc, &chunk[..take]);
        done += take as u64;
    }
    Ok(crc)
}
