//! What `Wal::open` does before anything is appended: check every segment, cut a torn tail off the
//! last one, and refuse to open when synced data is damaged.
//!
//! Why only the last segment may have a torn tail: the writer fsyncs a segment completely before it
//! creates the next one, so every older segment was whole and synced when it was sealed. Damage
//! there is damage to acknowledged data.
//!
//! Why a torn tail is cut at the last complete commit group: the writer writes a group, fsyncs it
//! once and acknowledges nothing before. Until that fsync the kernel may have written any part
//! of the group, in any order, torn at any sector, so a group that is not whole on disk was never
//! acknowledged. Every record says its index in its group and marks the group's last one; a valid
//! record after damage is acknowledged data only if it belongs to a later group (the writer starts
//! a group only after the previous one's fsync), and then the log refuses to open.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use crate::fs::{FileSystem, OpenMode, ReadAhead, WalFile};
use crate::segment::{
    Format, RECORD_HEADER_BYTES, RecordHeader, SEGMENT_HEADER_BYTES, create_segment,
    decode_segment_header, encode_segment_header, parse_segment_file_name, segment_file_name,
    sync_file,
};
use crate::{WalError, seal};

/// Read-ahead for the sequential recovery scan.
const SCAN_BUFFER_BYTES: usize = 256 * 1024;
/// Payload bytes hashed per read, so a huge (or hugely mis-declared) record never needs a buffer
/// of its own size.
const PAYLOAD_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes examined per read while searching a torn tail for a later valid record.
const SEARCH_WINDOW_BYTES: usize = 1024 * 1024;
/// Bytes between two entries of the read index, at least: a reader that starts at an offset
/// skips at most about this much (plus one group) to reach it.
pub(crate) const INDEX_SPACING_BYTES: u64 = 256 * 1024;

/// Offset → byte position of that record in its segment, for records spaced about
/// [`INDEX_SPACING_BYTES`] apart (the first record of every segment included).
pub(crate) type ReadIndex = BTreeMap<u64, u64>;

/// The state of the log after recovery, handed to the writer thread.
pub(crate) struct Recovered {
    /// Base offsets of all segments, ascending and contiguous.
    pub segments: Vec<u64>,
    /// Segment files that were on disk before open (0 for a new log).
    pub found: usize,
    pub next_offset: u64,
    /// Read-write handle on the last segment, which is in the current format.
    pub tail: Box<dyn WalFile>,
    /// Length of the last segment in bytes (after any truncation).
    pub tail_bytes: u64,
    /// Records in the last segment.
    pub tail_records: u64,
    pub truncated_bytes: u64,
    pub index: ReadIndex,
}

/// Recovers the log in `dir`, creating the first segment of a new log. `sealed_end` is the end
/// offset a clean close recorded (see `seal`): then nothing may be torn, and the log must end
/// exactly there.
pub(crate) fn recover(
    fs: &dyn FileSystem,
    dir: &Path,
    sealed_end: Option<u64>,
) -> Result<Recovered, WalError> {
    let mut bases = list_segments(fs, dir)?;
    let found = bases.len();
    let mut index = ReadIndex::new();
    let Some((&last, sealed)) = bases.split_last() else {
        if let Some(end) = sealed_end {
            return Err(seal::broken(dir, end, "no segment is left".to_owned()));
        }
        let tail = create_segment(fs, dir, 0).map_err(WalError::io("create the first segment"))?;
        return Ok(Recovered {
            segments: vec![0],
            found,
            next_offset: 0,
            tail,
            tail_bytes: SEGMENT_HEADER_BYTES,
            tail_records: 0,
            truncated_bytes: 0,
            index,
        });
    };
    let mut expected = bases[0];
    for &base in sealed {
        expected = check_sealed_segment(fs, dir, base, expected, &mut index)?;
    }
    let mut tail = recover_last_segment(fs, dir, last, expected, sealed_end, &mut index)?;
    if tail.format == Format::V1 {
        // Written by an older release: sealed as it is (recovery synced it), and appends go to a
        // new segment in the current format.
        let file = create_segment(fs, dir, tail.next_offset)
            .map_err(WalError::io("create a segment after a version 1 segment"))?;
        bases.push(tail.next_offset);
        tail = Tail {
            file,
            format: Format::V2,
            bytes: SEGMENT_HEADER_BYTES,
            records: 0,
            ..tail
        };
    }
    // Entries created by the crashed run may not have been synced yet; from now on they must stay.
    fs.sync_dir(dir)
        .map_err(WalError::io("sync the log directory"))?;
    Ok(Recovered {
        segments: bases,
        found,
        next_offset: tail.next_offset,
        tail: tail.file,
        tail_bytes: tail.bytes,
        tail_records: tail.records,
        truncated_bytes: tail.truncated_bytes,
        index,
    })
}

