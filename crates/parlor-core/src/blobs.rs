//! The blob store port: where the bytes of shared files live, named by their SHA-256.
//!
//! Blobs are immutable and content-addressed, so a key names one sequence of bytes forever:
//! putting a key twice stores nothing new, and two uploads of the same file share one blob.
//! Which messages and users point at a blob (and so when it may be deleted) is the
//! [`Store`](crate::ports::Store)'s business, not this port's.
//!
//! The upload path streams a request body to a staging file while hashing and counting it,
//! fsyncs it, then hands it to [`BlobStore::put_file`]: no backend ever holds a whole file
//! in memory, and reads come back as a stream of chunks.

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::BackendError;

/// A blob's name: the lowercase hex SHA-256 of its bytes.
///
/// Always exactly [`BlobKey::LEN`] characters of `0-9a-f`, so it is safe as a file name and
/// an object key as it is.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BlobKey(String);

/// Why a string is not a [`BlobKey`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlobKeyError {
    #[error("a blob key is {expected} hex characters (a SHA-256), not {len}", expected = BlobKey::LEN)]
    Length { len: usize },
    #[error("a blob key is lowercase hex (a SHA-256); {found:?} at {at} is not")]
    NotLowercaseHex { found: char, at: usize },
}

impl BlobKey {
    /// Characters in a key: 32 bytes of SHA-256, two hex digits each.
    pub const LEN: usize = 64;

    /// Validates `text` as a key: exactly 64 characters of `0-9a-f` (uppercase is refused,
    /// so one blob has one name).
    pub fn parse(text: &str) -> Result<BlobKey, BlobKeyError> {
        if let Some((at, found)) = text
            .char_indices()
            .find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
        {
            return Err(BlobKeyError::NotLowercaseHex { found, at });
        }
        if text.len() != Self::LEN {
            return Err(BlobKeyError::Length { len: text.len() });
        }
        Ok(BlobKey(text.to_owned()))
    }

    /// The key of a SHA-256 digest the caller computed.
    pub fn from_digest(digest: [u8; 32]) -> BlobKey {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(Self::LEN);
        for byte in digest {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        BlobKey(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobKey({})", self.0)
    }
}

impl FromStr for BlobKey {
    type Err = BlobKeyError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        BlobKey::parse(text)
    }
}

impl TryFrom<String> for BlobKey {
    type Error = BlobKeyError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        BlobKey::parse(&text)?;
        Ok(BlobKey(text))
    }
}

impl From<BlobKey> for String {
    fn from(key: BlobKey) -> String {
        key.0
    }
}

/// A blob being read: which bytes of it the body holds, and the body.
pub struct BlobRead {
    /// The whole blob's length in bytes, whatever was asked for (HTTP's `Content-Range`
    /// needs it).
    pub total_len: u64,
    /// The bytes `body` yields: the range asked for, clamped to the blob (see
    /// [`resolve_range`]), or `0..total_len`.
    pub range: Range<u64>,
    /// The bytes of `range`, in order, in chunks of a backend's choosing (each at most a
    /// few hundred KiB). An `Err` ends the stream: what came before it is good, the rest
    /// did not arrive.
    pub body: BoxStream<'static, Result<Bytes, BackendError>>,
}

impl fmt::Debug for BlobRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobRead")
            .field("total_len", &self.total_len)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// Why a range cannot be read from a blob.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// `start >= end`: nothing to read. HTTP's `Range` cannot ask for this.
    #[error("the range {start}..{end} is empty")]
    Empty { start: u64, end: u64 },
    /// The range starts at or past the end of the blob (HTTP's 416).
    #[error("the range starts at {start}, past the blob's {total_len} bytes")]
    NotSatisfiable { start: u64, total_len: u64 },
}

/// The bytes a read of `range` from a blob of `total_len` bytes yields, the same on every
/// backend: all of it for `None`; otherwise the range with its end clamped to the blob
/// (as HTTP does with `bytes=0-999999` of a short file). An empty range, or one that starts
/// at or past the end (any range of an empty blob), is an error.
pub fn resolve_range(range: Option<&Range<u64>>, total_len: u64) -> Result<Range<u64>, RangeError> {
    let Some(range) = range else {
        return Ok(0..total_len);
    };
    if range.start >= range.end {
        return Err(RangeError::Empty {
            start: range.start,
            end: range.end,
        });
    }
    if range.start >= total_len {
        return Err(RangeError::NotSatisfiable {
            start: range.start,
            total_len,
        });
    }
    Ok(range.start..range.end.min(total_len))
}

impl From<RangeError> for BackendError {
    fn from(error: RangeError) -> Self {
        BackendError::rejected(error.to_string()).with_source(error)
    }
}

