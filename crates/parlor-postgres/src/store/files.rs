//! Files in PostgreSQL: `files` (an upload, and the message it is attached to, if any) and
//! `blobs` (how many files use each blob, since when none does, and when a janitor claimed
//! it). Attaching and removing happen in the transaction of the event that causes them (see
//! [`super::events`]), so a blob's count never drifts from the files that use it; a
//! message's files are read with the message itself ([`super::codec::event_fields`]).
//!
//! Concurrency, under READ COMMITTED, for any number of processes:
//! - A blob's count moves only by `UPDATE … SET refs = refs ± n` or an upsert, which apply
//!   to the newest committed row whatever the statement's snapshot, under its row lock.
//!   Every transaction that takes several blob rows takes them in key order (sorted here by
//!   byte, as the `COLLATE "C"` keys sort there), so two of them never deadlock on blobs.
//! - Claiming excludes recording: [`record_upload`] counts its blobs with an upsert whose
//!   update applies only to an unclaimed row, and [`claim_unused_blobs`] claims only rows
//!   with no user that no one else holds locked (`FOR UPDATE SKIP LOCKED`, which re-checks
//!   the condition on the newest row). Whichever locks the row first wins: an upload that
//!   counted itself first (committed or not) is skipped by the claim, and sets `refs` above
//!   0 so no later claim takes the blob; a claim first (committed: it is one statement)
//!   makes the upload see `claimed_at_ns` once it has the lock, and record nothing. A blob
//!   being forgotten (deleted) makes the upload wait, then insert it afresh.
//! - An upload is attached at most once: the append locks the files it attaches (`FOR
//!   UPDATE`, in id order) before the rules look at them, so a concurrent attach of the same
//!   file (the same owner, another conversation) or its expiry comes before or after as a
//!   whole: after it, the rules see the file attached (`conflict`) or gone (`not_found`).
//!   Expiry skips the uploads an append holds locked.
//! - The quota is exact: an upload takes a transaction-scoped advisory lock on its owner
//!   before it sums the owner's sizes, so two uploads of one owner take turns (each reads
//!   the other's file once committed). Only uploads take it; appends and the janitor never
//!   wait for it. Removals need no lock: they only make room.

use std::collections::{BTreeMap, HashMap};

use deadpool_postgres::{GenericClient, Transaction};
use futures::future::{try_join, try_join4};
use parlor_core::blobs::BlobKey;
use parlor_core::files::{
    Attachment, FileFacts, FileInfo, ImageSize, StoredFile, Thumbnail, UploadRecorded,
};
use parlor_core::ids::{ConversationId, FileId, Seq, UserId};
use parlor_core::storage::{nanos, nanos_bound, seq_param};
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use super::PgStore;
use super::codec::{Nanos, SeqColumn, now_nanos, pixels, size_param, stored_size};
use super::failure::Failure;

/// The first key of the advisory locks on an owner's uploads ("file" in ASCII); the second
/// is [`owner_lock`]. Two-key advisory locks never collide with the migration's one-key
/// lock.
const UPLOAD_LOCK: i32 = 0x6669_6c65;

/// The columns [`file_row`] reads, of `files f`.
macro_rules! file_columns {
    () => {
        "f.id, f.owner_id, f.name, f.content_type, f.size, f.width, f.height, f.blob,
         f.thumbnail_blob, f.thumbnail_type, f.thumbnail_size, f.created_at_ns,
         f.conversation_id, f.seq"
    };
}

/// Locks the rows of `blobs` with these keys in key order (`$1`, sorted), before a write
/// to several of them.
pub(super) const LOCK_BLOBS: &str =
    "SELECT key FROM blobs WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE";

/// One file less uses each blob `$1` for each of `$2`; a blob nobody uses is unused from
/// `$3`.
pub(super) const RELEASE_BLOBS: &str = "UPDATE blobs b
     SET refs = b.refs - v.n,
         unused_since_ns = CASE WHEN b.refs = v.n THEN $3::int8 ELSE b.unused_since_ns END
     FROM unnest($1::text[], $2::int8[]) AS v (key, n)
     WHERE b.key = v.key";

/// Attaches the files `$3` (at the places `$4`) of the owner `$5` to the message `$2` of
/// conversation `$1`.
pub(super) const ATTACH: &str = "UPDATE files f
     SET conversation_id = $1, seq = $2, position = v.position
     FROM unnest($3::uuid[], $4::int4[]) AS v (id, position)
     WHERE f.id = v.id AND f.conversation_id IS NULL AND f.owner_id = $5";

/// Removes the files of the message `$2` of conversation `$1`.
pub(super) const REMOVE_OF_MESSAGE: &str =
    "DELETE FROM files WHERE conversation_id = $1 AND seq = $2";