/// Base offsets of the segment files in `dir`, ascending. Other files are ignored.
pub(crate) fn list_segments(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut bases: Vec<u64> = fs
        .list(dir)
        .map_err(WalError::io("list the log directory"))?
        .iter()
        .filter_map(|name| parse_segment_file_name(name))
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

fn check_base(path: &Path, base: u64, expected: u64) -> Result<(), WalError> {
    if base == expected {
        return Ok(());
    }
    Err(WalError::corrupt(
        path.to_owned(),
        0,
        format!(
            "segment starts at offset {base} but the previous segment ends at offset {expected}"
        ),
    ))
}

/// Checks a segment that is not the last: every byte must be a valid record continuing the
/// previous segment, ending with a whole group. Returns the offset one past its last record.
fn check_sealed_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    base: u64,
    expected: u64,
    index: &mut ReadIndex,
) -> Result<u64, WalError> {
    let path = dir.join(segment_file_name(base));
    check_base(&path, base, expected)?;
    let file = fs
        .open(&path, OpenMode::Read)
        .map_err(WalError::io("open a segment"))?;
    let bytes = file
        .byte_len()
        .map_err(WalError::io("read segment metadata"))?;
    if bytes < SEGMENT_HEADER_BYTES {
        return Err(WalError::corrupt(
            path,
            0,
            format!("segment header is truncated to {bytes} bytes"),
        ));
    }
    let format =
        match read_segment_header(&*file, base).map_err(WalError::io("read a segment header"))? {
            Ok(format) => format,
            Err(reason) => return Err(WalError::corrupt(path, 0, reason)),
        };
    let scan =
        scan_records(file, bytes, base, format, index).map_err(WalError::io("scan a segment"))?;
    match scan.stop {
        Some(stop) => Err(WalError::corrupt(path, stop.position, stop.reason)),
        None => Ok(scan.next_offset),
    }
}

struct Tail {
    file: Box<dyn WalFile>,
    format: Format,
    next_offset: u64,
    bytes: u64,
    records: u64,
    truncated_bytes: u64,
}