/// Immutable, content-addressed bytes: the files shared in conversations.
///
/// Every method is safe to call concurrently, for the same key too. A backend trusts that a
/// key is the SHA-256 of the bytes stored under it (the upload path computes it); it checks
/// lengths, not hashes. Failures: `Unavailable` (the disk or the service is failing for now:
/// retry), `StorageFull` (out of space: nothing was stored, retry once space is freed),
/// `Rejected` (this request can never succeed: a bad range, a staged file of the wrong
/// length). `Poisoned` is never returned: a failed put leaves no blob, so retrying is safe.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores the file at `staged`, a complete local file of `len` bytes that the caller
    /// wrote and fsynced, as the blob `key`. When this returns `Ok` the blob survives a crash
    /// of the process or machine, and every later `get` finds it whole; until then, and if it
    /// fails, no reader ever sees a partial blob under `key`. Idempotent: if `key` is stored
    /// already this is `Ok` and changes nothing.
    ///
    /// `staged` stays the caller's: the backend only reads it (or links it), never moves or
    /// changes it; the caller removes it afterwards and must not write to it again. The
    /// backend reads it in bounded chunks, never whole. A file whose length is not `len` is
    /// `Rejected`.
    async fn put_file(&self, key: &BlobKey, staged: &Path, len: u64) -> Result<(), BackendError>;

    /// The blob `key`, or `None` if it is not stored: all of it, or the bytes of `range`
    /// resolved by [`resolve_range`] (its end clamped to the blob; an empty range, or one
    /// starting at or past the end, is `Rejected`).
    async fn get(
        &self,
        key: &BlobKey,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobRead>, BackendError>;

    /// The blob's length in bytes, or `None` if it is not stored.
    async fn len(&self, key: &BlobKey) -> Result<Option<u64>, BackendError>;

    /// Whether the blob is stored.
    async fn exists(&self, key: &BlobKey) -> Result<bool, BackendError> {
        Ok(self.len(key).await?.is_some())
    }

    /// Removes the blob, durably; `Ok` if it was not stored. A `get` that already began may
    /// still finish reading it. The caller makes sure nothing points at it any more.
    async fn delete(&self, key: &BlobKey) -> Result<(), BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn a_lowercase_sha256_is_a_key() {
        let key = BlobKey::parse(EMPTY_SHA256).expect("valid");
        assert_eq!(key.as_str(), EMPTY_SHA256);
        assert_eq!(key.to_string(), EMPTY_SHA256);
        assert_eq!(EMPTY_SHA256.parse::<BlobKey>(), Ok(key));
    }

    #[test]
    fn from_digest_spells_the_digest_in_lowercase_hex() {
        let mut digest = [0u8; 32];
        digest[0] = 0xab;
        digest[31] = 0x0f;
        let key = BlobKey::from_digest(digest);
        assert_eq!(key.as_str(), format!("ab{}0f", "0".repeat(60)));
        assert_eq!(BlobKey::parse(key.as_str()), Ok(key));
    }

    #[test]
    fn keys_of_the_wrong_length_are_refused() {
        assert_eq!(BlobKey::parse(""), Err(BlobKeyError::Length { len: 0 }));
        assert_eq!(
            BlobKey::parse(&EMPTY_SHA256[1..]),
            Err(BlobKeyError::Length { len: 63 })
        );
        assert_eq!(
            BlobKey::parse(&format!("{EMPTY_SHA256}0")),
            Err(BlobKeyError::Length { len: 65 })
        );
    }

    #[test]
    fn keys_that_are_not_lowercase_hex_are_refused() {
        let upper = EMPTY_SHA256.to_uppercase();
        assert_eq!(
            BlobKey::parse(&upper),
            Err(BlobKeyError::NotLowercaseHex { found: 'E', at: 0 })
        );
        let traversal = format!("../{}", &EMPTY_SHA256[3..]);
        assert_eq!(
            BlobKey::parse(&traversal),
            Err(BlobKeyError::NotLowercaseHex { found: '.', at: 0 })
        );
        let error = BlobKey::parse(&format!("{}é", &EMPTY_SHA256[..63])).unwrap_err();
        assert_eq!(
            error,
            BlobKeyError::NotLowercaseHex {
                found: 'é', at: 63
            }
        );
        assert!(error.to_string().contains("lowercase hex"), "{error}");
    }

    #[test]
    fn keys_deserialize_only_when_valid() {
        let json = format!("\"{EMPTY_SHA256}\"");
        let key: BlobKey = serde_json::from_str(&json).expect("valid");
        assert_eq!(serde_json::to_string(&key).expect("serialize"), json);
        assert!(serde_json::from_str::<BlobKey>("\"abc\"").is_err());
    }

    #[test]
    fn no_range_is_the_whole_blob() {
        assert_eq!(resolve_range(None, 10), Ok(0..10));
        assert_eq!(resolve_range(None, 0), Ok(0..0));
    }

    #[test]
    fn a_range_inside_the_blob_is_kept_and_its_end_is_clamped() {
        assert_eq!(resolve_range(Some(&(2..5)), 10), Ok(2..5));
        assert_eq!(resolve_range(Some(&(9..10)), 10), Ok(9..10));
        assert_eq!(resolve_range(Some(&(4..1000)), 10), Ok(4..10));
    }

    #[test]
    fn empty_ranges_and_ranges_past_the_end_are_errors() {
        assert_eq!(
            resolve_range(Some(&(3..3)), 10),
            Err(RangeError::Empty { start: 3, end: 3 })
        );
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 5..3;
        assert_eq!(
            resolve_range(Some(&backwards), 10),
            Err(RangeError::Empty { start: 5, end: 3 })
        );
        assert_eq!(
            resolve_range(Some(&(10..20)), 10),
            Err(RangeError::NotSatisfiable {
                start: 10,
                total_len: 10
            })
        );
        assert_eq!(
            resolve_range(Some(&(0..1)), 0),
            Err(RangeError::NotSatisfiable {
                start: 0,
                total_len: 0
            })
        );
    }
}
