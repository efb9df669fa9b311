//! [`SqliteStore`]: the embedded [`Store`], one SQLite file in WAL mode.
//!
//! Shape: one writer connection, taken in turn by every write, and a fixed pool of reader
//! connections, so that a page of history never waits behind a batch of appends. SQLite is
//! blocking, so every call runs on tokio's blocking pool; callers wait for a connection
//! asynchronously and hold a blocking thread only while they use one.
//!
//! A conversation is a log of events: one row of `events` per event of every kind
//! (message, edit, delete, reaction, member, title and role changes), beside the state the
//! events build (a message row's current body and mentions, `reactions`, `members` with
//! their roles and markers, the conversation's title).
//!
//! Invariants, all kept inside one `BEGIN IMMEDIATE` transaction per write:
//! - `events.seq` is `conversations.last_seq + 1` at insert time, whatever the kind, so per
//!   conversation the seqs are 1, 2, 3… with no gaps and no repeats.
//! - `(sender_id, client_msg_id)` is unique across kinds: a repeat returns the first event.
//! - The rules ([`rules::check`](parlor_core::rules::check)) are checked inside that
//!   transaction, per entry, on facts read there, so what an earlier entry of the same
//!   batch changed counts; a refused change stores nothing and consumes no seq. `refusal`
//!   asks the same function on the same facts, read in a read transaction.
//! - An event and what it changes are stored together or not at all.
//! - `conversations.last_message_seq` is the newest message's seq, `members_seq` the newest
//!   member or role event's.
//! - `members.last_read_seq` and `last_delivered_seq` are `<= conversations.last_seq` and
//!   never decrease; reading raises the delivered marker to the read one.
//!
//! Times are stored as unix nanoseconds (UTC) in `*_ns` integer columns: exact for every
//! `OffsetDateTime` between 1677 and 2262, and ordered as numbers. Ids are hyphenated
//! lower-case UUID text.
//!
//! Files by concern: [`connections`] (pragmas, the reader pool), [`schema`] (migrations),
//! [`append`] (a batch: duplicates, refusals, one savepoint per entry), [`facts`] (what the
//! rules need, read in SQL), [`apply`] (storing one event and applying it), [`history`]
//! (pages of messages and events in their current state), [`files`] (uploads, attachments
//! and the blobs they use), [`conversations`]
//! (conversations, members, views, markers, mute), [`users`] (users and sessions),
//! [`codec`] (values and rows in and out of SQL) and [`failure`] (error classification).
//! This file holds the store, its read and write transactions, and the [`Store`] impl that
//! runs each method's body in one of them.

mod append;
mod apply;
mod codec;
mod connections;
mod conversations;
mod facts;
mod failure;
mod files;
mod history;
mod schema;
mod search;
#[cfg(test)]
mod tests;
mod users;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use parlor_core::blobs::BlobKey;
use parlor_core::error::{ApiError, BackendError};
use parlor_core::events::Event;
use parlor_core::files::{StoredFile, UploadRecorded};
use parlor_core::ids::{ConversationId, FileId, Seq, UserId};
use parlor_core::ports::{Appended, ConversationView, NewEvent, Page, Session, Store, TokenHash};
use parlor_core::protocol::{Message, User};
use parlor_core::rules;
use parlor_core::storage::{check_direct_pair, distinct, group_members, like_prefix};
use rusqlite::{Connection, TransactionBehavior};
use time::OffsetDateTime;
use tokio::sync::{Mutex as AsyncMutex, Semaphore};

use connections::{READER_CONNECTIONS, ReaderPool, configure_reader, configure_writer};
use conversations::Marker;
use failure::{Failure, db_error, joined};
use schema::migrate;