/// Recovers the last segment: an incomplete last group is cut off; damage followed by a valid
/// record of a later group is refused.
fn recover_last_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    base: u64,
    expected: u64,
    sealed_end: Option<u64>,
    index: &mut ReadIndex,
) -> Result<Tail, WalError> {
    let path = dir.join(segment_file_name(base));
    check_base(&path, base, expected)?;
    let file = fs
        .open(&path, OpenMode::ReadWrite)
        .map_err(WalError::io("open the last segment"))?;
    let bytes = file
        .byte_len()
        .map_err(WalError::io("read segment metadata"))?;
    let header = if bytes < SEGMENT_HEADER_BYTES {
        Err(format!("segment header is truncated to {bytes} bytes"))
    } else {
        read_segment_header(&*file, base).map_err(WalError::io("read a segment header"))?
    };
    let format = match header {
        Ok(format) => format,
        Err(reason) => {
            // Records are only written after the header was synced, so a bad header with nothing
            // behind it is an interrupted segment creation: nothing in it was ever acknowledged.
            // A clean close leaves no interrupted creation.
            if bytes > SEGMENT_HEADER_BYTES || sealed_end.is_some() {
                return Err(WalError::corrupt(path, 0, reason));
            }
            return empty_tail(file, base, bytes);
        }
    };
    let scan_file = fs
        .open(&path, OpenMode::Read)
        .map_err(WalError::io("open the last segment"))?;
    let scan = scan_records(scan_file, bytes, base, format, index)
        .map_err(WalError::io("scan the last segment"))?;
    if let Some(end) = sealed_end {
        if let Some(stop) = &scan.stop {
            return Err(seal::broken(
                dir,
                end,
                format!(
                    "{} at byte {}: {}",
                    path.display(),
                    stop.position,
                    stop.reason
                ),
            ));
        }
        if scan.next_offset != end {
            return Err(seal::broken(
                dir,
                end,
                format!("it now ends at offset {}", scan.next_offset),
            ));
        }
    }
    if let Some(Stop {
        position,
        reason,
        bad_record: Some(bad_offset),
    }) = &scan.stop
    {
        let later = find_later_group(
            &*file,
            bytes,
            format,
            *position,
            *bad_offset,
            scan.next_offset,
        )
        .map_err(WalError::io("scan a torn tail"))?;
        if let Some((later_position, offset)) = later {
            return Err(WalError::corrupt(
                path,
                *position,
                format!(
                    "{reason}, yet a valid record for offset {offset} of a later group follows \
                     at byte {later_position}"
                ),
            ));
        }
    }
    if format == Format::V1 && scan.records == 0 {
        // Nothing to keep in the old format: start the segment over in the current one.
        return empty_tail(file, base, bytes - SEGMENT_HEADER_BYTES);
    }
    let mut truncated_bytes = 0;
    if scan.stop.is_some() {
        file.set_len(scan.valid_bytes)
            .map_err(WalError::io("truncate a torn tail"))?;
        truncated_bytes = bytes - scan.valid_bytes;
    }
    // Always sync: records the crashed process wrote may still sit only in the page cache, and the
    // log is about to call them durable.
    sync_file(&*file).map_err(WalError::io("sync the last segment"))?;
    Ok(Tail {
        file,
        format,
        next_offset: scan.next_offset,
        bytes: scan.valid_bytes,
        records: scan.records,
        truncated_bytes,
    })
}

/// Empties a last segment that holds no record and writes a current header into it, durably:
/// the tail of a log that ends at `base`, `truncated_bytes` cut.
fn empty_tail(file: Box<dyn WalFile>, base: u64, truncated_bytes: u64) -> Result<Tail, WalError> {
    file.set_len(0)
        .map_err(WalError::io("truncate the last segment"))?;
    file.write_all_at(&encode_segment_header(base), 0)
        .map_err(WalError::io("rewrite a segment header"))?;
    sync_file(&*file).map_err(WalError::io("sync the last segment"))?;
    Ok(Tail {
        file,
        format: Format::V2,
        next_offset: base,
        bytes: SEGMENT_HEADER_BYTES,
        records: 0,
        truncated_bytes,
    })
}

/// `Ok(Err(reason))` when the header is damaged or names another base offset than the file name.
fn read_segment_header(file: &dyn WalFile, base: u64) -> io::Result<Result<Format, String>> {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    file.read_exact_at(&mut header, 0)?;
    Ok(decode_segment_header(&header).and_then(|(found, format)| {
        if found == base {
            Ok(format)
        } else {
            Err(format!(
                "segment header says base offset {found}, the file name says {base}"
            ))
        }
    }))
}

/// Where and why a scan stopped before the end of the file or inside a group.
struct Stop {
    position: u64,
    reason: String,
    /// The offset the bad record at `position` should have had; `None` when the file simply
    /// ends inside a group.
    bad_record: Option<u64>,
}

struct Scan {
    /// Offset one past the last record of the last whole group.
    next_offset: u64,
    /// Records in whole groups.
    records: u64,
    /// Bytes up to the end of the last whole group.
    valid_bytes: u64,
    stop: Option<Stop>,
}

