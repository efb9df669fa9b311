//! Files on DynamoDB: `files` (an upload, and the message it is attached to, if any) and
//! `blobs` (how many files use each blob, and since when none does), with each owner's
//! total in `files_bytes` on their `users` item (the quota, kept by the same transactions
//! instead of summing a query).
//!
//! Where each fact lives, and why:
//! - A file item, keyed by `id`: its infos, owner, blob keys, `created_at`, and once
//!   attached `conversation_id`, `seq` and `position`. While it is not attached it carries
//!   `unattached = "1"`, the hash key of the sparse `unattached` index (range
//!   `created_at`, keys only): the expiry's candidates, one Query. Every upload not yet
//!   sent sits in that one index partition; uploads come far below its 1,000 writes a
//!   second.
//! - A message item holds its files' infos (`files`, in order), written in the
//!   transaction that stores the message and attaches the files: history needs no other
//!   read, and the infos cannot differ from the attachments. The file items stay the
//!   authority for reading a file (`file`: a strongly consistent GetItem, then the
//!   reader's member item, never an index) and for the blobs a delete releases.
//! - Attaching is an update of each file item inside the conversation's append
//!   transaction (guarded by `last_seq`), conditioned on the file being unattached and the
//!   sender's: a file attached meanwhile by a message of another conversation, or expired,
//!   cancels the transaction, which is read again and judged again (`conflict`, or
//!   `not_found`). Deleting the message deletes its file items in its own transaction,
//!   with one update per blob (`ADD refs :minus`) and one of the owner's `files_bytes`.
//! - A blob item, keyed by `key`: `refs` (files that use it, counted with `ADD`), and
//!   while no file may use it `idle = "1"` with `idle_since`, the keys of the sparse
//!   `idle` index (refs projected): every release sets them (the time of the last release:
//!   once `refs` is 0, when it fell to 0), every use removes them, so the index holds the
//!   blobs without users and, until their next use, the few released by one of several.
//!   The janitor queries it for `idle_since` before its bound and `refs = 0`, and claims
//!   each candidate by a conditional update of the table (`claimed_at`, and `idle_since`
//!   moved to the claim's time: a claim left unfinished is found again by the same query
//!   once it is old). An upload is refused while `claimed_at` is there. No scan: the
//!   index is read as far as the candidates go.
//!
//! Cost (items under 1 KB; a transactional write is 2 write units): an upload is one
//! transaction of 3–4 items (the file, the owner's total, 1–2 blobs) and a write of the
//! `unattached` index; attaching adds one item per file to its message's transaction (≤ 10
//! of the 100 it may hold), deleting the message up to 31 (each file, each distinct blob,
//! the owner's total); reading a file is 2 strongly consistent reads.
//!
//! Reads that authorise (`file`) or feed the rules (the file items an append attaches)
//! are strongly consistent reads of the tables; the two indexes only find candidates, each
//! checked again by the condition of the write that acts on it.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use parlor_core::blobs::BlobKey;
use parlor_core::error::BackendError;
use parlor_core::files::{Attachment, FileInfo, ImageSize, StoredFile, Thumbnail, UploadRecorded};
use parlor_core::ids::{FileId, UserId};
use parlor_core::storage::{nanos, nanos_bound};
use time::OffsetDateTime;

use super::DynamoStore;
use super::calls::{self, Query, Transacted};
use super::codec::{Item, Reader, item, n, s};
use super::error::{sdk, unreadable};
use super::tables::{BLOBS_IDLE, FILES_UNATTACHED};

/// The value of `unattached` on a file item not yet attached: the sparse index's one key.
const UNATTACHED: &str = "1";
/// The value of `idle` on a blob item that may have no users: its sparse index's one key.
const IDLE: &str = "1";
/// Rounds of a transaction of files cancelled only by other transactions in the way.
const CONFLICT_ROUNDS_MAX: u32 = 16;

fn blob_key(table: &str, text: &str) -> Result<BlobKey, BackendError> {
    BlobKey::parse(text).map_err(|error| unreadable(table, format!("blob key {text}: {error}")))
}

