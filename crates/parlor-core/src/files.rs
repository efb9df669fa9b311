//! Files shared in conversations: what a message shows of each ([`FileInfo`]), what the store
//! keeps of an upload ([`StoredFile`]: its blobs, its owner, the message it is attached to),
//! and the rules of attaching.
//!
//! The bytes live in a [`BlobStore`](crate::blobs::BlobStore) under the SHA-256 of their
//! content, so the same bytes uploaded twice are stored once; the store counts the files that
//! use each blob. A file is uploaded first (recorded, then its blobs stored, then its id
//! given to the uploader), then attached by id to one message of its uploader. Deleting the
//! message deletes its files; an upload never attached expires. A blob no file uses any
//! more is deleted by the janitor: claimed in the store (so that no new file can start using
//! it meanwhile), deleted from the blob store, then forgotten.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::blobs::BlobKey;
use crate::ids::{ConversationId, FileId, Seq, UserId};

/// The most files one message carries.
pub const FILES_PER_MESSAGE_MAX: usize = 10;

/// An image's size in pixels, as displayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

/// A file as a message shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub id: FileId,
    /// What the uploader called it, cleaned of paths and control characters.
    pub name: String,
    /// Sniffed from the bytes, never taken from the client.
    pub content_type: String,
    /// In bytes.
    pub size: u64,
    /// For the images shown inline (PNG, JPEG, GIF, WebP): their size. Such a file has a
    /// thumbnail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSize>,
}

/// A file's small preview.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thumbnail {
    pub blob: BlobKey,
    pub content_type: String,
    pub size: u64,
}

/// Where a file is attached: a message of a conversation, at its place among the message's
/// files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub conversation_id: ConversationId,
    pub seq: Seq,
}

/// A file as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFile {
    pub info: FileInfo,
    pub owner: UserId,
    pub blob: BlobKey,
    pub thumbnail: Option<Thumbnail>,
    pub created_at: OffsetDateTime,
    /// `None` until a message of its owner carries it.
    pub attached_to: Option<Attachment>,
}

impl StoredFile {
    /// The blobs this file uses: its bytes, and its thumbnail's.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobKey> {
        std::iter::once(&self.blob).chain(self.thumbnail.as_ref().map(|thumb| &thumb.blob))
    }
}

/// What recording an upload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadRecorded {
    /// Recorded: store its blobs now, then give out its id.
    Recorded,
    /// Nothing recorded: the owner's files would then take more than the quota.
    OverQuota { used: u64 },
    /// Nothing recorded: one of its blobs is being deleted (claimed by the janitor, which
    /// deletes it and then forgets it). Try again in a moment.
    BlobBeingDeleted,
}

/// What the rules need to know of each file a new message attaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileFacts {
    pub id: FileId,
    /// `None` if no such file exists.
    pub owner: Option<UserId>,
    pub attached: bool,
}