/// Distinct blob keys, sorted by byte (the order blob rows are locked in), each with how
/// many files of a write use it: two files (or a file and its thumbnail) may share a blob.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct BlobCounts {
    pub(super) keys: Vec<String>,
    pub(super) counts: Vec<i64>,
}

impl BlobCounts {
    pub(super) fn of<'a>(keys: impl IntoIterator<Item = &'a str>) -> BlobCounts {
        let mut counted: BTreeMap<&str, i64> = BTreeMap::new();
        for key in keys {
            *counted.entry(key).or_default() += 1;
        }
        let mut blobs = BlobCounts::default();
        for (key, count) in counted {
            blobs.keys.push(key.to_owned());
            blobs.counts.push(count);
        }
        blobs
    }

    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The second key of the advisory lock on `owner`'s uploads: its id folded to 32 bits. Two
/// owners that fold alike only take turns.
fn owner_lock(owner: UserId) -> i32 {
    let bits = owner.0.as_u128();
    let folded = (bits ^ (bits >> 64)) as u64;
    (folded ^ (folded >> 32)) as u32 as i32
}

fn blob_key(text: &str) -> Result<BlobKey, Failure> {
    BlobKey::parse(text).map_err(|error| Failure::Unreadable(format!("blob key: {error}")))
}

/// A file of [`file_columns`].
fn file_row(row: &Row) -> Result<StoredFile, Failure> {
    let image = match (
        row.try_get::<_, Option<i64>>(5)?,
        row.try_get::<_, Option<i64>>(6)?,
    ) {
        (Some(width), Some(height)) => Some(ImageSize {
            width: pixels(width)?,
            height: pixels(height)?,
        }),
        _ => None,
    };
    let thumbnail = match row.try_get::<_, Option<String>>(9)? {
        Some(content_type) => Some(Thumbnail {
            blob: blob_key(row.try_get(8)?)?,
            content_type,
            size: stored_size(row.try_get(10)?)?,
        }),
        None => None,
    };
    let attached_to = match row.try_get::<_, Option<Uuid>>(12)? {
        Some(conversation) => Some(Attachment {
            conversation_id: ConversationId(conversation),
            seq: row.try_get::<_, SeqColumn>(13)?.0,
        }),
        None => None,
    };
    Ok(StoredFile {
        info: FileInfo {
            id: FileId(row.try_get(0)?),
            name: row.try_get(2)?,
            content_type: row.try_get(3)?,
            size: stored_size(row.try_get(4)?)?,
            image,
        },
        owner: UserId(row.try_get(1)?),
        blob: blob_key(row.try_get(7)?)?,
        thumbnail,
        created_at: row.try_get::<_, Nanos>(11)?.0,
        attached_to,
    })
}

/// Records `file` and counts its blobs, in one transaction under the owner's upload lock.
pub(super) async fn record_upload(
    store: &PgStore,
    file: &StoredFile,
    quota_bytes: u64,
) -> Result<UploadRecorded, Failure> {
    let info = &file.info;
    let size = size_param(info.size)?;
    let created_at_ns = nanos(file.created_at)?;
    let width = info.image.map(|image| i64::from(image.width));
    let height = info.image.map(|image| i64::from(image.height));
    let thumbnail = file.thumbnail.as_ref();
    let thumbnail_blob = thumbnail.map(|thumb| thumb.blob.as_str());
    let thumbnail_type = thumbnail.map(|thumb| thumb.content_type.as_str());
    let thumbnail_size = thumbnail.map(|thumb| size_param(thumb.size)).transpose()?;
    let blobs = BlobCounts::of(file.blobs().map(BlobKey::as_str));

    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let (lock, used, insert, count_blobs) = try_join4(
        tx.prepare_cached("SELECT pg_advisory_xact_lock($1, $2)"),
        // What the owner's files take, attached or not.
        tx.prepare_cached("SELECT coalesce(sum(size), 0)::int8 FROM files WHERE owner_id = $1"),
        tx.prepare_cached(
            "INSERT INTO files (id, owner_id, name, content_type, size, width, height, blob,
                                thumbnail_blob, thumbnail_type, thumbnail_size, created_at_ns)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        ),
        // The keys come sorted, and an INSERT takes its rows in order: blob rows are locked
        // in key order. The update (and so RETURNING) skips a claimed blob, but it is locked
        // all the same, so a claim can neither be under way nor start until we commit.
        tx.prepare_cached(
            "INSERT INTO blobs (key, refs)
             SELECT * FROM unnest($1::text[], $2::int8[])
             ON CONFLICT (key) DO UPDATE
                 SET refs = blobs.refs + excluded.refs, unused_since_ns = NULL
                 WHERE blobs.claimed_at_ns IS NULL
             RETURNING key",
        ),
    )
    .await?;
    // Sent together and run in order: the sum reads what the previous holder of the lock
    // committed (each statement reads the newest snapshot).
    let (_, used) = try_join(
        async {
            Ok::<_, Failure>(
                tx.execute(&lock, &[&UPLOAD_LOCK, &owner_lock(file.owner)])
                    .await?,
            )
        },
        async { Ok(tx.query_one(&used, &[&file.owner.0]).await?) },
    )
    .await?;
    let used = stored_size(used.try_get(0)?)?;
    if used.saturating_add(info.size) > quota_bytes {
        tx.rollback().await?;
        return Ok(UploadRecorded::OverQuota { used });
    }
    // An id taken or an owner unknown fails the insert (class 23): `Rejected`.
    let (_, counted) = try_join(
        async {
            Ok::<_, Failure>(
                tx.execute(
                    &insert,
                    &[
                        &info.id.0,
                        &file.owner.0,
                        &info.name,
                        &info.content_type,
                        &size,
                        &width,
                        &height,
                        &file.blob.as_str(),
                        &thumbnail_blob,
                        &thumbnail_type,
                        &thumbnail_size,
                        &created_at_ns,
                    ],
                )
                .await?,
            )
        },
        async {
            Ok(tx
                .query(&count_blobs, &[&blobs.keys, &blobs.counts])
                .await?)
        },
    )
    .await?;
    if counted.len() != blobs.keys.len() {
        tx.rollback().await?;
        return Ok(UploadRecorded::BlobBeingDeleted);
    }
    tx.commit().await?;
    Ok(UploadRecorded::Recorded)
}

