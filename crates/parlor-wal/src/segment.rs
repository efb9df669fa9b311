//! The on-disk format (segment names, segment header, record frames) and the few file operations
//! that must be done in a particular order (creating a segment, syncing).

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::fs::{FileSystem, OpenMode, WalFile};

/// Bytes of the header at the start of every segment: magic `PWAL`, format version (u32 LE),
/// base offset (u64 LE), CRC32C of the preceding 16 bytes (u32 LE).
pub const SEGMENT_HEADER_BYTES: u64 = 20;

/// Bytes in front of every record's payload in the current format (version 2): length (u32 LE),
/// CRC32C (u32 LE) over length, offset, group word and payload, offset (u64 LE), group word
/// (u32 LE: the record's index in its commit group, with the top bit set on the group's
/// last record).
pub const RECORD_HEADER_BYTES: u64 = 20;

/// The group word's flag on the last record of a commit group: the group's commit marker.
const LAST_IN_GROUP: u32 = 1 << 31;

/// The most records in one commit group (the group word's index bits).
pub(crate) const GROUP_RECORDS_MAX: usize = LAST_IN_GROUP as usize;

const SEGMENT_MAGIC: [u8; 4] = *b"PWAL";
const SEGMENT_SUFFIX: &str = ".wal";
/// Digits in a segment file name; 20 holds every u64, so names sort like their base offsets.
const SEGMENT_NAME_DIGITS: usize = 20;

/// The record format of a segment, named by its header's version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Written before commit groups were marked: 16-byte record headers without a group word.
    /// Opened and read; never written (a log opened on one starts a new segment).
    V1,
    /// The current format: every record says its place in its commit group, so recovery can cut
    /// a group that was never fully synced, wherever its writes landed.
    V2,
}

impl Format {
    pub(crate) fn record_header_bytes(self) -> u64 {
        match self {
            Format::V1 => 16,
            Format::V2 => RECORD_HEADER_BYTES,
        }
    }
}

/// The fault-injection seam in front of every fsync the log does (segments, cursor files,
/// directories). It runs before the real sync; an `Err` is treated exactly like a failed fsync.
/// Tests use it to prove the log poisons itself; production passes nothing (see [`crate::Wal::open`]).
#[doc(hidden)]
pub type SyncHook = Arc<dyn Fn(&File) -> io::Result<()> + Send + Sync>;

pub(crate) fn no_sync_hook() -> SyncHook {
    Arc::new(|_| Ok(()))
}

pub(crate) fn segment_file_name(base: u64) -> String {
    format!(
        "{base:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_NAME_DIGITS
    )
}

/// The base offset named by a segment file name, or `None` for any other file.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn encode_segment_header(base: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    header[0..4].copy_from_slice(&SEGMENT_MAGIC);
    header[4..8].copy_from_slice(&2u32.to_le_bytes());
    header[8..16].copy_from_slice(&base.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..16]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The base offset and format in a segment header, or why the header is not one of ours.
pub(crate) fn decode_segment_header(
    header: &[u8; SEGMENT_HEADER_BYTES as usize],
) -> Result<(u64, Format), String> {
    if header[0..4] != SEGMENT_MAGIC {
        return Err("not a wal segment (bad magic)".to_owned());
    }
    let crc = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&header[0..16]) {
        return Err("segment header crc mismatch".to_owned());
    }
    let format = match u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) {
        1 => Format::V1,
        2 => Format::V2,
        version => return Err(format!("unsupported segment format version {version}")),
    };
    let base = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    Ok((base, format))
}

/// The fixed part in front of a record's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub len: u32,
    pub crc: u32,
    pub offset: u64,
    /// The record's index in its commit group (0 for every version 1 record).
    pub index_in_group: u32,
    /// Whether it is its group's last record (true for every version 1 record: a group of one).
    pub last_in_group: bool,
    pub format: Format,
}

impl RecordHeader {
    /// Decodes the first `format.record_header_bytes()` of `bytes`.
    pub(crate) fn decode(bytes: &[u8; RECORD_HEADER_BYTES as usize], format: Format) -> Self {
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let offset = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let (index_in_group, last_in_group) = match format {
            Format::V1 => (0, true),
            Format::V2 => (word(16) & !LAST_IN_GROUP, word(16) & LAST_IN_GROUP != 0),
        };
        RecordHeader {
            len: word(0),
            crc: word(4),
            offset,
            index_in_group,
            last_in_group,
            format,
        }
    }

    /// Header plus payload.
    pub(crate) fn frame_bytes(&self) -> u64 {
        self.format.record_header_bytes() + u64::from(self.len)
    }

    /// The offset of the first record of its commit group.
    pub(crate) fn group_start(&self) -> Option<u64> {
        self.offset.checked_sub(u64::from(self.index_in_group))
    }

    /// The CRC state after the header's covered fields; feed the payload with `crc32c_append`.
    pub(crate) fn crc_seed(&self) -> u32 {
        let seed = crc32c::crc32c_append(
            crc32c::crc32c(&self.len.to_le_bytes()),
            &self.offset.to_le_bytes(),
        );
        match self.format {
            Format::V1 => seed,
            Format::V2 => crc32c::crc32c_append(seed, &self.group_word().to_le_bytes()),
        }
    }

    fn group_word(&self) -> u32 {
        self.index_in_group | if self.last_in_group { LAST_IN_GROUP } else { 0 }
    }
}

