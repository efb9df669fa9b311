//! The on-disk format (segment names, segment header, record frames) and the few file operations
//! that must be done in a particular order (creating a segment, syncing).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Bytes of the header at the start of every segment: magic `PWAL`, format version (u32 LE),
/// base offset (u64 LE), CRC32C of the preceding 16 bytes (u32 LE).
pub const SEGMENT_HEADER_BYTES: u64 = 20;

/// Bytes in front of every record's payload: length (u32 LE), CRC32C (u32 LE) over length, offset
/// and payload, offset (u64 LE).
pub const RECORD_HEADER_BYTES: u64 = 16;

const SEGMENT_MAGIC: [u8; 4] = *b"PWAL";
const SEGMENT_VERSION: u32 = 1;
const SEGMENT_SUFFIX: &str = ".wal";
/// Digits in a segment file name; 20 holds every u64, so names sort like their base offsets.
const SEGMENT_NAME_DIGITS: usize = 20;

/// The fault-injection seam in front of every fsync the log does (segments, cursor files,
/// directories). It runs before the real sync; an `Err` is treated exactly like a failed fsync.
/// Tests use it to prove the log poisons itself; production passes nothing (see [`crate::Wal::open`]).
#[doc(hidden)]
pub type SyncHook = Arc<dyn Fn(&File) -> io::Result<()> + Send + Sync>;

pub(crate) fn no_sync_hook() -> SyncHook {
    Arc::new(|_| Ok(()))
}

/// fdatasync, which also persists a changed file size (what truncation and appends need).
pub(crate) fn sync_file(hook: &SyncHook, file: &File) -> io::Result<()> {
    hook(file)?;
    file.sync_data()
}

/// Makes creations, renames and deletions of entries in `dir` durable.
pub(crate) fn sync_dir(hook: &SyncHook, dir: &Path) -> io::Result<()> {
    let handle = File::open(dir)?;
    hook(&handle)?;
    handle.sync_all()
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
    header[4..8].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&base.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..16]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The base offset in a segment header, or why the header is not one of ours.
pub(crate) fn decode_segment_header(
    header: &[u8; SEGMENT_HEADER_BYTES as usize],
) -> Result<u64, String> {
    if header[0..4] != SEGMENT_MAGIC {
        return Err("not a wal segment (bad magic)".to_owned());
    }
    let crc = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&header[0..16]) {
        return Err("segment header crc mismatch".to_owned());
    }
    let version = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if version != SEGMENT_VERSION {
        return Err(format!("unsupported segment format version {version}"));
    }
    Ok(u64::from_le_bytes(
        header[8..16].try_into().expect("8 bytes"),
    ))
}

/// The fixed part in front of a record's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub len: u32,
    pub crc: u32,
    pub offset: u64,
}

impl RecordHeader {
    pub(crate) fn decode(bytes: &[u8; RECORD_HEADER_BYTES as usize]) -> RecordHeader {
        RecordHeader {
            len: u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")),
            crc: u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")),
            offset: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
        }
    }

    /// Header plus payload.
    pub(crate) fn frame_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES + u64::from(self.len)
    }

    /// The CRC state after length and offset; feed the payload with `crc32c_append`.
    pub(crate) fn crc_seed(&self) -> u32 {
        crc_seed(self.len, self.offset)
    }
}

fn crc_seed(len: u32, offset: u64) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), &offset.to_le_bytes())
}

/// Appends one record frame to `buf`. The caller has checked the length against
/// `record_bytes_max`, which is a u32.
pub(crate) fn encode_record(buf: &mut Vec<u8>, offset: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len())
        .expect("append_with refuses records above record_bytes_max (a u32)");
    let crc = crc32c::crc32c_append(crc_seed(len, offset), payload);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Creates the segment starting at `base`, durably: the header and the directory entry are synced
/// before any record goes in, so recovery only ever meets a missing, empty or header-only new
/// segment, never one with records and a bad header.
pub(crate) fn create_segment(dir: &Path, base: u64, hook: &SyncHook) -> io::Result<File> {
    let file = create_segment_file(dir, base)?;
    sync_new_segment(dir, &file, hook)?;
    Ok(file)
}

/// The first half of [`create_segment`]: the file with its header, not yet synced. When the
/// header cannot be written (say, for lack of space) the file is removed again, so the next
/// attempt can create it; if the removal fails too, the error says so and is not a space error.
pub(crate) fn create_segment_file(dir: &Path, base: u64) -> io::Result<File> {
    let path = dir.join(segment_file_name(base));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    if let Err(error) = file.write_all_at(&encode_segment_header(base), 0) {
        drop(file);
        return match std::fs::remove_file(&path) {
            Ok(()) => Err(error),
            Err(removal) => Err(io::Error::other(format!(
                "{error}; removing the half-created segment failed too: {removal}"
            ))),
        };
    }
    Ok(file)
}

/// The second half of [`create_segment`]: syncs the header and the directory entry.
pub(crate) fn sync_new_segment(dir: &Path, file: &File, hook: &SyncHook) -> io::Result<()> {
    sync_file(hook, file)?;
    sync_dir(hook, dir)
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
        assert_eq!(decode_segment_header(&header), Ok(7));
        for byte in 0..header.len() {
            let mut damaged = header;
            damaged[byte] ^= 0x10;
            assert!(decode_segment_header(&damaged).is_err(), "byte {byte}");
        }
    }

    #[test]
    fn record_crc_covers_length_offset_and_payload() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 5, b"hello");
        let header = RecordHeader::decode(buf[..16].try_into().expect("16 bytes"));
        assert_eq!(
            header,
            RecordHeader {
                len: 5,
                crc: header.crc,
                offset: 5
            }
        );
        assert_eq!(
            crc32c::crc32c_append(header.crc_seed(), &buf[16..]),
            header.crc
        );
        let other_offset = RecordHeader {
            offset: 6,
            ..header
        };
        assert_ne!(
            crc32c::crc32c_append(other_offset.crc_seed(), &buf[16..]),
            header.crc
        );
        let other_len = RecordHeader { len: 4, ..header };
        assert_ne!(
            crc32c::crc32c_append(other_len.crc_seed(), &buf[16..20]),
            header.crc
        );
    }
}