/// The file, if `user` may read it: attached to a message of a conversation they are a
/// member of, or their own upload not attached yet.
pub(super) async fn file(
    store: &PgStore,
    user: UserId,
    id: FileId,
) -> Result<Option<StoredFile>, Failure> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached(concat!(
            "SELECT ",
            file_columns!(),
            " FROM files f
              WHERE f.id = $1 AND (
                  (f.conversation_id IS NULL AND f.owner_id = $2)
                  OR EXISTS (SELECT 1 FROM members m
                             WHERE m.conversation_id = f.conversation_id AND m.user_id = $2))"
        ))
        .await?;
    let row = client.query_opt(&statement, &[&id.0, &user.0]).await?;
    row.as_ref().map(file_row).transpose()
}

/// Whether [`attachable`] locks the files it reads.
#[derive(Clone, Copy)]
pub(super) enum Lock {
    /// Inside the append's transaction: held until it commits.
    ForUpdate,
    /// The gateway's check, a moment's answer.
    None,
}

/// The files with these ids that exist, as they are now; locked with [`Lock::ForUpdate`]
/// (in id order, so two appends that share files wait instead of deadlocking). No query
/// for no ids.
pub(super) async fn attachable(
    client: &impl GenericClient,
    ids: &[FileId],
    lock: Lock,
) -> Result<HashMap<FileId, StoredFile>, Failure> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = match lock {
        Lock::ForUpdate => concat!(
            "SELECT ",
            file_columns!(),
            " FROM files f WHERE f.id = ANY($1::uuid[]) ORDER BY f.id FOR UPDATE"
        ),
        Lock::None => concat!(
            "SELECT ",
            file_columns!(),
            " FROM files f WHERE f.id = ANY($1::uuid[])"
        ),
    };
    let statement = client.prepare_cached(sql).await?;
    let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    let rows = client.query(&statement, &[&ids]).await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        let file = file_row(row)?;
        found.insert(file.info.id, file);
    }
    Ok(found)
}

/// What the rules need of each file a message attaches, in the message's order.
pub(super) fn facts(ids: &[FileId], found: &HashMap<FileId, StoredFile>) -> Vec<FileFacts> {
    ids.iter()
        .map(|id| {
            let file = found.get(id);
            FileFacts {
                id: *id,
                owner: file.map(|file| file.owner),
                attached: file.is_some_and(|file| file.attached_to.is_some()),
            }
        })
        .collect()
}

/// The blobs the files of the message at `seq` use (none for `None`), read before a delete
/// that removes them. The conversation is locked: its messages' files stay as read.
pub(super) async fn blobs_of_message(
    tx: &Transaction<'_>,
    conversation: ConversationId,
    seq: Option<Seq>,
) -> Result<BlobCounts, Failure> {
    let Some(seq) = seq else {
        return Ok(BlobCounts::default());
    };
    let statement = tx
        .prepare_cached(
            "SELECT f.blob, f.thumbnail_blob FROM files f
             WHERE f.conversation_id = $1 AND f.seq = $2",
        )
        .await?;
    let rows = tx
        .query(&statement, &[&conversation.0, &seq_param(seq)])
        .await?;
    let mut keys = Vec::with_capacity(rows.len() * 2);
    for row in &rows {
        keys.push(row.try_get::<_, String>(0)?);
        keys.extend(row.try_get::<_, Option<String>>(1)?);
    }
    Ok(BlobCounts::of(keys.iter().map(String::as_str)))
}

