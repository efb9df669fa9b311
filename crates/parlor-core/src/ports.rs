//! The ports: the only way the server roles reach queues, storage, the connection registry,
//! presence and other gateway nodes. Each backend set (embedded, cluster) implements them;
//! the roles hold them as `Arc<dyn _>` and never name a backend.
//!
//! Every method fails with [`BackendError`], whose kind tells the caller what to do:
//! `Unavailable` → retry with backoff, `Rejected` → dead-letter, `Poisoned` → stop.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use time::OffsetDateTime;

use crate::blobs::BlobKey;
use crate::error::{ApiError, BackendError};
use crate::events::{Change, Event, Role};
use crate::files::{StoredFile, UploadRecorded};
use crate::ids::{ConnectionId, ConversationId, FileId, NodeId, Seq, UserId};
use crate::protocol::{ConversationKind, Message, User};

/// Identifies one entry handed out by [`Queue::receive`], for `ack` and friends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(pub u64);

/// One queue entry handed to a consumer.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: DeliveryId,
    pub payload: Vec<u8>,
    /// 1 on first delivery, then one more per redelivery.
    pub attempts: u32,
}

/// An entry that failed for good, with why.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Stable identifier within this queue's dead-letter side.
    pub id: u64,
    pub payload: Vec<u8>,
    pub reason: String,
    pub attempts: u32,
    pub failed_at: OffsetDateTime,
}

/// Which dead letters an admin operation applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadLetterSelection {
    All,
    Ids(Vec<u64>),
}

/// How full a queue is, for metrics and operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Appended and not yet acknowledged, in flight or not.
    pub pending: u64,
    /// Handed to a consumer and not yet acknowledged.
    pub in_flight: u64,
    /// In the dead-letter queue.
    pub dead: u64,
}

/// A durable FIFO with a dead-letter side.
///
/// `append` returns only when the entries survive `kill -9` of any process (a fsynced WAL,
/// a JetStream ack from a syncing server). Delivery is at least once: an entry
/// not acknowledged within the visibility timeout, or before a crash, is delivered again,
/// so consumers must be idempotent. Entries are handed out in append order, except that a
/// redelivered entry comes back later than the entries after it; or, on a backend that
/// orders per key (SQS FIFO message groups, see `append_keyed`), that a key's later entries
/// wait while one of its entries is in flight or waiting to be retried, and then come after
/// it.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Appends entries, in order; durable when this returns `Ok`. `StorageFull` when the
    /// backend is out of space: none of the entries was appended, retry once space is freed.
    async fn append(&self, entries: Vec<Vec<u8>>) -> Result<(), BackendError>;
    /// The same, with the conversation each entry belongs to: the order that must hold is
    /// only each conversation's. A backend that orders within a key (SQS FIFO message
    /// groups) orders by it, and lets other conversations go on while one waits; the
    /// others keep one order for all entries, which keeps every conversation's.
    async fn append_keyed(
        &self,
        entries: Vec<(ConversationId, Vec<u8>)>,
    ) -> Result<(), BackendError> {
        self.append(entries.into_iter().map(|(_, entry)| entry).collect())
            .await
    }
    /// Up to `max` entries; waits up to `wait` for the first one, returns empty after that.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BackendError>;
    /// Marks entries done; they are never delivered again.
    async fn ack(&self, ids: &[DeliveryId]) -> Result<(), BackendError>;
    /// Gives an entry back, to be delivered again no sooner than `delay` from now.
    async fn retry_later(&self, id: DeliveryId, delay: Duration) -> Result<(), BackendError>;
    /// Moves an entry to the dead-letter queue with `reason`, durably, then acknowledges it.
    async fn dead_letter(&self, id: DeliveryId, reason: &str) -> Result<(), BackendError>;
    /// The oldest dead letters, up to `limit`.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError>;
    /// Appends the selected dead letters to the queue again and removes them from the
    /// dead-letter side; returns how many moved.
    async fn redrive(&self, selection: DeadLetterSelection) -> Result<usize, BackendError>;
    /// Deletes the selected dead letters for good; returns how many.
    async fn purge(&self, selection: DeadLetterSelection) -> Result<usize, BackendError>;
    async fn depth(&self) -> Result<QueueDepth, BackendError>;
    /// Entries this handle already took from the backend and has not handed out (the rest
    /// of what one pull brought), up to `max`, without asking the backend for more. A
    /// consumer that ends its turn takes these before [`Queue::hand_over`]: handed back,
    /// they could only be appended again, behind newer entries. Empty for a handle that
    /// holds nothing back.
    async fn receive_held(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        let _ = max;
        Ok(Vec::new())
    }
    /// Where consumers take turns (a queue held by one consumer at a time): gives up this
    /// handle's turn at once, with what it holds and has not acknowledged, so that the next
    /// consumer goes on now instead of after a timeout. A later `receive` takes a turn again.
    /// Does nothing where consumers share entries instead.
    async fn hand_over(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// A change as the persister hands it to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub client_msg_id: String,
    /// When the gateway accepted it; becomes `created_at`.
    pub accepted_at: OffsetDateTime,
    pub change: Change,
}

