//! Sequential reading of durable records.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::fs::{OpenMode, ReadAhead};
use crate::segment::{
    Format, RECORD_HEADER_BYTES, RecordHeader, SEGMENT_HEADER_BYTES, decode_segment_header,
    segment_file_name,
};
use crate::{Shared, WalError, lock};

/// Read-ahead per reader.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Reads durable records in offset order, across segments, with its own file handle.
///
/// A reader never returns a record at or beyond [`crate::Wal::durable_end`]; when it has caught
/// up, [`Reader::next`] returns `None` and later calls return records as they become durable. It
/// keeps working after the `Wal` is closed (it then sees no new records). The segment it is in
/// stays readable even if it is deleted meanwhile; moving on to a deleted segment gives
/// [`WalError::OffsetGone`].
pub struct Reader {
    shared: Arc<Shared>,
    position: u64,
    segment: Option<OpenSegment>,
}

/// The segment a reader is in, positioned at the record for `Reader::position`.
struct OpenSegment {
    base: u64,
    /// Base of the following segment, once one exists.
    next_base: Option<u64>,
    path: PathBuf,
    format: Format,
    input: ReadAhead,
    /// Byte position of `input` in the file.
    file_position: u64,
    /// Bytes known durable, while this is the last segment; `None` once it is sealed. Reads
    /// never buffer beyond it: bytes past the durable end may be a group that is cut back after
    /// running out of space, and rewritten with other records at the same offsets.
    durable_bytes: Option<u64>,
}

impl Reader {
    pub(crate) fn new(shared: Arc<Shared>, from: u64) -> Reader {
        Reader {
            shared,
            position: from,
            segment: None,
        }
    }

    /// Offset of the record [`Reader::next`] returns next.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next durable record as `(offset, bytes)`, or `None` when the reader has caught up with
    /// the durable end (call again later).
    ///
    /// Errors: [`WalError::OffsetGone`] when the segment holding the next record was deleted,
    /// [`WalError::Corrupt`] when a record fails its CRC or offset check, [`WalError::Io`].
    /// After an error the position is unchanged.
    #[allow(clippy::should_implement_trait)] // Fallible and resumable after `None`: not an `Iterator`.
    pub fn next(&mut self) -> Result<Option<(u64, Vec<u8>)>, WalError> {
        if self.position >= self.shared.durable_end.load(Ordering::Acquire) {
            return Ok(None);
        }
        if self
            .segment
            .as_mut()
            .is_none_or(|segment| !segment.holds(&self.shared, self.position))
        {
            self.segment = None;
            self.segment = Some(OpenSegment::open_at(&self.shared, self.position)?);
        }
        let segment = self.segment.as_mut().expect("opened above");
        segment.refresh_durable_bytes(&self.shared);
        let record = segment.read_record(self.position, self.shared.record_bytes_max);
        if record.is_err() {
            // The buffered position is unknown after a failed read; reopen on the next call.
            self.segment = None;
        }
        let payload = record?;
        let offset = self.position;
        self.position += 1;
        Ok(Some((offset, payload)))
    }
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("dir", &self.shared.dir)
            .field("position", &self.position)
            .field(
                "segment_base",
                &self.segment.as_ref().map(|segment| segment.base),
            )
            .finish()
    }
}

impl OpenSegment {
    /// Opens the segment holding `position` (a durable offset) and skips to that record, from
    /// the nearest read-index entry at or before it.
    fn open_at(shared: &Shared, position: u64) -> Result<OpenSegment, WalError> {
        let (base, next_base, path, file) = {
            // Opened under the segment lock, so deletion cannot remove the file in between.
            let segments = lock(&shared.segments);
            let start = shared.start_offset.load(Ordering::Acquire);
            let index = segments.partition_point(|&base| base <= position);
            if position < start || index == 0 {
                return Err(WalError::OffsetGone {
                    offset: position,
                    start,
                });
            }
            let base = segments[index - 1];
            let path = shared.dir.join(segment_file_name(base));
            let file = shared
                .fs
                .open(&path, OpenMode::Read)
                .map_err(WalError::io("open a segment for reading"))?;
            (base, segments.get(index).copied(), path, file)
        };
        let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
        file.read_exact_at(&mut header, 0)
            .map_err(|error| durable_read_error(error, &path, 0))?;
        let format = match decode_segment_header(&header) {
            Ok((found, format)) if found == base => format,
            Ok((found, _)) => {
                return Err(WalError::corrupt(
                    path,
                    0,
                    format!("segment header says base offset {found}"),
                ));
            }
            Err(reason) => return Err(WalError::corrupt(path, 0, reason)),
        };
        let (from_offset, from_byte) = lock(&shared.index)
            .range(base..=position)
            .next_back()
            .map_or((base, SEGMENT_HEADER_BYTES), |(&offset, &byte)| {
                (offset, byte)
            });
        let mut segment = OpenSegment {
            base,
            next_base,
            path,
            format,
            input: ReadAhead::new(file, READ_BUFFER_BYTES, from_byte),
            file_position: from_byte,
            durable_bytes: Some(0),
        };
        segment.refresh_durable_bytes(shared);
        // Skip record headers up to `position`. Their offsets are checked; their CRCs are not
        // (the records are not returned).
        for expected in from_offset..position {
            let header = segment.read_header(expected)?;
            segment.file_position += header.frame_bytes();
            segment.input.seek(segment.file_position);
        }
        Ok(segment)
    }