/// The embedded [`Store`]: users, sessions, conversations with their logs of events, members
/// and their markers in one SQLite file (plus its `-wal` and `-shm` companions).
///
/// Every commit is fsynced (`synchronous=FULL`) before the call returns, so the persister
/// may acknowledge its queue as soon as [`Store::append_events`] returns `Ok`. A caller
/// that stops waiting (its future dropped) does not cancel the work: the transaction still
/// commits or rolls back as a whole, and a retried batch is then answered with duplicates.
pub struct SqliteStore {
    path: PathBuf,
    /// An async mutex so that queued writers wait without holding a blocking-pool thread,
    /// in FIFO order.
    writer: Arc<AsyncMutex<Connection>>,
    readers: Arc<ReaderPool>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the database at `path`, creating it if needed, and applies any migrations this
    /// build has that the file has not seen yet.
    ///
    /// Blocking: call it at startup or from a blocking context. Fails with `Unavailable` if
    /// the file cannot be opened or locked, and with `Rejected` if the file's schema is
    /// newer than this build knows.
    pub fn open(path: &Path) -> Result<SqliteStore, BackendError> {
        let mut writer =
            Connection::open(path).map_err(|error| db_error("open database", error))?;
        configure_writer(&writer)
            .map_err(|error| db_error("configure writer connection", error))?;
        migrate(&mut writer).map_err(|failure| failure.into_backend("migrate schema"))?;

        // Readers open after the writer so the file is already in WAL mode; each one is
        // query-only, which makes a write through a reader a loud error, not a race.
        let mut idle = Vec::with_capacity(READER_CONNECTIONS);
        for _ in 0..READER_CONNECTIONS {
            let reader = Connection::open(path)
                .map_err(|error| db_error("open reader connection", error))?;
            configure_reader(&reader)
                .map_err(|error| db_error("configure reader connection", error))?;
            idle.push(reader);
        }

        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Arc::new(AsyncMutex::new(writer)),
            readers: Arc::new(ReaderPool {
                idle: Mutex::new(idle),
                permits: Arc::new(Semaphore::new(READER_CONNECTIONS)),
            }),
        })
    }

    /// The database file this store was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` in one read transaction (one consistent snapshot) on a reader connection.
    async fn read<T, F>(&self, operation: &'static str, work: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    {
        let permit = Arc::clone(&self.readers.permits)
            .acquire_owned()
            .await
            .map_err(|error| {
                BackendError::unavailable(format!("{operation}: reader pool closed"))
                    .with_source(error)
            })?;
        let readers = Arc::clone(&self.readers);
        let task = tokio::task::spawn_blocking(move || {
            let mut reader = readers.checkout(permit).ok_or_else(|| {
                BackendError::unavailable(format!("{operation}: no idle reader connection"))
            })?;
            let run = || {
                // Deferred: the snapshot starts at the first read. Dropping the transaction
                // rolls it back, which for a read is all there is to do.
                let tx = reader.transaction()?;
                work(&tx)
            };
            run().map_err(|failure| failure.into_backend(operation))
        });
        joined(operation, task.await)
    }

    /// Runs `work` in one `BEGIN IMMEDIATE` transaction on the writer connection and commits
    /// it if `work` succeeds; otherwise nothing it did is kept.
    async fn write<T, F>(&self, operation: &'static str, work: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    {
        let mut writer = Arc::clone(&self.writer).lock_owned().await;
        let task = tokio::task::spawn_blocking(move || {
            let run = || {
                // IMMEDIATE takes the write lock up front, so a transaction never fails
                // half-way with SQLITE_BUSY when another process holds the file.
                let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let value = work(&tx)?;
                tx.commit()?;
                Ok(value)
            };
            run().map_err(|failure: Failure| failure.into_backend(operation))
        });
        joined(operation, task.await)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<Option<User>, BackendError> {
        let user = User {
            id: UserId::new(),
            username: username.to_owned(),
        };
        let password_hash = password_hash.to_owned();
        self.write("create user", move |tx| {
            users::create_user(tx, user, &password_hash)
        })
        .await
    }

    async fn user_credentials(
        &self,
        username: &str,
    ) -> Result<Option<(User, String)>, BackendError> {
        let username = username.to_owned();
        self.read("user credentials", move |tx| {
            users::user_credentials(tx, &username)
        })
        .await
    }

    async fn users_by_prefix(&self, prefix: &str, limit: u16) -> Result<Vec<User>, BackendError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let pattern = like_prefix(prefix);
        self.read("users by prefix", move |tx| {
            users::users_by_prefix(tx, &pattern, limit)
        })
        .await
    }

    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>, BackendError> {
        let ids = distinct(ids);
        self.read("users", move |tx| users::users(tx, &ids)).await
    }

    async fn set_last_seen(&self, user: UserId, at: OffsetDateTime) -> Result<(), BackendError> {
        self.write("set last seen", move |tx| {
            users::set_last_seen(tx, user, at)
        })
        .await
    }

    async fn last_seen(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(UserId, Option<OffsetDateTime>)>, BackendError> {
        let ids = distinct(users);
        self.read("last seen", move |tx| users::last_seen(tx, &ids))
            .await
    }

    async fn create_session(
        &self,
        token: TokenHash,
        user: UserId,
        expires_at: OffsetDateTime,
    ) -> Result<(), BackendError> {
        self.write("create session", move |tx| {
            users::create_session(tx, token, user, expires_at)
        })
        .await
    }

    async fn session_user(
        &self,
        token: TokenHash,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, BackendError> {
        self.read("session user", move |tx| {
            users::session_user(tx, token, now)
        })
        .await
    }

    async fn delete_session(&self, token: TokenHash) -> Result<(), BackendError> {
        self.write("delete session", move |tx| users::delete_session(tx, token))
            .await
    }

    async fn create_direct(
        &self,
        a: UserId,
        b: UserId,
    ) -> Result<(ConversationId, bool), BackendError> {
        check_direct_pair(a, b)?;
        self.write("create direct conversation", move |tx| {
            conversations::create_direct(tx, a, b)
        })
        .await
    }

    /// The creator comes first among the members, then `members` in order, each once.
    async fn create_group(
        &self,
        creator: UserId,
        title: &str,
        members: &[UserId],
    ) -> Result<ConversationId, BackendError> {
        let members = group_members(&[&[creator], members].concat())?;
        let title = title.to_owned();
        self.write("create group", move |tx| {
            conversations::create_group(tx, creator, &title, &members)
        })
        .await
    }

    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationView>, BackendError> {
        self.read("conversations of", move |tx| {
            conversations::conversation_views(tx, user, None)
        })
        .await
    }

    async fn conversation_of(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<Option<ConversationView>, BackendError> {
        self.read("conversation of", move |tx| {
            Ok(conversations::conversation_views(tx, user, Some(conversation))?.pop())
        })
        .await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.read("ping", |tx| {
            tx.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn is_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<bool, BackendError> {
        self.read("is member", move |tx| {
            conversations::is_member(tx, conversation, user)
        })
        .await
    }

    async fn members(&self, conversation: ConversationId) -> Result<Vec<UserId>, BackendError> {
        self.read("members", move |tx| {
            conversations::members(tx, conversation)
        })
        .await
    }

    async fn contacts(
        &self,
        user: UserId,
        members_max: usize,
    ) -> Result<Vec<UserId>, BackendError> {
        let members_max = i64::try_from(members_max).unwrap_or(i64::MAX);
        self.read("contacts", move |tx| {
            conversations::contacts(tx, user, members_max)
        })
        .await
    }

    /// One `BEGIN IMMEDIATE` transaction for the whole batch, fsynced on commit; if it fails,
    /// nothing of the batch is stored and the error (`Unavailable`) is returned. Per entry:
    /// a known (sender, client_msg_id) → `Duplicate` of the first event as it is now,
    /// whatever this entry asks or where; a change the rules refuse on the state as the
    /// entries before left it → `Refused` (a non-member, or a conversation that does not
    /// exist, is `not_found`); a time out of range, or a row a constraint refuses →
    /// `Rejected`; otherwise `New` with the next seq. Batches are bounded by the caller
    /// (the persister's batch size).
    async fn append_events(&self, batch: &[NewEvent]) -> Result<Vec<Appended>, BackendError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let batch = batch.to_vec();
        self.write("append events", move |tx| append::append(tx, &batch))
            .await
    }

    async fn refusal(&self, event: &NewEvent) -> Result<Option<ApiError>, BackendError> {
        let event = event.clone();
        self.read("refusal", move |tx| {
            // A repeat is a duplicate to `append_events`, whatever the rules say of it now:
            // a client resending a change whose `accepted` it lost must not be refused by
            // the state the change made (its reaction present, its message deleted).
            if append::is_stored(tx, &event)? {
                return Ok(None);
            }
            let gathered = facts::gather(tx, &event)?;
            Ok(rules::check(event.sender_id, &event.change, &gathered.facts).err())
        })
        .await
    }

    /// `after_seq` → the `limit` messages after it; else `before_seq` → the `limit` messages
    /// just below it; else the newest `limit`. Always ascending; `limit` is clamped to
    /// `1..=HISTORY_PAGE_MAX` (200) and counts messages only. An unknown conversation has no
    /// messages.
    async fn messages(
        &self,
        conversation: ConversationId,
        page: Page,
    ) -> Result<Vec<Message>, BackendError> {
        self.read("messages", move |tx| {
            history::messages_page(tx, conversation, page)
        })
        .await
    }

    /// An unknown conversation has no events.
    async fn events(
        &self,
        conversation: ConversationId,
        after_seq: Seq,
        limit: u16,
    ) -> Result<Vec<Event>, BackendError> {
        self.read("events", move |tx| {
            history::events_after(tx, conversation, after_seq, limit)
        })
        .await
    }

    /// `Rejected` if `user` is not a member of `conversation`.
    async fn mark_read(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq: Seq,
    ) -> Result<Option<Seq>, BackendError> {
        self.write("mark read", move |tx| {
            conversations::mark(tx, conversation, user, Marker::Read, seq)
        })
        .await
    }

    /// `Rejected` if `user` is not a member of `conversation`.
    async fn mark_delivered(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq: Seq,
    ) -> Result<Option<Seq>, BackendError> {
        self.write("mark delivered", move |tx| {
            conversations::mark(tx, conversation, user, Marker::Delivered, seq)
        })
        .await
    }

    async fn set_muted(
        &self,
        conversation: ConversationId,
        user: UserId,
        muted: bool,
    ) -> Result<bool, BackendError> {
        self.write("set muted", move |tx| {
            conversations::set_muted(tx, conversation, user, muted)
        })
        .await
    }

    async fn record_upload(
        &self,
        file: &StoredFile,
        quota_bytes: u64,
    ) -> Result<UploadRecorded, BackendError> {
        let file = file.clone();
        self.write("record upload", move |tx| {
            files::record_upload(tx, &file, quota_bytes)
        })
        .await
    }

    async fn file(&self, user: UserId, id: FileId) -> Result<Option<StoredFile>, BackendError> {
        self.read("file", move |tx| files::file(tx, user, id)).await
    }

    async fn expire_uploads(
        &self,
        created_before: OffsetDateTime,
        limit: u16,
    ) -> Result<u64, BackendError> {
        self.write("expire uploads", move |tx| {
            files::expire_uploads(tx, created_before, limit)
        })
        .await
    }

    async fn claim_unused_blobs(
        &self,
        unused_before: OffsetDateTime,
        limit: u16,
    ) -> Result<Vec<BlobKey>, BackendError> {
        self.write("claim unused blobs", move |tx| {
            files::claim_unused_blobs(tx, unused_before, limit)
        })
        .await
    }

    async fn forget_blobs(&self, keys: &[BlobKey]) -> Result<(), BackendError> {
        let keys = keys.to_vec();
        self.write("forget blobs", move |tx| files::forget_blobs(tx, &keys))
            .await
    }
}