/// A stored event, and where the conversation's membership stood when it was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub event: Event,
    /// The seq of the conversation's newest event that changed its members or their roles
    /// (0 if none did): a member list read before that seq is stale.
    pub members_seq: Seq,
}

/// What the store did with one [`NewEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored now with the next `seq`.
    New(Stored),
    /// (sender, client_msg_id) was stored before: this is that event (a message in its
    /// current state).
    Duplicate(Stored),
    /// The conversation's rules refuse it now ([`crate::rules::check`]): nothing was stored
    /// and no seq consumed; the sender is told why. It was allowed when the gateway accepted
    /// it, and something changed since (the sender was removed, the message deleted).
    Refused(ApiError),
    /// Can never be stored (a time out of range, say); dead-letter it.
    Rejected(String),
}

/// The most messages one [`Page`] of history holds: stores clamp `Page::limit` to
/// `1..=HISTORY_PAGE_MAX`, and the gateway refuses a larger `limit`.
pub const HISTORY_PAGE_MAX: u16 = 200;

/// A page of history: `after_seq` wins over `before_seq`; neither means the newest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub before_seq: Option<Seq>,
    pub after_seq: Option<Seq>,
    pub limit: u16,
}

impl Page {
    /// How many messages this page holds at most: `limit` clamped to
    /// `1..=HISTORY_PAGE_MAX`.
    pub fn limit_clamped(&self) -> u16 {
        self.limit.clamp(1, HISTORY_PAGE_MAX)
    }
}

/// One member of a conversation, as the store holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub user: User,
    pub role: Role,
    pub last_delivered_seq: Seq,
    pub last_read_seq: Seq,
}

/// A conversation as one of its members sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationView {
    pub id: ConversationId,
    pub kind: ConversationKind,
    pub title: Option<String>,
    /// By username.
    pub members: Vec<MemberView>,
    /// The newest message, in its current state.
    pub last_message: Option<Message>,
    /// The newest event's seq.
    pub last_seq: Seq,
    /// This member's read marker.
    pub last_read_seq: Seq,
    /// Messages from others after this member's read marker.
    pub unread_count: u64,
    /// Of those, the ones that mention this member.
    pub unread_mentions: u64,
    pub muted: bool,
}

/// The SHA-256 of a session token: tokens themselves are never stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

/// A live session: whose it is, and when it ends (sockets opened with it close then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user: User,
    pub expires_at: OffsetDateTime,
}