pub(super) fn file_key(id: FileId) -> Item {
    item([("id", s(id.to_string()))])
}

fn user_key(user: UserId) -> Item {
    item([("id", s(user.to_string()))])
}

fn blob_item_key(key: &BlobKey) -> Item {
    item([("key", s(key.as_str()))])
}

/// A file's infos as a map: on a message item (its `files` list).
pub(super) fn info_value(info: &FileInfo) -> AttributeValue {
    let mut map = item([
        ("id", s(info.id.to_string())),
        ("name", s(info.name.clone())),
        ("type", s(info.content_type.clone())),
        ("size", n(info.size)),
    ]);
    if let Some(image) = info.image {
        map.insert("width".into(), n(image.width));
        map.insert("height".into(), n(image.height));
    }
    AttributeValue::M(map)
}

pub(super) fn info_of(table: &str, value: &AttributeValue) -> Result<FileInfo, BackendError> {
    let AttributeValue::M(map) = value else {
        return Err(unreadable(table, "a file is not a map"));
    };
    let r = Reader::new(table, map);
    let image = match (r.opt_n("width")?, r.opt_n("height")?) {
        (Some(width), Some(height)) => Some(ImageSize { width, height }),
        _ => None,
    };
    Ok(FileInfo {
        id: r.id("id")?,
        name: r.s("name")?.to_owned(),
        content_type: r.s("type")?.to_owned(),
        size: r.n("size")?,
        image,
    })
}

/// A file item of a stored file (attached or not, as `file.attached_to` says; the
/// position among its message's files is `position`).
pub(super) fn file_item(file: &StoredFile, position: u32) -> Result<Item, BackendError> {
    let info = &file.info;
    let created_at =
        nanos(file.created_at).map_err(|error| BackendError::rejected(error.to_string()))?;
    let mut item = item([
        ("id", s(info.id.to_string())),
        ("owner", s(file.owner.to_string())),
        ("name", s(info.name.clone())),
        ("content_type", s(info.content_type.clone())),
        ("size", n(info.size)),
        ("blob", s(file.blob.as_str())),
        ("created_at", n(created_at)),
    ]);
    if let Some(image) = info.image {
        item.insert("width".into(), n(image.width));
        item.insert("height".into(), n(image.height));
    }
    if let Some(thumbnail) = &file.thumbnail {
        item.insert("thumbnail_blob".into(), s(thumbnail.blob.as_str()));
        item.insert("thumbnail_type".into(), s(thumbnail.content_type.clone()));
        item.insert("thumbnail_size".into(), n(thumbnail.size));
    }
    match file.attached_to {
        Some(at) => {
            item.insert("conversation_id".into(), s(at.conversation_id.to_string()));
            item.insert("seq".into(), n(at.seq));
            item.insert("position".into(), n(position));
        }
        None => {
            item.insert("unattached".into(), s(UNATTACHED));
        }
    }
    Ok(item)
}

pub(super) fn file_of(table: &str, found: &Item) -> Result<StoredFile, BackendError> {
    let r = Reader::new(table, found);
    let image = match (r.opt_n("width")?, r.opt_n("height")?) {
        (Some(width), Some(height)) => Some(ImageSize { width, height }),
        _ => None,
    };
    let thumbnail = match r.opt_s("thumbnail_blob")? {
        Some(blob) => Some(Thumbnail {
            blob: blob_key(table, blob)?,
            content_type: r.s("thumbnail_type")?.to_owned(),
            size: r.n("thumbnail_size")?,
        }),
        None => None,
    };
    let attached_to = match r.opt_s("conversation_id")? {
        Some(_) => Some(Attachment {
            conversation_id: r.id("conversation_id")?,
            seq: r.n("seq")?,
        }),
        None => None,
    };
    Ok(StoredFile {
        info: FileInfo {
            id: r.id("id")?,
            name: r.s("name")?.to_owned(),
            content_type: r.s("content_type")?.to_owned(),
            size: r.n("size")?,
            image,
        },
        owner: r.id("owner")?,
        blob: blob_key(table, r.s("blob")?)?,
        thumbnail,
        created_at: super::codec::time_of_nanos(r.n("created_at")?),
        attached_to,
    })
}

