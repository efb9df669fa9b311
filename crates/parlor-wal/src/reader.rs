//! Sequential reading of durable records.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::segment::{
    RECORD_HEADER_BYTES, RecordHeader, SEGMENT_HEADER_BYTES, decode_segment_header,
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
    input: BufReader<File>,
    /// Byte position of `input` in the file.
    file_position: u64,
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
    /// Opens the segment holding `position` (a durable offset) and skips to that record.
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
            let file = File::open(&path).map_err(WalError::io("open a segment for reading"))?;
            (base, segments.get(index).copied(), path, file)
        };
        let mut input = BufReader::with_capacity(READ_BUFFER_BYTES, file);
        let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
        read_durable(&mut input, &mut header, &path, 0)?;
        match decode_segment_header(&header) {
            Ok(found) if found == base => {}
            Ok(found) => {
                return Err(WalError::corrupt(
                    path,
                    0,
                    format!("segment header says base offset {found}"),
                ));
            }
            Err(reason) => return Err(WalError::corrupt(path, 0, reason)),
        }
        let mut segment = OpenSegment {
            base,
            next_base,
            path,
            input,
            file_position: SEGMENT_HEADER_BYTES,
        };
        // No index: skip record headers up to `position`. Their offsets are checked; their CRCs
        // are not (the records are not returned).
        for expected in base..position {
            let header = segment.read_header(expected)?;
            segment
                .input
                .seek_relative(i64::from(header.len))
                .map_err(WalError::io("skip a record"))?;
            segment.file_position += header.frame_bytes();
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

    fn read_header(&mut self, expected: u64) -> Result<RecordHeader, WalError> {
        let mut bytes = [0u8; RECORD_HEADER_BYTES as usize];
        read_durable(&mut self.input, &mut bytes, &self.path, self.file_position)?;
        let header = RecordHeader::decode(&bytes);
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
        if header.len > record_bytes_max {
            // Possibly written under a larger limit; only allocate what the file can hold.
            let file_bytes = self
                .input
                .get_ref()
                .metadata()
                .map_err(WalError::io("read segment metadata"))?
                .len();
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
        read_durable(
            &mut self.input,
            &mut payload,
            &self.path,
            self.file_position,
        )?;
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

/// `read_exact` of bytes that are durable, so a short file means damage, not a race.
fn read_durable(
    input: &mut BufReader<File>,
    buf: &mut [u8],
    path: &Path,
    position: u64,
) -> Result<(), WalError> {
    input.read_exact(buf).map_err(|error| match error.kind() {
        io::ErrorKind::UnexpectedEof => WalError::corrupt(
            path.to_owned(),
            position,
            "segment ends inside a durable record",
        ),
        _ => WalError::io("read a segment")(error),
    })
}
