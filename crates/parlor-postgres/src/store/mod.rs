//! [`PgStore`]: the cluster [`Store`], on PostgreSQL (15 or later).
//!
//! Shape: a pool of connections; every call takes one, runs one statement or one transaction
//! on it and gives it back. Statements are prepared once per connection and cached.
//! Statements that do not need each other's results are sent together: tokio-postgres
//! pipelines the queries of one connection that are polled at the same time, so a batch of
//! appends costs a few round trips whatever its size.
//!
//! Invariants, kept inside one transaction per write, for any number of processes:
//! - A conversation is a log: `events.seq` is `conversations.last_seq + 1`, assigned while
//!   the transaction holds the conversation row locked (`FOR UPDATE`), so per conversation
//!   the seqs are 1, 2, 3… across every kind, with no gaps and no repeats. Every event
//!   takes that lock, so a conversation's events (member and role changes among them) are
//!   checked and applied one at a time, each on the state the one before left.
//! - `(sender_id, client_msg_id)` is unique across every kind: a repeat returns the first
//!   event (a message in its current state).
//! - The rules are `parlor_core::rules::check`, fed facts read inside the transaction that
//!   stores the change; a refused change stores nothing and consumes no seq.
//! - A message row holds its current state (body, mentions, `edited_at_ns`, `deleted`);
//!   each edit row keeps the body it set, until a delete erases the message and its edits.
//! - A group with members has an admin: the last admin cannot step down, and their
//!   departure promotes the longest-standing member who stays.
//! - `conversations.last_message_seq` is the newest message's seq, `members_seq` the
//!   newest member or role change's.
//! - `members.last_read_seq <= members.last_delivered_seq <= conversations.last_seq`
//!   (reading delivers), and neither marker decreases while the member stays.
//! - A file is attached to at most one message, its owner's, in the transaction that stores
//!   the message, and removed in the transaction of the message's delete; `blobs.refs` is
//!   the number of files that use the blob, and a claimed blob has none.
//!
//! Times are stored as unix nanoseconds (UTC) in `*_ns` bigint columns, as in the embedded
//! store: exact for every `OffsetDateTime` between 1677 and 2262 (`timestamptz` keeps only
//! microseconds).
//!
//! Files by concern: [`schema`] (migrations under an advisory lock), [`append`] (storing a
//! batch, and its runs of messages), [`events`] (storing one change of another kind),
//! [`facts`] (what the rules look at, and `refusal`), [`history`] (pages of messages and
//! events), [`conversations`] (conversations, members, markers, muting), [`files`]
//! (uploads, attachments and the blobs they count, and how that stays right under
//! concurrency), [`users`] (users and sessions), [`leases`] (who consumes each partition, and fencing), [`codec`] (values and rows in and out of
//! SQL) and [`failure`] (error classification). This file holds the store, its pool, and the [`Store`] impl that runs
//! each method's body and names it in its error.

mod append;
mod codec;
mod conversations;
mod events;
mod facts;
mod failure;
mod files;
mod history;
mod leases;
mod lexemes;
mod schema;
mod search;
#[cfg(test)]
mod tests;
mod users;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use parlor_core::blobs::BlobKey;
use parlor_core::error::{ApiError, BackendError};
use parlor_core::events::Event;
use parlor_core::files::{StoredFile, UploadRecorded};
use parlor_core::ids::{ConversationId, FileId, Seq, UserId};
use parlor_core::ports::{
    Appended, ConversationView, Lease, NewEvent, Page, Session, Store, TokenHash,
};
use parlor_core::protocol::{Message, User};
use parlor_core::storage::{check_direct_pair, distinct, group_members};
use time::OffsetDateTime;
use tokio_postgres::{Config, NoTls};

use failure::{Failure, run};