/// Appends one record frame, in the current format, to `buf`. The caller has checked the length
/// against `record_bytes_max` (a u32) and the group's size against [`GROUP_RECORDS_MAX`].
pub(crate) fn encode_record(
    buf: &mut Vec<u8>,
    offset: u64,
    index_in_group: usize,
    last_in_group: bool,
    payload: &[u8],
) {
    let header = RecordHeader {
        len: u32::try_from(payload.len())
            .expect("append_with refuses records above record_bytes_max (a u32)"),
        crc: 0,
        offset,
        index_in_group: u32::try_from(index_in_group)
            .ok()
            .filter(|&index| index < LAST_IN_GROUP)
            .expect("append_with refuses batches above GROUP_RECORDS_MAX"),
        last_in_group,
        format: Format::V2,
    };
    let crc = crc32c::crc32c_append(header.crc_seed(), payload);
    buf.extend_from_slice(&header.len.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&header.group_word().to_le_bytes());
    buf.extend_from_slice(payload);
}

/// fdatasync, which also persists a changed file size (what truncation and appends need).
pub(crate) fn sync_file(file: &dyn WalFile) -> io::Result<()> {
    file.sync_data()
}

/// Creates the segment starting at `base`, durably: the header and the directory entry are synced
/// before any record goes in, so recovery only ever meets a missing, empty or header-only new
/// segment, never one with records and a bad header.
pub(crate) fn create_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    base: u64,
) -> io::Result<Box<dyn WalFile>> {
    let file = create_segment_file(fs, dir, base)?;
    sync_new_segment(fs, dir, &*file)?;
    Ok(file)
}

/// The first half of [`create_segment`]: the file with its header, not yet synced. When the
/// header cannot be written (say, for lack of space) the file is removed again, so the next
/// attempt can create it; if the removal fails too, the error says so and is not a space error.
pub(crate) fn create_segment_file(
    fs: &dyn FileSystem,
    dir: &Path,
    base: u64,
) -> io::Result<Box<dyn WalFile>> {
    let path = dir.join(segment_file_name(base));
    let file = fs.open(&path, OpenMode::CreateNew)?;
    if let Err(error) = file.write_all_at(&encode_segment_header(base), 0) {
        drop(file);
        return match fs.remove_file(&path) {
            Ok(()) => Err(error),
            Err(removal) => Err(io::Error::other(format!(
                "{error}; removing the half-created segment failed too: {removal}"
            ))),
        };
    }
    Ok(file)
}

/// The second half of [`create_segment`]: syncs the header and the directory entry.
pub(crate) fn sync_new_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    file: &dyn WalFile,
) -> io::Result<()> {
    sync_file(file)?;
    fs.sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort_like_offsets() {
        assert_eq!(segment_file_name(42), "00000000000000000042.wal");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(
            parse_segment_file_name("00000000000000000042.wal.tmp"),
            None
        );
        assert_eq!(parse_segment_file_name("42.wal"), None);
        assert_eq!(parse_segment_file_name("9999999999999999999x.wal"), None);
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn segment_header_detects_damage() {
        let header = encode_segment_header(7);
        assert_eq!(decode_segment_header(&header), Ok((7, Format::V2)));
        for byte in 0..header.len() {
            let mut damaged = header;
            damaged[byte] ^= 0x10;
            assert!(decode_segment_header(&damaged).is_err(), "byte {byte}");
        }
    }

    fn decoded(buf: &[u8]) -> RecordHeader {
        RecordHeader::decode(buf[..20].try_into().expect("20 bytes"), Format::V2)
    }

    #[test]
    fn record_crc_covers_length_offset_group_and_payload() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 5, 2, true, b"hello");
        let header = decoded(&buf);
        assert_eq!(
            (header.len, header.offset, header.index_in_group),
            (5, 5, 2)
        );
        assert!(header.last_in_group);
        assert_eq!(header.group_start(), Some(3));
        let crc = |header: RecordHeader, payload: &[u8]| {
            crc32c::crc32c_append(header.crc_seed(), payload)
        };
        assert_eq!(crc(header, &buf[20..]), header.crc);
        for other in [
            RecordHeader {
                offset: 6,
                ..header
            },
            RecordHeader { len: 4, ..header },
            RecordHeader {
                index_in_group: 1,
                ..header
            },
            RecordHeader {
                last_in_group: false,
                ..header
            },
        ] {
            assert_ne!(crc(other, &buf[20..]), header.crc, "{other:?}");
        }
    }

    #[test]
    fn a_version_1_record_is_a_group_of_one_without_a_group_word() {
        // Version 1's frame: length, CRC over length, offset and payload, offset.
        let seed = crc32c::crc32c_append(crc32c::crc32c(&3u32.to_le_bytes()), &9u64.to_le_bytes());
        let mut buf = Vec::new();
        buf.extend_from_slice(&3u32.to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c_append(seed, b"abc").to_le_bytes());
        buf.extend_from_slice(&9u64.to_le_bytes());
        buf.extend_from_slice(b"abc");
        buf.extend_from_slice(&[0; 4]);
        let header = RecordHeader::decode(buf[..20].try_into().expect("20 bytes"), Format::V1);
        assert_eq!((header.offset, header.frame_bytes()), (9, 19));
        assert_eq!((header.index_in_group, header.last_in_group), (0, true));
        assert_eq!(crc32c::crc32c_append(header.crc_seed(), b"abc"), header.crc);
    }
}