/// Releases `blobs` inside `tx`: locked in key order, then counted down, in one round trip.
async fn release(tx: &Transaction<'_>, blobs: &BlobCounts, now_ns: i64) -> Result<(), Failure> {
    if blobs.is_empty() {
        return Ok(());
    }
    let (lock, update) = try_join(
        tx.prepare_cached(LOCK_BLOBS),
        tx.prepare_cached(RELEASE_BLOBS),
    )
    .await?;
    try_join(
        async { Ok::<_, Failure>(tx.execute(&lock, &[&blobs.keys]).await?) },
        async {
            Ok(tx
                .execute(&update, &[&blobs.keys, &blobs.counts, &now_ns])
                .await?)
        },
    )
    .await?;
    Ok(())
}

/// Removes up to `limit` uploads never attached, created before `created_before`, oldest
/// first, and releases their blobs; how many.
pub(super) async fn expire_uploads(
    store: &PgStore,
    created_before: OffsetDateTime,
    limit: u16,
) -> Result<u64, Failure> {
    let now_ns = now_nanos()?;
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    // SKIP LOCKED: an upload an append holds (to attach it) is left to that append; the
    // lock re-checks the condition, so one attached meanwhile is left too.
    let statement = tx
        .prepare_cached(
            "DELETE FROM files WHERE id IN (
                 SELECT id FROM files
                 WHERE conversation_id IS NULL AND created_at_ns < $1
                 ORDER BY created_at_ns LIMIT $2
                 FOR UPDATE SKIP LOCKED)
             RETURNING blob, thumbnail_blob",
        )
        .await?;
    let rows = tx
        .query(
            &statement,
            &[&nanos_bound(created_before), &i64::from(limit)],
        )
        .await?;
    let mut keys = Vec::with_capacity(rows.len() * 2);
    for row in &rows {
        keys.push(row.try_get::<_, String>(0)?);
        keys.extend(row.try_get::<_, Option<String>>(1)?);
    }
    release(
        &tx,
        &BlobCounts::of(keys.iter().map(String::as_str)),
        now_ns,
    )
    .await?;
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// Claims up to `limit` blobs nobody uses, unused (or claimed by a janitor that did not
/// finish) since before `unused_before`, oldest first. One statement: see the module's
/// notes for why no upload can start using a blob as it is claimed.
pub(super) async fn claim_unused_blobs(
    store: &PgStore,
    unused_before: OffsetDateTime,
    limit: u16,
) -> Result<Vec<BlobKey>, Failure> {
    let now_ns = now_nanos()?;
    let client = store.client().await?;
    let statement = client
        .prepare_cached(
            "UPDATE blobs SET claimed_at_ns = $3
             WHERE key IN (
                 SELECT key FROM blobs
                 WHERE refs = 0 AND coalesce(claimed_at_ns, unused_since_ns) < $1
                 ORDER BY coalesce(claimed_at_ns, unused_since_ns) LIMIT $2
                 FOR UPDATE SKIP LOCKED)
               AND refs = 0
             RETURNING key",
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[&nanos_bound(unused_before), &i64::from(limit), &now_ns],
        )
        .await?;
    rows.iter().map(|row| blob_key(row.try_get(0)?)).collect()
}

/// Forgets the claimed blobs among `keys` (nobody uses them: a claim keeps it so), locked
/// in key order.
pub(super) async fn forget_blobs(store: &PgStore, keys: &[BlobKey]) -> Result<(), Failure> {
    if keys.is_empty() {
        return Ok(());
    }
    let keys = BlobCounts::of(keys.iter().map(BlobKey::as_str)).keys;
    let client = store.client().await?;
    let statement = client
        .prepare_cached(
            "DELETE FROM blobs WHERE key IN (
                 SELECT key FROM blobs
                 WHERE key = ANY($1::text[]) AND refs = 0 AND claimed_at_ns IS NOT NULL
                 ORDER BY key FOR UPDATE)",
        )
        .await?;
    client.execute(&statement, &[&keys]).await?;
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn blob_counts_are_sorted_by_byte_and_count_repeats() {
        let counts = BlobCounts::of(["b", "a", "b", "B"]);
        assert_eq!(counts.keys, ["B", "a", "b"]);
        assert_eq!(counts.counts, [1, 1, 2]);
    }

    #[test]
    fn an_owner_lock_key_depends_on_every_bit() {
        let one = UserId(Uuid::from_u128(1));
        let high = UserId(Uuid::from_u128(1 << 100));
        assert_ne!(owner_lock(one), owner_lock(UserId(Uuid::from_u128(0))));
        assert_ne!(owner_lock(high), owner_lock(UserId(Uuid::from_u128(0))));
    }
}