/// How many files more (`delta` > 0) or fewer use each blob of `deltas`.
pub(super) fn blob_updates(
    store: &DynamoStore,
    deltas: &HashMap<BlobKey, i64>,
    now_ns: i64,
) -> Result<Vec<TransactWriteItem>, BackendError> {
    deltas
        .iter()
        .filter(|(_, delta)| **delta != 0)
        .map(|(key, delta)| release_or_use(store, key, *delta, now_ns))
        .collect()
}

/// An update of one blob's count. A release puts it in the `idle` index (since now); a
/// use takes it out, and is refused while the blob is claimed by the janitor.
fn release_or_use(
    store: &DynamoStore,
    key: &BlobKey,
    delta: i64,
    now_ns: i64,
) -> Result<TransactWriteItem, BackendError> {
    if delta > 0 {
        calls::update(
            &store.tables.blobs,
            blob_item_key(key),
            "ADD refs :delta REMOVE idle, idle_since",
            Some("attribute_not_exists(claimed_at)"),
            &[],
            vec![(":delta", n(delta))],
        )
    } else {
        calls::update(
            &store.tables.blobs,
            blob_item_key(key),
            "ADD refs :delta SET idle = :idle, idle_since = :now",
            None,
            &[],
            vec![
                (":delta", n(delta)),
                (":idle", s(IDLE)),
                (":now", n(now_ns)),
            ],
        )
    }
}

/// An update of the owner's total of file bytes by `delta`.
pub(super) fn bytes_update(
    store: &DynamoStore,
    user: UserId,
    delta: i64,
) -> Result<TransactWriteItem, BackendError> {
    calls::update(
        &store.tables.users,
        user_key(user),
        "ADD files_bytes :delta",
        None,
        &[],
        vec![(":delta", n(delta))],
    )
}

/// Adds `file`'s blobs, `sign` times each, to `deltas` (a file may use one blob twice).
pub(super) fn count_blobs(deltas: &mut HashMap<BlobKey, i64>, file: &StoredFile, sign: i64) {
    for key in file.blobs() {
        *deltas.entry(key.clone()).or_default() += sign;
    }
}

