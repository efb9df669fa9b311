//! Files in SQLite: `files` (an upload, and the message it is attached to, if any) and
//! `blobs` (how many files use each blob, and since when none does). Every function runs in
//! the caller's transaction: attaching and removing happen in the transaction of the event
//! that causes them, so a blob's count never drifts from the files that use it.

use std::collections::HashMap;

use parlor_core::blobs::BlobKey;
use parlor_core::files::{
    Attachment, FileFacts, FileInfo, ImageSize, StoredFile, Thumbnail, UploadRecorded,
};
use parlor_core::ids::{ConversationId, FileId, Seq, UserId};
use parlor_core::protocol::Message;
use parlor_core::storage::{nanos, nanos_bound, seq_param};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};
use time::OffsetDateTime;

use super::codec::{Id, Nanos, SeqColumn};
use super::failure::Failure;

/// The columns [`file_row`] reads, of `files f`.
const FILE_COLUMNS: &str = "f.id, f.owner_id, f.name, f.content_type, f.size, f.width, f.height,
     f.blob, f.thumbnail_blob, f.thumbnail_type, f.thumbnail_size, f.created_at_ns,
     f.conversation_id, f.seq";

fn blob_key(row: &Row<'_>, index: usize) -> rusqlite::Result<BlobKey> {
    let text: String = row.get(index)?;
    BlobKey::parse(&text)
        .map_err(|error| rusqlite::Error::FromSqlConversionFailure(index, Type::Text, error.into()))
}

fn file_row(row: &Row<'_>) -> rusqlite::Result<StoredFile> {
    let size = |index| -> rusqlite::Result<u64> {
        let raw: i64 = row.get(index)?;
        u64::try_from(raw).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(index, raw))
    };
    let image = match (row.get::<_, Option<u32>>(5)?, row.get::<_, Option<u32>>(6)?) {
        (Some(width), Some(height)) => Some(ImageSize { width, height }),
        _ => None,
    };
    let thumbnail = match row.get::<_, Option<String>>(9)? {
        Some(content_type) => Some(Thumbnail {
            blob: blob_key(row, 8)?,
            content_type,
            size: size(10)?,
        }),
        None => None,
    };
    let attached_to = match row.get::<_, Option<Id>>(12)? {
        Some(Id(conversation)) => Some(Attachment {
            conversation_id: ConversationId(conversation),
            seq: row.get::<_, SeqColumn>(13)?.0,
        }),
        None => None,
    };
    Ok(StoredFile {
        info: FileInfo {
            id: FileId(row.get::<_, Id>(0)?.0),
            name: row.get(2)?,
            content_type: row.get(3)?,
            size: size(4)?,
            image,
        },
        owner: UserId(row.get::<_, Id>(1)?.0),
        blob: blob_key(row, 7)?,
        thumbnail,
        created_at: row.get::<_, Nanos>(11)?.0,
        attached_to,
    })
}

fn size_param(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

/// One more file uses each of `keys`.
fn use_blobs<'a>(tx: &Connection, keys: impl Iterator<Item = &'a BlobKey>) -> Result<(), Failure> {
    let mut statement = tx.prepare_cached(
        "INSERT INTO blobs (key, refs) VALUES (?1, 1)
         ON CONFLICT (key) DO UPDATE SET refs = refs + 1, unused_since_ns = NULL",
    )?;
    for key in keys {
        statement.execute(params![key.as_str()])?;
    }
    Ok(())
}

/// One file less uses each of `keys`; a blob that nobody uses is unused from `now_ns`.
fn release_blobs(tx: &Connection, keys: &[String], now_ns: i64) -> Result<(), Failure> {
    let mut statement = tx.prepare_cached(
        "UPDATE blobs SET refs = refs - 1,
                          unused_since_ns = CASE WHEN refs = 1 THEN ?2 ELSE unused_since_ns END
         WHERE key = ?1",
    )?;
    for key in keys {
        statement.execute(params![key, now_ns])?;
    }
    Ok(())
}

