//! [`DynamoStore`]: the AWS deployment's [`Store`], on DynamoDB.
//!
//! Ten tables named from one prefix (`tables`): `users` (with each owner's `files_bytes`),
//! `usernames` (uniqueness ignoring case, prefix search), `sessions` (with TTL),
//! `conversations`, `direct_pairs`, `members` (with the `by_user` index), `events` (a
//! conversation's log, a message item holding the message's current state, its files'
//! infos included), `requests` (one item per (sender, client_msg_id): idempotency with no
//! time window), `files` (uploads and their attachments, with the sparse `unattached`
//! index) and `blobs` (how many files use each blob; the janitor's claims).
//!
//! Invariants, for any number of processes:
//! - A conversation is a log: its events' seqs are 1, 2, 3… across every kind. An append
//!   to a conversation is one TransactWriteItems that puts the conversation item back
//!   conditioned on `last_seq = :seen` (the seq its facts were read at), puts the new
//!   events and requests conditioned on their absence and applies the events to members
//!   and messages; a cancelled transaction is read again and retried. Every change of a
//!   conversation's state that a rule reads goes through an event, so that one condition
//!   guards every fact read before the transaction.
//! - `(sender, client_msg_id)` is stored once across every conversation: its `requests`
//!   item is put in the same transaction as the event, conditioned on its absence.
//! - The rules are `parlor_core::rules::check`, fed [`Facts`](parlor_core::rules::Facts)
//!   from strongly consistent reads, with the earlier entries of the batch applied.
//! - A group with members has an admin (the last admin's departure promotes the
//!   longest-standing member); `member_count` and `admin_count` on the conversation item
//!   follow every membership event.
//! - Markers: `last_read_seq <= last_delivered_seq <= last_seq`, never backwards
//!   (conditional updates).
//! - A file is attached once, to a message of its owner: the attaching update is in the
//!   append's transaction, conditioned on the file item being unattached and the
//!   sender's. A blob's `refs` and an owner's `files_bytes` change only in the
//!   transactions that put or delete the file items they count.
//!
//! Reads that authorise or feed a rule are strongly consistent; the `by_user` index (a
//! user's conversations) is eventually consistent, so what it lists is read again from the
//! table. Times are unix nanoseconds (UTC), exact.
//!
//! Files by concern: `tables` (names, create, delete), `calls` (the DynamoDB calls
//! every concern makes), `codec` (items and documents), `error` (SDK errors →
//! `BackendError`), `users`, `sessions`, `conversations` (creation, views,
//! membership, contacts), `markers` (read and delivered markers, mute), `append` (a
//! batch, per conversation, in transactions), `state` (what an append reads of one
//! conversation, and its changes as transaction items), `facts` (the rules' facts, and
//! `refusal`), `history` (messages and events, read back), `files` (uploads, attachments,
//! blobs: how each is kept).

mod append;
mod calls;
mod codec;
mod conversations;
mod error;
mod facts;
mod files;
mod history;
mod markers;
mod sessions;
mod state;
mod tables;
mod users;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use parlor_core::blobs::BlobKey;
use parlor_core::error::{ApiError, BackendError};
use parlor_core::events::Event;
use parlor_core::files::{StoredFile, UploadRecorded};
use parlor_core::ids::{ConversationId, FileId, Seq, UserId};
use parlor_core::ports::{Appended, ConversationView, NewEvent, Page, Session, Store, TokenHash};
use parlor_core::protocol::{Message, User};
use parlor_core::storage::{check_direct_pair, distinct, group_members};
use time::OffsetDateTime;

use codec::{item, s};
use error::context;
use tables::Tables;

/// The AWS [`Store`]: users, sessions, conversations and their event logs, members and
/// their markers in DynamoDB tables, shared by any number of processes (gateways, Lambda
/// persisters). A write that returned `Ok` is durable (DynamoDB acknowledges a write once
/// it is stored in several availability zones).
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    tables: Tables,
}

impl DynamoStore {
    /// `prefix` names every table ("parlor-" → "parlor-users", …). With `create_tables`
    /// (tests, the local emulator) missing tables are created (PAY_PER_REQUEST, the GSI,
    /// TTL on sessions) and waited for; production's come from the CloudFormation template.
    pub async fn open(
        client: Client,
        prefix: &str,
        create_tables: bool,
    ) -> Result<DynamoStore, BackendError> {
        let store = DynamoStore {
            client,
            tables: Tables::new(prefix),
        };
        if create_tables {
            tables::create_tables(&store.client, &store.tables)
                .await
                .map_err(|error| context("open", error))?;
        }
        Ok(store)
    }

