//! The one error type of this crate's boundary.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the log.
///
/// Callers usually decide on the variant alone: [`WalError::Io`] is worth retrying later (it also
/// reports a full append queue, with [`io::ErrorKind::WouldBlock`]), [`WalError::StorageFull`]
/// is worth retrying once space is freed, [`WalError::Poisoned`] means
/// "exit and recover on restart", [`WalError::Corrupt`] needs an operator, and the others are bugs
/// or bad input on the caller's side.
#[derive(Debug)]
pub enum WalError {
    /// An operating-system call failed; `context` says what the log was doing.
    Io {
        /// What the log was doing, e.g. `"read a segment"`.
        context: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// An earlier write or fsync failed, so nothing is accepted any more. There is no retry:
    /// after a failed fsync the kernel may have dropped the dirty pages, so the only safe path is
    /// to exit and let recovery on restart find out what really reached the disk.
    /// [`crate::Wal::poison_cause`] says what failed.
    Poisoned,
    /// A record is longer than [`crate::WalOptions::record_bytes_max`]; the whole batch was refused.
    RecordTooLarge {
        /// Length of the offending record.
        bytes: usize,
        /// The configured maximum.
        max: u32,
    },
    /// Data that had been synced is damaged (or a file is not what the log wrote). The log refuses
    /// to open rather than silently drop acknowledged records.
    Corrupt {
        /// The damaged file (a segment, or a cursor file).
        segment: PathBuf,
        /// Byte position of the damage inside that file.
        position: u64,
        /// What exactly is wrong.
        reason: String,
    },
    /// The requested offset lies below the first record still on disk.
    OffsetGone {
        /// The requested offset.
        offset: u64,
        /// The first offset still on disk ([`crate::Wal::start_offset`]).
        start: u64,
    },
    /// The cursor name was not in [`crate::WalOptions::cursor_names`].
    UnknownCursor(String),
    /// The log was closed; nothing is accepted any more.
    Closed,
    /// The device is full (ENOSPC, or EDQUOT): the append was refused and nothing of it is in
    /// the log (what the writer had written was cut off again). The log stays usable: appends
    /// succeed again once space is freed. Not a failed fsync, which poisons instead.
    StorageFull,
}

impl WalError {
    /// Wraps an IO error with what the log was doing; for `map_err`.
    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> WalError {
        move |source| WalError::Io { context, source }
    }

    /// An invalid argument or option, reported as `Io` with `InvalidInput` so that the public enum
    /// stays exactly as other crates match on it.
    pub(crate) fn invalid_input(context: &'static str, message: String) -> WalError {
        WalError::Io {
            context,
            source: io::Error::new(io::ErrorKind::InvalidInput, message),
        }
    }

    pub(crate) fn corrupt(segment: PathBuf, position: u64, reason: impl Into<String>) -> WalError {
        WalError::Corrupt {
            segment,
            position,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The source is part of the message because callers mostly log `to_string()`.
            WalError::Io { context, source } => write!(f, "wal: {context}: {source}"),
            WalError::Poisoned => {
                f.write_str("wal is poisoned by an earlier failed write or fsync")
            }
            WalError::RecordTooLarge { bytes, max } => {
                write!(
                    f,
                    "wal record of {bytes} bytes exceeds the maximum of {max} bytes"
                )
            }
            WalError::Corrupt {
                segment,
                position,
                reason,
            } => {
                write!(
                    f,
                    "wal file {} is corrupt at byte {position}: {reason}",
                    segment.display()
                )
            }
            WalError::OffsetGone { offset, start } => {
                write!(
                    f,
                    "wal offset {offset} was deleted, the log starts at {start}"
                )
            }
            WalError::UnknownCursor(name) => write!(f, "unknown wal cursor {name:?}"),
            WalError::Closed => f.write_str("wal is closed"),
            WalError::StorageFull => {
                f.write_str("wal: no space left on the device; nothing of this append was written")
            }
        }
    }
}

impl std::error::Error for WalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lower_case_without_final_period() {
        let errors = [
            WalError::Io {
                context: "read a segment",
                source: io::Error::other("boom"),
            },
            WalError::Poisoned,
            WalError::RecordTooLarge { bytes: 10, max: 5 },
            WalError::corrupt(PathBuf::from("x.wal"), 3, "crc mismatch"),
            WalError::OffsetGone {
                offset: 1,
                start: 2,
            },
            WalError::UnknownCursor("c".into()),
            WalError::Closed,
            WalError::StorageFull,
        ];
        for error in errors {
            let message = error.to_string();
            assert!(message.starts_with(|c: char| c.is_lowercase()), "{message}");
            assert!(!message.ends_with('.'), "{message}");
        }
    }
}