/// Deletes the files that match `condition` (on `files f`, with `params`), up to `limit`,
/// and releases their blobs; how many.
fn remove_files(
    tx: &Connection,
    condition: &str,
    values: &[&dyn rusqlite::ToSql],
    now_ns: i64,
) -> Result<u64, Failure> {
    let mut statement = tx.prepare_cached(&format!(
        "SELECT f.id, f.blob, f.thumbnail_blob FROM files f WHERE {condition}"
    ))?;
    let rows = statement
        .query_map(values, |row| {
            Ok((
                row.get::<_, Id>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut delete = tx.prepare_cached("DELETE FROM files WHERE id = ?1")?;
    let mut keys = Vec::with_capacity(rows.len() * 2);
    for (id, blob, thumbnail) in &rows {
        delete.execute(params![id])?;
        keys.push(blob.clone());
        keys.extend(thumbnail.clone());
    }
    release_blobs(tx, &keys, now_ns)?;
    Ok(rows.len() as u64)
}

pub(super) fn record_upload(
    tx: &Connection,
    file: &StoredFile,
    quota_bytes: u64,
) -> Result<UploadRecorded, Failure> {
    let mut claimed =
        tx.prepare_cached("SELECT 1 FROM blobs WHERE key = ?1 AND claimed_at_ns IS NOT NULL")?;
    for key in file.blobs() {
        if claimed.exists(params![key.as_str()])? {
            return Ok(UploadRecorded::BlobBeingDeleted);
        }
    }
    let used: i64 = tx
        .prepare_cached("SELECT coalesce(sum(size), 0) FROM files WHERE owner_id = ?1")?
        .query_row(params![Id(file.owner.0)], |row| row.get(0))?;
    let used = u64::try_from(used).unwrap_or(0);
    if used.saturating_add(file.info.size) > quota_bytes {
        return Ok(UploadRecorded::OverQuota { used });
    }
    let info = &file.info;
    let thumbnail = file.thumbnail.as_ref();
    tx.prepare_cached(
        "INSERT INTO files (id, owner_id, name, content_type, size, width, height, blob,
                            thumbnail_blob, thumbnail_type, thumbnail_size, created_at_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        Id(info.id.0),
        Id(file.owner.0),
        info.name,
        info.content_type,
        size_param(info.size),
        info.image.map(|image| image.width),
        info.image.map(|image| image.height),
        file.blob.as_str(),
        thumbnail.map(|thumb| thumb.blob.as_str()),
        thumbnail.map(|thumb| thumb.content_type.as_str()),
        thumbnail.map(|thumb| size_param(thumb.size)),
        nanos(file.created_at)?,
    ])?;
    use_blobs(tx, file.blobs())?;
    Ok(UploadRecorded::Recorded)
}

pub(super) fn file(
    tx: &Connection,
    user: UserId,
    id: FileId,
) -> Result<Option<StoredFile>, Failure> {
    // Attached: readable by the members of its conversation now. Not yet: by its owner.
    let sql = format!(
        "SELECT {FILE_COLUMNS} FROM files f
         WHERE f.id = ?1 AND (
             (f.conversation_id IS NULL AND f.owner_id = ?2)
             OR EXISTS (SELECT 1 FROM members m
                        WHERE m.conversation_id = f.conversation_id AND m.user_id = ?2))"
    );
    let file = tx
        .prepare_cached(&sql)?
        .query_row(params![Id(id.0), Id(user.0)], file_row)
        .optional()?;
    Ok(file)
}

/// What the rules need of each file a message attaches.
pub(super) fn facts(tx: &Connection, ids: &[FileId]) -> Result<Vec<FileFacts>, Failure> {
    let mut statement =
        tx.prepare_cached("SELECT owner_id, conversation_id IS NOT NULL FROM files WHERE id = ?1")?;
    ids.iter()
        .map(|&id| {
            let found = statement
                .query_row(params![Id(id.0)], |row| {
                    Ok((UserId(row.get::<_, Id>(0)?.0), row.get::<_, bool>(1)?))
                })
                .optional()?;
            Ok(FileFacts {
                id,
                owner: found.map(|(owner, _)| owner),
                attached: found.is_some_and(|(_, attached)| attached),
            })
        })
        .collect()
}

/// Attaches `ids` (checked by the rules: the sender's, unattached) to the message at `seq`,
/// in order; their infos.
pub(super) fn attach(
    tx: &Connection,
    conversation: ConversationId,
    seq: Seq,
    ids: &[FileId],
) -> Result<Vec<FileInfo>, Failure> {
    let mut update = tx.prepare_cached(
        "UPDATE files SET conversation_id = ?2, seq = ?3, position = ?4
         WHERE id = ?1 AND conversation_id IS NULL",
    )?;
    for (position, id) in ids.iter().enumerate() {
        let updated = update.execute(params![
            Id(id.0),
            Id(conversation.0),
            seq_param(seq),
            position as i64
        ])?;
        if updated != 1 {
            return Err(Failure::Rejected(format!("file {id} cannot be attached")));
        }
    }
    let mut files = files_in_range(tx, conversation, seq, seq)?;
    Ok(files.remove(&seq).unwrap_or_default())
}

/// Removes the files of the message at `seq` (it was deleted).
pub(super) fn remove_of_message(
    tx: &Connection,
    conversation: ConversationId,
    seq: Seq,
    now_ns: i64,
) -> Result<(), Failure> {
    remove_files(
        tx,
        "f.conversation_id = ?1 AND f.seq = ?2",
        &[&Id(conversation.0), &seq_param(seq)],
        now_ns,
    )?;
    Ok(())
}

/// The files of the messages from `low` to `high`, by seq, each message's in order.
fn files_in_range(
    tx: &Connection,
    conversation: ConversationId,
    low: Seq,
    high: Seq,
) -> Result<HashMap<Seq, Vec<FileInfo>>, Failure> {
    let sql = format!(
        "SELECT {FILE_COLUMNS} FROM files f
         WHERE f.conversation_id = ?1 AND f.seq BETWEEN ?2 AND ?3
         ORDER BY f.seq, f.position"
    );
    let mut statement = tx.prepare_cached(&sql)?;
    let rows = statement.query_map(
        params![Id(conversation.0), seq_param(low), seq_param(high)],
        file_row,
    )?;
    let mut by_seq: HashMap<Seq, Vec<FileInfo>> = HashMap::new();
    for row in rows {
        let file = row?;
        if let Some(at) = file.attached_to {
            by_seq.entry(at.seq).or_default().push(file.info);
        }
    }
    Ok(by_seq)
}

/// Fills the files of `messages` (ascending, of one conversation) from one query over the
/// seqs they span.
pub(super) fn attach_to_messages(
    tx: &Connection,
    conversation: ConversationId,
    messages: &mut [&mut Message],
) -> Result<(), Failure> {
    let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
        return Ok(());
    };
    let mut by_seq = files_in_range(tx, conversation, first.seq, last.seq)?;
    if by_seq.is_empty() {
        return Ok(());
    }
    for message in messages.iter_mut() {
        message.files = by_seq.remove(&message.seq).unwrap_or_default();
    }
    Ok(())
}

/// Fills the files of one message.
pub(super) fn attach_to_message(tx: &Connection, message: &mut Message) -> Result<(), Failure> {
    let mut by_seq = files_in_range(tx, message.conversation_id, message.seq, message.seq)?;
    message.files = by_seq.remove(&message.seq).unwrap_or_default();
    Ok(())
}

pub(super) fn expire_uploads(
    tx: &Connection,
    created_before: OffsetDateTime,
    limit: u16,
) -> Result<u64, Failure> {
    let now = super::codec::now_nanos()?;
    remove_files(
        tx,
        "f.conversation_id IS NULL AND f.created_at_ns < ?1 LIMIT ?2",
        &[&nanos_bound(created_before), &i64::from(limit)],
        now,
    )
}

pub(super) fn claim_unused_blobs(
    tx: &Connection,
    unused_before: OffsetDateTime,
    limit: u16,
) -> Result<Vec<BlobKey>, Failure> {
    let now = super::codec::now_nanos()?;
    let keys = tx
        .prepare_cached(
            "SELECT key FROM blobs
             WHERE refs = 0 AND coalesce(claimed_at_ns, unused_since_ns) < ?1
             LIMIT ?2",
        )?
        .query_map(
            params![nanos_bound(unused_before), i64::from(limit)],
            |row| blob_key(row, 0),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut claim = tx.prepare_cached("UPDATE blobs SET claimed_at_ns = ?2 WHERE key = ?1")?;
    for key in &keys {
        claim.execute(params![key.as_str(), now])?;
    }
    Ok(keys)
}

pub(super) fn forget_blobs(tx: &Connection, keys: &[BlobKey]) -> Result<(), Failure> {
    let mut forget = tx.prepare_cached(
        "DELETE FROM blobs WHERE key = ?1 AND refs = 0 AND claimed_at_ns IS NOT NULL",
    )?;
    for key in keys {
        forget.execute(params![key.as_str()])?;
    }
    Ok(())
}