/// Reads records from just after the header until the end of the file or the first bad record,
/// adding entries to the read index.
fn scan_records(
    file: Box<dyn WalFile>,
    file_bytes: u64,
    base: u64,
    format: Format,
    index: &mut ReadIndex,
) -> io::Result<Scan> {
    let buffer_bytes = file_bytes.min(SCAN_BUFFER_BYTES as u64) as usize;
    let mut input = ReadAhead::new(file, buffer_bytes, SEGMENT_HEADER_BYTES);
    let header_bytes = format.record_header_bytes();
    let mut chunk = vec![0u8; PAYLOAD_CHUNK_BYTES];
    let mut position = SEGMENT_HEADER_BYTES;
    let mut expected = base;
    // The end of the last whole group: (offset, byte position).
    let mut whole = (base, SEGMENT_HEADER_BYTES);
    let mut indexed_at = None;
    let stop = loop {
        let remaining = file_bytes - position;
        let bad = move |reason: String| {
            Some(Stop {
                position,
                reason,
                bad_record: Some(expected),
            })
        };
        if remaining == 0 {
            break (whole.0 != expected).then(|| Stop {
                position,
                reason: format!(
                    "the segment ends inside the group that starts at offset {}",
                    whole.0
                ),
                bad_record: None,
            });
        }
        if remaining < header_bytes {
            break bad(format!(
                "short record header ({remaining} bytes before the end of the segment)"
            ));
        }
        let mut raw = [0u8; RECORD_HEADER_BYTES as usize];
        input.read_exact(&mut raw[..header_bytes as usize])?;
        let header = RecordHeader::decode(&raw, format);
        if u64::from(header.len) > remaining - header_bytes {
            break bad(format!(
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
            break bad("record crc mismatch".to_owned());
        }
        if header.offset != expected {
            break bad(format!(
                "record has offset {} where {expected} was expected",
                header.offset
            ));
        }
        if header.group_start() != Some(whole.0) {
            break bad(format!(
                "record {expected} says it is number {} of its group, which starts at offset {}",
                header.index_in_group, whole.0
            ));
        }
        if indexed_at.is_none_or(|at| position - at >= INDEX_SPACING_BYTES) {
            index.insert(expected, position);
            indexed_at = Some(position);
        }
        position += header.frame_bytes();
        expected += 1;
        if header.last_in_group {
            whole = (expected, position);
        }
    };
    // Index entries inside a cut group would point at bytes about to go.
    index.retain(|&offset, _| offset < whole.0);
    Ok(Scan {
        next_offset: whole.0,
        records: whole.0 - base,
        valid_bytes: whole.1,
        stop,
    })
}

/// Looks for a valid record after the bad one at `bad_position` (which should have had offset
/// `bad_offset`) that belongs to a later group than the one starting at `group_start`: proof
/// that the damaged group was synced. Returns its byte position and offset.
///
/// A candidate must have a correct CRC and an offset that fits the sequence, i.e. at least
/// `bad_offset` and at most one more per header's worth of bytes skipped (every record takes at
/// least a header). That makes a false match in random garbage practically impossible while
/// still finding real records behind a damaged one. Valid records of the damaged group itself
/// are skipped: they are what a partly written group leaves.
fn find_later_group(
    file: &dyn WalFile,
    file_bytes: u64,
    format: Format,
    bad_position: u64,
    bad_offset: u64,
    group_start: u64,
) -> io::Result<Option<(u64, u64)>> {
    let header_bytes = format.record_header_bytes();
    let header_len = header_bytes as usize;
    let tail_bytes = file_bytes.saturating_sub(bad_position) as usize;
    let mut window = vec![0u8; tail_bytes.min(SEARCH_WINDOW_BYTES + header_len - 1)];
    let mut start = bad_position + 1;
    while start + header_bytes <= file_bytes {
        let read = (file_bytes - start).min(window.len() as u64) as usize;
        file.read_exact_at(&mut window[..read], start)?;
        let last_candidate = (read - header_len).min(SEARCH_WINDOW_BYTES - 1);
        for at in 0..=last_candidate {
            let position = start + at as u64;
            let mut raw = [0u8; RECORD_HEADER_BYTES as usize];
            raw[..header_len].copy_from_slice(&window[at..at + header_len]);
            let header = RecordHeader::decode(&raw, format);
            let skipped_records_max = (position - bad_position) / header_bytes;
            let plausible = header.offset >= bad_offset
                && header.offset - bad_offset <= skipped_records_max
                && header.group_start() != Some(group_start)
                && position + header.frame_bytes() <= file_bytes;
            if plausible && payload_crc(file, position + header_bytes, header)? == header.crc {
                return Ok(Some((position, header.offset)));
            }
        }
        start += SEARCH_WINDOW_BYTES as u64;
    }
    Ok(None)
}

/// The CRC of a record whose payload starts at `position`, read in bounded chunks.
fn payload_crc(file: &dyn WalFile, position: u64, header: RecordHeader) -> io::Result<u32> {
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