/// Users, sessions, conversations, messages and read markers: the truth.
#[async_trait]
pub trait Store: Send + Sync {
    /// `None` when the username is taken (ignoring case).
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<Option<User>, BackendError>;
    /// The user and their password hash, by username (ignoring case).
    async fn user_credentials(
        &self,
        username: &str,
    ) -> Result<Option<(User, String)>, BackendError>;
    /// Users whose name starts with `prefix` (ignoring case), by name.
    async fn users_by_prefix(&self, prefix: &str, limit: u16) -> Result<Vec<User>, BackendError>;
    /// The users that exist among `ids`.
    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>, BackendError>;
    async fn set_last_seen(&self, user: UserId, at: OffsetDateTime) -> Result<(), BackendError>;
    async fn last_seen(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(UserId, Option<OffsetDateTime>)>, BackendError>;

    async fn create_session(
        &self,
        token: TokenHash,
        user: UserId,
        expires_at: OffsetDateTime,
    ) -> Result<(), BackendError>;
    /// The session, if it exists and has not expired at `now`.
    async fn session_user(
        &self,
        token: TokenHash,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, BackendError>;
    async fn delete_session(&self, token: TokenHash) -> Result<(), BackendError>;

    /// The one direct conversation of the pair, created if needed; `true` if created now.
    async fn create_direct(
        &self,
        a: UserId,
        b: UserId,
    ) -> Result<(ConversationId, bool), BackendError>;
    /// A new group of `members` (the creator among them, added if not): the creator is
    /// its admin, everyone else a member.
    async fn create_group(
        &self,
        creator: UserId,
        title: &str,
        members: &[UserId],
    ) -> Result<ConversationId, BackendError>;
    /// The member's conversations, most recent activity first.
    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationView>, BackendError>;
    /// One conversation, if `user` is a member of it.
    async fn conversation_of(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<Option<ConversationView>, BackendError>;
    async fn is_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<bool, BackendError>;
    async fn members(&self, conversation: ConversationId) -> Result<Vec<UserId>, BackendError>;
    /// Everyone who shares with `user` at least one conversation of at most `members_max`
    /// members, `user` excluded, by id.
    async fn contacts(&self, user: UserId, members_max: usize)
    -> Result<Vec<UserId>, BackendError>;

    /// Answers once the store can serve a request (one round trip to a remote one). Tells an
    /// outage, which every request meets, from a failure of one request.
    async fn ping(&self) -> Result<(), BackendError>;

    /// Stores a batch in one transaction. Per entry, in order: a repeated (sender,
    /// client_msg_id) yields the event stored the first time and stores nothing
    /// (`Duplicate`); a change the rules refuse now stores nothing and consumes no seq
    /// (`Refused`, the same answer [`Store::refusal`] gives); otherwise it is stored with the
    /// next gap-free `seq` of its conversation and applied to the conversation's state
    /// (`New`). The sender's read marker moves to their own message. `StorageFull` when the
    /// backend is out of space: the transaction stored nothing, the same batch succeeds
    /// once space is freed.
    ///
    /// Applying an event: a message's `@name`s are resolved to members, and its files are
    /// attached to it (each the sender's upload, not attached before: the rules say so); an
    /// edit replaces the message's body (the edit's own row keeps the new body: the
    /// history); a delete erases the body of the message and of its edits, its reactions and
    /// mentions, and removes its files (each counts one user less of its blobs); a departure of
    /// the last admin makes the longest-standing remaining member one.
    async fn append_events(&self, batch: &[NewEvent]) -> Result<Vec<Appended>, BackendError>;
    /// [`Store::append_events`] in the same transaction as a check of `lease`, which holds
    /// the lease against a takeover until the transaction ends: `Fenced`, and nothing
    /// stored, when the lease lapsed or changed hands, so that a persister that lost its
    /// partition (paused past its lease, cut off) never commits behind the new owner. A
    /// store without [`Leases`] refuses it.
    async fn append_events_fenced(
        &self,
        batch: &[NewEvent],
        lease: &Lease,
    ) -> Result<Vec<Appended>, BackendError> {
        let _ = (batch, lease);
        Err(BackendError::rejected("this store keeps no leases"))
    }
    /// The error [`Store::append_events`] would answer for `event` now, if any: the
    /// gateway's check before it accepts a change. None for a repeat of a stored (sender,
    /// client_msg_id), which is a duplicate, not a refusal: a client resends what it sent
    /// when it lost the `accepted`.
    async fn refusal(&self, event: &NewEvent) -> Result<Option<ApiError>, BackendError>;
    /// Messages in their current state (edited, deleted, reactions, the replied-to
    /// excerpt), in ascending `seq`; `Page` counts messages, not events.
    async fn messages(
        &self,
        conversation: ConversationId,
        page: Page,
    ) -> Result<Vec<Message>, BackendError>;
    /// Events after `after_seq`, ascending, at most `limit` (clamped to
    /// `1..=HISTORY_PAGE_MAX`): applied in order to the messages a client holds, they give
    /// the store's state. A message event carries the message in its current state.
    async fn events(
        &self,
        conversation: ConversationId,
        after_seq: Seq,
        limit: u16,
    ) -> Result<Vec<Event>, BackendError>;

    /// Moves `user`'s read marker forward to `seq` (clamped to the last seq; never
    /// backwards), and their delivered marker with it. Returns the new marker if it moved,
    /// `None` if it stayed where it was (a marker that moves nothing is announced to
    /// nobody). `Rejected` if `user` is not a member.
    async fn mark_read(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq: Seq,
    ) -> Result<Option<Seq>, BackendError>;
    /// The same for the delivered marker: the events up to `seq` reached one of `user`'s
    /// devices.
    async fn mark_delivered(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq: Seq,
    ) -> Result<Option<Seq>, BackendError>;
    /// Records an upload (see [`crate::files`]) before its blobs are stored: counts one
    /// more user of each of its blobs. Nothing is recorded if the owner's files (attached or
    /// not) would then take more than `quota_bytes` (`OverQuota`), or if one of its blobs is
    /// claimed for deletion (`BlobBeingDeleted`: try again once the janitor forgot it).
    /// `Rejected` if the id is taken or the owner does not exist.
    async fn record_upload(
        &self,
        file: &StoredFile,
        quota_bytes: u64,
    ) -> Result<UploadRecorded, BackendError>;
    /// The file, if `user` may read it: attached to a message of a conversation they are a
    /// member of now, or their own upload not yet attached. Anyone else gets `None`, as for
    /// a file that does not exist.
    async fn file(&self, user: UserId, id: FileId) -> Result<Option<StoredFile>, BackendError>;
    /// Removes up to `limit` uploads never attached and created before `created_before`
    /// (each counts one user less of its blobs); how many were removed.
    async fn expire_uploads(
        &self,
        created_before: OffsetDateTime,
        limit: u16,
    ) -> Result<u64, BackendError>;
    /// Up to `limit` blobs no file uses any more, claimed for deletion: unused since before
    /// `unused_before`, or claimed before then by a janitor that did not finish. From now
    /// until [`Store::forget_blobs`], no new file may use them.
    async fn claim_unused_blobs(
        &self,
        unused_before: OffsetDateTime,
        limit: u16,
    ) -> Result<Vec<BlobKey>, BackendError>;
    /// Forgets claimed blobs once they are deleted from the blob store, so that new files
    /// may use those keys again (and store the bytes again).
    async fn forget_blobs(&self, keys: &[BlobKey]) -> Result<(), BackendError>;

    /// Mutes or unmutes the conversation for `user`; `false` if they are not a member.
    async fn set_muted(
        &self,
        conversation: ConversationId,
        user: UserId,
        muted: bool,
    ) -> Result<bool, BackendError>;
}

/// One live connection, as the registry knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub id: ConnectionId,
    pub user: UserId,
    pub node: NodeId,
}

/// The right to consume one partition of the inbound queue: one process at a time, for a
/// while, renewed as it goes (see [`Leases`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub partition: u32,
    pub owner: String,
    /// Grows whenever the lease is taken after it lapsed or was released: a write fenced
    /// with an older epoch is refused.
    pub epoch: u64,
}

/// Leases on the inbound queue's partitions, kept where the persisters store (so that a
/// batch is checked against its lease in its own transaction, see
/// [`Store::append_events_fenced`]). Time is the backend's clock, one for all processes.
#[async_trait]
pub trait Leases: Send + Sync {
    /// Takes `partition` for `owner` for `ttl`, if nobody holds it (never taken, lapsed,
    /// released) or `owner` does; `None` while another holds it. Taking it after it lapsed
    /// or was released starts a new epoch; taking one's own live lease again renews it.
    async fn acquire(
        &self,
        partition: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, BackendError>;
    /// Extends `lease` to `ttl` from now; false when it lapsed or changed hands meanwhile:
    /// the holder must stop consuming at once.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, BackendError>;
    /// Gives `lease` up at once (a clean stop), so that another process takes the partition
    /// without waiting for it to lapse. Does nothing if it is no longer held.
    async fn release(&self, lease: &Lease) -> Result<(), BackendError>;
    /// Renews `owner`'s place among the live members of `group` for `ttl`, joining it if
    /// need be, and returns every live member, `owner` included, sorted: the processes that
    /// share a queue's partitions each take their share of this list
    /// ([`crate::partitions::assign`]).
    async fn group_members(
        &self,
        group: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, BackendError>;
    /// Leaves `group` at once (a clean stop), so that the others take its share now.
    async fn leave_group(&self, group: &str, owner: &str) -> Result<(), BackendError>;
}

/// Where users are connected.
#[async_trait]
pub trait Registry: Send + Sync {
    async fn register(&self, connection: ConnectionInfo) -> Result<(), BackendError>;
    async fn unregister(&self, connection: ConnectionInfo) -> Result<(), BackendError>;
    /// Renews this node's lease; when a lease expires, the node's connections vanish (and
    /// their users go offline).
    async fn heartbeat(&self, node: NodeId, lease: Duration) -> Result<(), BackendError>;
    /// Ends this node's lease now, at a clean stop once its connections are closed: nobody
    /// waits for it to lapse (`parlor partitions --set` needs every gateway gone).
    async fn retire(&self, node: NodeId) -> Result<(), BackendError> {
        let _ = node;
        Ok(())
    }
    /// The nodes that hold connections of `users`, each with the users it holds.
    async fn locate(&self, users: &[UserId]) -> Result<Vec<(NodeId, Vec<UserId>)>, BackendError>;
}

/// A user came online or went offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresenceChange {
    pub user: UserId,
    pub online: bool,
    pub at: OffsetDateTime,
}

/// Who is online, and the changes as they happen.
#[async_trait]
pub trait Presence: Send + Sync {
    /// The subset of `users` that is online now.
    async fn online(&self, users: &[UserId]) -> Result<Vec<UserId>, BackendError>;
    /// Every change from now on. A slow subscriber may miss changes (it is told by the
    /// stream ending), never block the registry.
    async fn changes(&self) -> Result<BoxStream<'static, PresenceChange>, BackendError>;
}

/// Where a message frame stands in its conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageOrder {
    pub conversation: ConversationId,
    pub seq: Seq,
}

/// What one gateway node is asked to do for its local connections.
#[derive(Clone, Debug)]
pub enum NodeCommand {
    /// Send `frame` (JSON text) to every local connection of `users`. With `order` (message
    /// frames), the node passes a conversation's messages on in `seq` order: several
    /// notifiers may send them out of order, and one that arrives early waits a moment for
    /// the ones before it.
    Deliver {
        users: Vec<UserId>,
        frame: Arc<str>,
        order: Option<MessageOrder>,
    },
    /// Close the local connections opened with this session (logout).
    CloseSession { user: UserId, token: TokenHash },
}

/// Carries commands to one gateway node: a notification costs one send per node that holds
/// a recipient, never a broadcast to every node.
#[async_trait]
pub trait Relay: Send + Sync {
    async fn send(&self, node: NodeId, command: NodeCommand) -> Result<(), BackendError>;
    /// This node's commands, in the order they were sent.
    async fn inbox(&self, node: NodeId) -> Result<BoxStream<'static, NodeCommand>, BackendError>;
}