/// How long opening a connection may take, and how long a call waits for a free pooled
/// connection, before failing with `Unavailable`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster [`Store`]: users, sessions, conversations and their event logs, members and
/// their markers in one PostgreSQL database, shared by any number of processes.
///
/// Every commit is flushed to disk by the server before it returns (`synchronous_commit =
/// on`), so the persister may acknowledge its queue as soon as
/// [`Store::append_events`] returns `Ok`. A caller that stops waiting (its future
/// dropped) leaves a transaction that commits or rolls back as a whole; a retried batch is
/// then answered with duplicates.
pub struct PgStore {
    pool: Pool,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/dbname` or the
    /// `key=value` form) with up to `pool_size` connections, and applies any migrations
    /// this build has that the database has not seen yet. Without TLS.
    ///
    /// Fails with `Rejected` if the URL is malformed, `pool_size` is 0 or the database's
    /// schema is newer than this build knows, and with `Unavailable` if the server cannot
    /// be reached.
    pub async fn connect(url: &str, pool_size: usize) -> Result<PgStore, BackendError> {
        let config: Config = url.parse().map_err(|error| {
            BackendError::rejected(format!("connect: malformed PostgreSQL url: {error}"))
                .with_source(error)
        })?;
        PgStore::connect_with(config, pool_size).await
    }

    /// [`PgStore::connect`] with a parsed configuration.
    pub async fn connect_with(
        mut config: Config,
        pool_size: usize,
    ) -> Result<PgStore, BackendError> {
        if pool_size == 0 {
            return Err(BackendError::rejected(
                "connect: pool_size must be at least 1",
            ));
        }
        // Every pooled connection starts with synchronous_commit = on (sent at connect time,
        // so no connection can miss it): a commit returns only once its WAL is on disk, so a
        // stored message survives a crash of the server, which is what lets the persister
        // acknowledge its queue right after. A server, database or role default of `off`
        // would otherwise lose the last commits silently.
        //
        // plan_cache_mode = force_custom_plan: each execution of a prepared statement is
        // planned for the data at hand. A generic plan cached while a table was small (a
        // fresh database) scans it whole ever after: with 75 000 messages, the duplicate
        // lookup of one batch took 15 ms instead of well under one.
        //
        // idle_in_transaction_session_timeout = 5 s: a process paused or cut off in the
        // middle of a transaction (whose statements are otherwise sent back to back) would
        // hold its locks, a persister's lease row among them, for as long as it is gone,
        // and the standby's takeover would wait on it; the server ends such a transaction.
        //
        // jit = off: a batch's duplicate lookup is estimated to cost more as the events table
        // grows (its reply join is planned as a hash join over every event, never executed),
        // and past `jit_above_cost` the server compiled it on every execution: 560 ms of JIT
        // for a 0.8 ms lookup at 86,000 events, and appends fell from 5,800 to 1,300 msgs/s.
        let ours = "-c synchronous_commit=on -c plan_cache_mode=force_custom_plan \
                    -c idle_in_transaction_session_timeout=5000 -c jit=off";
        let options = match config.get_options() {
            Some(given) => format!("{given} {ours}"),
            None => ours.to_owned(),
        };
        config.options(options);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|error| {
                BackendError::rejected(format!("connect: cannot build the pool: {error}"))
                    .with_source(error)
            })?;
        let store = PgStore { pool };
        run("migrate schema", schema::migrate(&store)).await?;
        Ok(store)
    }

    async fn client(&self) -> Result<Object, Failure> {
        Ok(self.pool.get().await?)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<Option<User>, BackendError> {
        run(
            "create user",
            users::create_user(self, username, password_hash),
        )
        .await
    }

    async fn user_credentials(
        &self,
        username: &str,
    ) -> Result<Option<(User, String)>, BackendError> {
        run("user credentials", users::user_credentials(self, username)).await
    }

    async fn users_by_prefix(&self, prefix: &str, limit: u16) -> Result<Vec<User>, BackendError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        run(
            "users by prefix",
            users::users_by_prefix(self, prefix, limit),
        )
        .await
    }

    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>, BackendError> {
        let ids = distinct(ids);
        run("users", users::users(self, &ids)).await
    }

    async fn set_last_seen(&self, user: UserId, at: OffsetDateTime) -> Result<(), BackendError> {
        run("set last seen", users::set_last_seen(self, user, at)).await
    }

    async fn last_seen(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(UserId, Option<OffsetDateTime>)>, BackendError> {
        let ids = distinct(users);
        run("last seen", users::last_seen(self, &ids)).await
    }

    async fn create_session(
        &self,
        token: TokenHash,
        user: UserId,
        expires_at: OffsetDateTime,
    ) -> Result<(), BackendError> {
        run(
            "create session",
            users::create_session(self, token, user, expires_at),
        )
        .await
    }

    async fn session_user(
        &self,
        token: TokenHash,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, BackendError> {
        run("session user", users::session_user(self, token, now)).await
    }

    async fn delete_session(&self, token: TokenHash) -> Result<(), BackendError> {
        run("delete session", users::delete_session(self, token)).await
    }

    async fn create_direct(
        &self,
        a: UserId,
        b: UserId,
    ) -> Result<(ConversationId, bool), BackendError> {
        check_direct_pair(a, b)?;
        run(
            "create direct conversation",
            conversations::create_direct(self, a, b),
        )
        .await
    }

    /// The creator first, so that they are its admin (and the longest-standing member).
    async fn create_group(
        &self,
        creator: UserId,
        title: &str,
        members: &[UserId],
    ) -> Result<ConversationId, BackendError> {
        let mut with_creator = Vec::with_capacity(members.len() + 1);
        with_creator.push(creator);
        with_creator.extend_from_slice(members);
        let members = group_members(&with_creator)?;
        run(
            "create group",
            conversations::create_group(self, title, &members),
        )
        .await
    }

    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationView>, BackendError> {
        run(
            "conversations of",
            conversations::conversations_of(self, user),
        )
        .await
    }

    async fn conversation_of(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<Option<ConversationView>, BackendError> {
        run(
            "conversation of",
            conversations::conversation_of(self, user, conversation),
        )
        .await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        run("ping", async {
            let client = self.client().await?;
            client.simple_query("SELECT 1").await?;
            Ok(())
        })
        .await
    }

    async fn is_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<bool, BackendError> {
        run(
            "is member",
            conversations::is_member(self, conversation, user),
        )
        .await
    }

    async fn members(&self, conversation: ConversationId) -> Result<Vec<UserId>, BackendError> {
        run("members", conversations::members(self, conversation)).await
    }

    async fn contacts(
        &self,
        user: UserId,
        members_max: usize,
    ) -> Result<Vec<UserId>, BackendError> {
        let members_max = i64::try_from(members_max).unwrap_or(i64::MAX);
        run("contacts", conversations::contacts(self, user, members_max)).await
    }

    /// One transaction for the whole batch, flushed to disk on commit; if it fails, nothing
    /// of the batch is stored and the error (`Unavailable`) is returned. It locks the
    /// batch's conversations (in id order), so concurrent appends to the same conversation,
    /// from any process, take turns. Per entry: a known (sender, client_msg_id) →
    /// `Duplicate` of the first event, whatever this entry's change or conversation; a
    /// change the rules refuse (a sender who is not a member, or a conversation that does
    /// not exist, is `not_found`) → `Refused`; text PostgreSQL cannot hold, a time out of
    /// range or a constraint the change violates → `Rejected`; otherwise `New` with the next
    /// seq. A conflict with a concurrent transaction is retried a few times. Batches are
    /// bounded by the caller (the persister's batch size).
    async fn append_events(&self, batch: &[NewEvent]) -> Result<Vec<Appended>, BackendError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        append::append_events(self, batch, None).await
    }

    /// As `append_events`, after taking `lease`'s row `FOR SHARE` in the same transaction
    /// (see [`leases`]): `Fenced` when the lease is no longer current.
    async fn append_events_fenced(
        &self,
        batch: &[NewEvent],
        lease: &Lease,
    ) -> Result<Vec<Appended>, BackendError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        append::append_events(self, batch, Some(lease)).await
    }

    async fn refusal(&self, event: &NewEvent) -> Result<Option<ApiError>, BackendError> {
        run("refusal", facts::refusal(self, event)).await
    }

    /// `after_seq` → the `limit` messages after it; else `before_seq` → the `limit` messages
    /// just below it; else the newest `limit`. Always ascending; `limit` is clamped to
    /// `1..=HISTORY_PAGE_MAX` (200). An unknown conversation has no messages.
    async fn messages(
        &self,
        conversation: ConversationId,
        page: Page,
    ) -> Result<Vec<Message>, BackendError> {
        run("messages", history::messages(self, conversation, page)).await
    }

    /// An unknown conversation has no events.
    async fn events(
        &self,
        conversation: ConversationId,
        after_seq: Seq,
        limit: u16,
    ) -> Result<Vec<Event>, BackendError> {
        run(
            "events",
            history::events(self, conversation, after_seq, limit),
        )
        .await
    }

    /// `Rejected` if `user` is not a member of `conversation`.
    async fn mark_read(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq: Seq,
    ) -> Result<Option<Seq>, BackendError> {
        run(
            "mark read",
            conversations::mark_read(self, conversation, user, seq),
        )
        .await
    }

    /// `Rejected` if `user` is not a member of `conversation`.
    async fn mark_delivered(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq: Seq,
    ) -> Result<Option<Seq>, BackendError> {
        run(
            "mark delivered",
            conversations::mark_delivered(self, conversation, user, seq),
        )
        .await
    }

    async fn set_muted(
        &self,
        conversation: ConversationId,
        user: UserId,
        muted: bool,
    ) -> Result<bool, BackendError> {
        run(
            "set muted",
            conversations::set_muted(self, conversation, user, muted),
        )
        .await
    }

    /// One transaction under a lock on the owner's uploads, so the quota holds however
    /// many uploads of one owner run at once.
    async fn record_upload(
        &self,
        file: &StoredFile,
        quota_bytes: u64,
    ) -> Result<UploadRecorded, BackendError> {
        run(
            "record upload",
            files::record_upload(self, file, quota_bytes),
        )
        .await
    }

    async fn file(&self, user: UserId, id: FileId) -> Result<Option<StoredFile>, BackendError> {
        run("file", files::file(self, user, id)).await
    }

    /// Uploads an append is attaching at this moment are left for a later call.
    async fn expire_uploads(
        &self,
        created_before: OffsetDateTime,
        limit: u16,
    ) -> Result<u64, BackendError> {
        run(
            "expire uploads",
            files::expire_uploads(self, created_before, limit),
        )
        .await
    }

    /// Blobs an upload is counting at this moment are left for a later call.
    async fn claim_unused_blobs(
        &self,
        unused_before: OffsetDateTime,
        limit: u16,
    ) -> Result<Vec<BlobKey>, BackendError> {
        run(
            "claim unused blobs",
            files::claim_unused_blobs(self, unused_before, limit),
        )
        .await
    }

    async fn forget_blobs(&self, keys: &[BlobKey]) -> Result<(), BackendError> {
        run("forget blobs", files::forget_blobs(self, keys)).await
    }
}