/// One transaction: put the file item (its id free), add its size to the owner's total
/// (conditioned on the quota), and count one more user of each blob (conditioned on no
/// claim). A cancellation says which condition failed, by position.
pub(super) async fn record_upload(
    store: &DynamoStore,
    file: &StoredFile,
    quota_bytes: u64,
) -> Result<UploadRecorded, BackendError> {
    if file.attached_to.is_some() {
        return Err(BackendError::rejected("an upload is recorded unattached"));
    }
    let size = i64::try_from(file.info.size)
        .map_err(|_| BackendError::rejected(format!("file size {}", file.info.size)))?;
    let Some(room) = quota_bytes.checked_sub(file.info.size) else {
        return over_quota(store, file.owner).await;
    };
    let mut deltas = HashMap::new();
    count_blobs(&mut deltas, file, 1);
    let mut conflicts = 0;
    loop {
        let mut items = vec![
            calls::put(
                &store.tables.files,
                file_item(file, 0)?,
                Some("attribute_not_exists(id)"),
                &[],
                Vec::new(),
            )?,
            calls::update(
                &store.tables.users,
                user_key(file.owner),
                "ADD files_bytes :size",
                Some(
                    "attribute_exists(id) AND \
                     (attribute_not_exists(files_bytes) OR files_bytes <= :room)",
                ),
                &[],
                vec![(":size", n(size)), (":room", n(room))],
            )?,
        ];
        items.extend(blob_updates(store, &deltas, 0)?);
        let reasons = match calls::transact(&store.client, "record upload", items).await? {
            Transacted::Committed => return Ok(UploadRecorded::Recorded),
            Transacted::Cancelled(reasons) => reasons,
        };
        let failed =
            |index: usize| reasons.get(index).map(String::as_str) == Some("ConditionalCheckFailed");
        if failed(0) {
            return Err(BackendError::rejected(format!(
                "file id {} is taken",
                file.info.id
            )));
        }
        if reasons
            .iter()
            .skip(2)
            .any(|code| code == "ConditionalCheckFailed")
        {
            return Ok(UploadRecorded::BlobBeingDeleted);
        }
        if failed(1) {
            match used_bytes(store, file.owner).await? {
                None => {
                    return Err(BackendError::rejected(format!("no user {}", file.owner)));
                }
                Some(used) if used.saturating_add(file.info.size) > quota_bytes => {
                    return Ok(UploadRecorded::OverQuota { used });
                }
                // Room was made meanwhile: try again.
                Some(_) => {}
            }
        }
        conflicts += 1;
        if conflicts >= CONFLICT_ROUNDS_MAX {
            return Err(BackendError::unavailable(format!(
                "record upload: {conflicts} transactions in a row cancelled (last: {reasons:?})"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(5 << conflicts.min(5))).await;
    }
}

async fn over_quota(store: &DynamoStore, owner: UserId) -> Result<UploadRecorded, BackendError> {
    match used_bytes(store, owner).await? {
        Some(used) => Ok(UploadRecorded::OverQuota { used }),
        None => Err(BackendError::rejected(format!("no user {owner}"))),
    }
}

/// The owner's total of file bytes; `None` if there is no such user.
async fn used_bytes(store: &DynamoStore, owner: UserId) -> Result<Option<u64>, BackendError> {
    let found = calls::get(&store.client, &store.tables.users, user_key(owner)).await?;
    found
        .map(|found| Reader::new(&store.tables.users, &found).n_or_zero("files_bytes"))
        .transpose()
}

/// The file item, read strongly consistently.
async fn stored_file(store: &DynamoStore, id: FileId) -> Result<Option<StoredFile>, BackendError> {
    calls::get(&store.client, &store.tables.files, file_key(id))
        .await?
        .map(|found| file_of(&store.tables.files, &found))
        .transpose()
}

/// Its owner's while unattached; once attached, its conversation's members' now (their
/// member item, read strongly consistently).
pub(super) async fn file(
    store: &DynamoStore,
    user: UserId,
    id: FileId,
) -> Result<Option<StoredFile>, BackendError> {
    let Some(file) = stored_file(store, id).await? else {
        return Ok(None);
    };
    let readable = match file.attached_to {
        None => file.owner == user,
        Some(at) => super::conversations::is_member(store, at.conversation_id, user).await?,
    };
    Ok(readable.then_some(file))
}

/// Candidates from the `unattached` index (eventually consistent: a few more than
/// `limit`, for those just attached or removed), each read again from the table and
/// removed in a transaction of its own conditioned on still being unattached.
pub(super) async fn expire_uploads(
    store: &DynamoStore,
    created_before: OffsetDateTime,
    limit: u16,
) -> Result<u64, BackendError> {
    if limit == 0 {
        return Ok(0);
    }
    let before = nanos_bound(created_before);
    let wanted = usize::from(limit) + 16;
    let query = Query {
        table: &store.tables.files,
        index: Some(FILES_UNATTACHED),
        key_condition: "unattached = :one AND created_at < :before",
        filter: None,
        projection: None,
        names: &[],
        values: vec![(":one", s(UNATTACHED)), (":before", n(before))],
        forward: true,
        page_items: Some(wanted as i32),
    };
    let candidates = query
        .run(&store.client, |items| items.len() >= wanted)
        .await?;
    let ids: Vec<FileId> = candidates
        .iter()
        .map(|found| Reader::new(&store.tables.files, found).id("id"))
        .collect::<Result<_, _>>()?;
    let found = calls::batch_get(
        &store.client,
        &store.tables.files,
        ids.iter().map(|id| file_key(*id)).collect(),
    )
    .await?;
    let mut by_id: HashMap<FileId, StoredFile> = HashMap::new();
    for found in &found {
        let file = file_of(&store.tables.files, found)?;
        by_id.insert(file.info.id, file);
    }
    let now_ns = nanos_bound(OffsetDateTime::now_utc());
    let mut removed = 0;
    for id in ids {
        if removed >= u64::from(limit) {
            break;
        }
        let Some(file) = by_id.get(&id) else { continue };
        if file.attached_to.is_some() || nanos_bound(file.created_at) >= before {
            continue;
        }
        if remove_upload(store, file, now_ns).await? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Deletes an upload never attached, releasing its blobs and its bytes; `false` if it was
/// attached or removed meanwhile.
async fn remove_upload(
    store: &DynamoStore,
    file: &StoredFile,
    now_ns: i64,
) -> Result<bool, BackendError> {
    let size = i64::try_from(file.info.size).unwrap_or(i64::MAX);
    let mut deltas = HashMap::new();
    count_blobs(&mut deltas, file, -1);
    for _ in 0..CONFLICT_ROUNDS_MAX {
        let mut items = vec![
            calls::delete_if(
                &store.tables.files,
                file_key(file.info.id),
                "attribute_exists(id) AND attribute_not_exists(conversation_id)",
                &[],
                Vec::new(),
            )?,
            bytes_update(store, file.owner, -size)?,
        ];
        items.extend(blob_updates(store, &deltas, now_ns)?);
        match calls::transact(&store.client, "expire upload", items).await? {
            Transacted::Committed => return Ok(true),
            Transacted::Cancelled(reasons)
                if reasons.first().map(String::as_str) == Some("ConditionalCheckFailed") =>
            {
                return Ok(false);
            }
            Transacted::Cancelled(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
    Err(BackendError::unavailable(format!(
        "expire upload {}: transactions kept being cancelled",
        file.info.id
    )))
}

/// What makes a blob claimable: no file uses it, unused (or claimed by a janitor that did
/// not finish: a claim moves `idle_since`) since before `:before`.
const CLAIMABLE: &str = "refs = :zero AND idle_since < :before";

/// Candidates from the `idle` index (eventually consistent), then a conditional update
/// of each in the table (`claimed_at`), so that a blob used again or claimed by another
/// janitor meanwhile is left alone.
pub(super) async fn claim_unused_blobs(
    store: &DynamoStore,
    unused_before: OffsetDateTime,
    limit: u16,
) -> Result<Vec<BlobKey>, BackendError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let before = nanos_bound(unused_before);
    let table = &store.tables.blobs;
    let wanted = usize::from(limit);
    let query = Query {
        table,
        index: Some(BLOBS_IDLE),
        key_condition: "idle = :idle AND idle_since < :before",
        filter: Some("refs = :zero"),
        projection: None,
        names: &[],
        values: vec![(":idle", s(IDLE)), (":before", n(before)), (":zero", n(0))],
        forward: true,
        page_items: Some(i32::from(limit)),
    };
    let found = query
        .run(&store.client, |items| items.len() >= wanted)
        .await?;
    let now_ns = nanos_bound(OffsetDateTime::now_utc());
    let mut claimed = Vec::with_capacity(wanted);
    for found in found.iter().take(wanted) {
        let key = blob_key(table, Reader::new(table, found).s("key")?)?;
        let result = store
            .client
            .update_item()
            .table_name(table)
            .set_key(Some(blob_item_key(&key)))
            .update_expression("SET claimed_at = :now, idle_since = :now")
            .condition_expression(CLAIMABLE)
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":before", n(before))
            .expression_attribute_values(":now", n(now_ns))
            .send()
            .await;
        match result {
            Ok(_) => claimed.push(key),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) => {}
            Err(error) => return Err(sdk("claim blob", error)),
        }
    }
    Ok(claimed)
}

/// Deletes each claimed blob's item (still unused and claimed; otherwise left alone).
pub(super) async fn forget_blobs(
    store: &DynamoStore,
    keys: &[BlobKey],
) -> Result<(), BackendError> {
    for key in keys {
        let result = store
            .client
            .delete_item()
            .table_name(&store.tables.blobs)
            .set_key(Some(blob_item_key(key)))
            .condition_expression("refs = :zero AND attribute_exists(claimed_at)")
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) => {}
            Err(error) => return Err(sdk("forget blob", error)),
        }
    }
    Ok(())
}