    /// Deletes this store's tables (tests' cleanup).
    pub async fn delete_tables(&self) -> Result<(), BackendError> {
        tables::delete_tables(&self.client, &self.tables)
            .await
            .map_err(|error| context("delete tables", error))
    }
}

/// Runs a store method's body, naming the method in its error.
async fn run<T>(
    what: &str,
    body: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    body.await.map_err(|error| context(what, error))
}

#[async_trait]
impl Store for DynamoStore {
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

    /// One Query per first character: a prefix's own; for the empty prefix, the possible
    /// first characters of a valid username in order, until `limit` are found.
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
        run("users", users::users(self, &distinct(ids))).await
    }

    async fn set_last_seen(&self, user: UserId, at: OffsetDateTime) -> Result<(), BackendError> {
        run("set last seen", users::set_last_seen(self, user, at)).await
    }

    async fn last_seen(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(UserId, Option<OffsetDateTime>)>, BackendError> {
        run("last seen", users::last_seen(self, &distinct(users))).await
    }

    async fn create_session(
        &self,
        token: TokenHash,
        user: UserId,
        expires_at: OffsetDateTime,
    ) -> Result<(), BackendError> {
        run(
            "create session",
            sessions::create_session(self, token, user, expires_at),
        )
        .await
    }

    async fn session_user(
        &self,
        token: TokenHash,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, BackendError> {
        run("session user", sessions::session_user(self, token, now)).await
    }

    async fn delete_session(&self, token: TokenHash) -> Result<(), BackendError> {
        run("delete session", sessions::delete_session(self, token)).await
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

    /// The creator first, so that they are its admin.
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
        run("contacts", conversations::contacts(self, user, members_max)).await
    }

    /// A strongly consistent GetItem of a key that never exists: one round trip, one read
    /// unit.
    async fn ping(&self) -> Result<(), BackendError> {
        run("ping", async {
            calls::get(
                &self.client,
                &self.tables.conversations,
                item([("id", s("ping"))]),
            )
            .await
            .map(|_| ())
        })
        .await
    }

    /// One transaction per conversation of the batch (more when a conversation's part needs
    /// more than 100 items), in order; the conversations run concurrently. A transaction
    /// cancelled by another append is read again and retried; should one fail otherwise,
    /// the error is returned and the transactions before it stay committed: a retried batch
    /// is then answered with duplicates for them.
    async fn append_events(&self, batch: &[NewEvent]) -> Result<Vec<Appended>, BackendError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        run("append events", append::append_events(self, batch)).await
    }

    async fn refusal(&self, event: &NewEvent) -> Result<Option<ApiError>, BackendError> {
        run("refusal", facts::refusal(self, event)).await
    }

    /// `after_seq` → the `limit` messages after it; else `before_seq` → the `limit` messages
    /// just below it; else the newest `limit`. Always ascending. A Query of the events
    /// (strongly consistent) filtered to messages, plus one batch get of the replied-to
    /// messages outside the page.
    async fn messages(
        &self,
        conversation: ConversationId,
        page: Page,
    ) -> Result<Vec<Message>, BackendError> {
        run("messages", history::messages(self, conversation, page)).await
    }

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
            markers::mark(self, conversation, user, seq, markers::Marker::Read),
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
            markers::mark(self, conversation, user, seq, markers::Marker::Delivered),
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
            markers::set_muted(self, conversation, user, muted),
        )
        .await
    }

    /// One transaction: the file item (its id free), the owner's `files_bytes` (under the
    /// quota) and each blob's count (unless claimed).
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

    /// A strongly consistent GetItem of the file, then of the reader's member item.
    async fn file(&self, user: UserId, id: FileId) -> Result<Option<StoredFile>, BackendError> {
        run("file", files::file(self, user, id)).await
    }

    /// Candidates from the sparse `unattached` index, each removed in a transaction of its
    /// own conditioned on being unattached still.
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

    /// Candidates from the sparse `idle` index of `blobs`, then a conditional claim of each.
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