    /// Whether `position` is in this segment, i.e. no later segment starts at or below it.
    fn holds(&mut self, shared: &Shared, position: u64) -> bool {
        if self.next_base.is_none() && shared.last_segment_base.load(Ordering::Acquire) != self.base
        {
            let segments = lock(&shared.segments);
            let index = segments.partition_point(|&base| base <= self.base);
            self.next_base = segments.get(index).copied();
        }
        self.next_base.is_none_or(|next| position < next)
    }

    /// Bounds read-ahead by what the writer has made durable, until the segment is sealed. Call
    /// it after loading the durable end, before reading: the writer publishes the bytes first.
    fn refresh_durable_bytes(&mut self, shared: &Shared) {
        if self.durable_bytes.is_none() {
            return;
        }
        let tail = *lock(&shared.durable_tail);
        self.durable_bytes = (tail.base == self.base).then_some(tail.bytes);
        self.input.set_limit(self.durable_bytes.unwrap_or(u64::MAX));
    }

    fn read_header(&mut self, expected: u64) -> Result<RecordHeader, WalError> {
        let header_bytes = self.format.record_header_bytes() as usize;
        let mut bytes = [0u8; RECORD_HEADER_BYTES as usize];
        read_durable(
            &mut self.input,
            &mut bytes[..header_bytes],
            &self.path,
            self.file_position,
        )?;
        let header = RecordHeader::decode(&bytes, self.format);
        if header.offset != expected {
            return Err(WalError::corrupt(
                self.path.clone(),
                self.file_position,
                format!(
                    "record has offset {} where {expected} was expected",
                    header.offset
                ),
            ));
        }
        Ok(header)
    }

    fn read_record(&mut self, expected: u64, record_bytes_max: u32) -> Result<Vec<u8>, WalError> {
        let header = self.read_header(expected)?;
        let payload_position = self.file_position + self.format.record_header_bytes();
        if header.len > record_bytes_max {
            // Possibly written under a larger limit; only allocate what the file can hold.
            let file_bytes = self
                .input
                .file()
                .byte_len()
                .map_err(WalError::io("read segment metadata"))?;
            if self.file_position + header.frame_bytes() > file_bytes {
                return Err(WalError::corrupt(
                    self.path.clone(),
                    self.file_position,
                    format!(
                        "record length {} runs past the end of the segment",
                        header.len
                    ),
                ));
            }
        }
        let mut payload = vec![0u8; header.len as usize];
        read_durable(&mut self.input, &mut payload, &self.path, payload_position)?;
        if crc32c::crc32c_append(header.crc_seed(), &payload) != header.crc {
            return Err(WalError::corrupt(
                self.path.clone(),
                self.file_position,
                "record crc mismatch",
            ));
        }
        self.file_position += header.frame_bytes();
        Ok(payload)
    }
}

fn durable_read_error(error: io::Error, path: &Path, position: u64) -> WalError {
    match error.kind() {
        io::ErrorKind::UnexpectedEof => WalError::corrupt(
            path.to_owned(),
            position,
            "segment ends inside a durable record",
        ),
        _ => WalError::io("read a segment")(error),
    }
}

/// `read_exact` of bytes that are durable, so a short file means damage, not a race.
fn read_durable(
    input: &mut ReadAhead,
    buf: &mut [u8],
    path: &Path,
    position: u64,
) -> Result<(), WalError> {
    input
        .read_exact(buf)
        .map_err(|error| durable_read_error(error, path, position))
}
