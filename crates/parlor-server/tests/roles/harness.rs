//! The harness: `Deps` from the embedded backends in a temporary directory, each port wrapped
//! in a scripted fault (a flag the test sets and clears) that also records what the role did.
//!
//! Time: tests run with `start_paused = true`, so the roles' pauses (100 ms to 1 s) take no
//! time. `WalQueue` measures its retry delays and visibility timeouts on the std clock, which
//! paused time does not move, so [`ScriptedQueue::receive`] waits in tokio time itself; tests
//! use zero or 1 ms retry delays. Nothing here waits with a timeout: under paused time a
//! timeout would fire whenever the runtime waits for a disk; a hang fails by nextest's timer.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use parlor_core::blobs::BlobKey;
use parlor_core::error::ApiError;
use parlor_core::events::{Change, Event};
use parlor_core::files::{StoredFile, UploadRecorded};
use parlor_core::ids::FileId;
use parlor_core::ports::{
    Appended, ConversationView, DeadLetter, DeadLetterSelection, Delivery, DeliveryId, NewEvent,
    NodeCommand, Page, Queue, QueueDepth, Relay, Session, Store, TokenHash,
};
use parlor_core::protocol::{Message, User};
use parlor_core::queue::InboundEntry;
use parlor_core::{BackendError, BackendErrorKind, ConversationId, NodeId, Seq, UserId};
use parlor_embedded::DirBlobStore;
use parlor_embedded::{LocalRelay, MemoryRegistry, SqliteStore, WalQueue, WalQueueOptions};
use parlor_server::config::ConsumerConfig;
use parlor_server::{Deps, Shutdown, ShutdownSignal};
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect("harness lock")
}

/// The embedded backends of one test, wrapped, and a shutdown signal for its roles.
pub struct Harness {
    pub store: Arc<ScriptedStore>,
    pub inbound: Arc<ScriptedQueue>,
    pub notifications: Arc<ScriptedQueue>,
    pub registry: Arc<MemoryRegistry>,
    pub blobs: Arc<DirBlobStore>,
    pub relay: Arc<ScriptedRelay>,
    /// Fired by any wrapper after it did something: what [`Harness::until`] waits for.
    events: Arc<Notify>,
    signal: ShutdownSignal,
    shutdown: Shutdown,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn new() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let events = Arc::new(Notify::new());
        let sqlite = SqliteStore::open(&dir.path().join("parlor.sqlite3")).expect("open store");
        let (signal, shutdown) = ShutdownSignal::new();
        Harness {
            store: Arc::new(ScriptedStore::new(Arc::new(sqlite), Arc::clone(&events))),
            inbound: ScriptedQueue::open(&dir.path().join("inbound"), "inbound", &events),
            notifications: ScriptedQueue::open(
                &dir.path().join("notifications"),
                "notifications",
                &events,
            ),
            registry: Arc::new(MemoryRegistry::new()),
            relay: Arc::new(ScriptedRelay::default()),
            blobs: Arc::new(DirBlobStore::open(&dir.path().join("blobs")).expect("open blobs")),
            events,
            signal,
            shutdown,
            _dir: dir,
        }
    }

    pub fn deps(&self) -> Deps {
        Deps {
            store: self.store.clone(),
            inbound: self.inbound.clone(),
            notifications: self.notifications.clone(),
            registry: self.registry.clone(),
            presence: self.registry.clone(),
            relay: self.relay.clone(),
            search: None,
            blobs: self.blobs.clone(),
            inbound_lease: None,
        }
    }

    /// Three attempts, no backoff (the policy's delays are tested on their own).
    pub fn config() -> ConsumerConfig {
        ConsumerConfig {
            batch_max: 512,
            attempts_max: 3,
            retry_base: Duration::ZERO,
            retry_max: Duration::ZERO,
            drain_timeout: Duration::from_secs(1),
        }
    }

    pub fn persister(&self, config: ConsumerConfig) -> JoinHandle<Result<(), BackendError>> {
        tokio::spawn(parlor_server::persister::run(
            self.deps(),
            config,
            self.shutdown.clone(),
        ))
    }

    pub fn notifier(&self, config: ConsumerConfig) -> JoinHandle<Result<(), BackendError>> {
        tokio::spawn(parlor_server::notifier::run(
            self.deps(),
            config,
            self.shutdown.clone(),
        ))
    }

    pub fn presence(&self) -> JoinHandle<()> {
        tokio::spawn(parlor_server::presence::run(
            self.deps(),
            self.shutdown.clone(),
        ))
    }

    /// Fires shutdown and waits for `role` to return.
    pub async fn stop<T>(&self, role: JoinHandle<T>) -> T {
        self.signal.fire();
        role.await.expect("the role panicked")
    }

    /// Waits until `condition` holds; it is checked again after anything a wrapper did.
    pub async fn until<F, C>(&self, mut condition: C)
    where
        C: FnMut() -> F,
        F: Future<Output = bool>,
    {
        loop {
            let changed = self.events.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if condition().await {
                return;
            }
            changed.await;
        }
    }

    /// Users named `names` and one conversation of them all (direct for two).
    pub async fn conversation(&self, names: &[&str]) -> (Vec<UserId>, ConversationId) {
        let mut users = Vec::new();
        for name in names {
            let user = self.store.create_user(name, "not a hash").await.unwrap();
            users.push(user.expect("a new user").id);
        }
        let conversation = match users.as_slice() {
            [a, b] => self.store.create_direct(*a, *b).await.unwrap().0,
            members => self
                .store
                .create_group(members[0], "group", members)
                .await
                .unwrap(),
        };
        (users, conversation)
    }

    /// Appends messages to the inbound queue, as a gateway does (one append).
    pub async fn send(
        &self,
        conversation: ConversationId,
        sender: UserId,
        messages: &[(&str, &str)],
    ) {
        let entries = messages
            .iter()
            .map(|(id, body)| entry(conversation, sender, id, body))
            .collect();
        self.inbound.append(entries).await.expect("append inbound");
    }

    /// `(seq, client_msg_id)` of every stored message of `conversation`.
    pub async fn history(&self, conversation: ConversationId) -> Vec<(Seq, String)> {
        let page = Page {
            before_seq: None,
            after_seq: Some(0),
            limit: 1000,
        };
        let messages = self.store.messages(conversation, page).await.unwrap();
        messages
            .into_iter()
            .map(|m| (m.seq, m.client_msg_id))
            .collect()
    }
}

pub fn entry(conversation: ConversationId, sender: UserId, id: &str, body: &str) -> Vec<u8> {
    InboundEntry {
        conversation_id: conversation,
        sender_id: sender,
        client_msg_id: id.to_string(),
        accepted_at: OffsetDateTime::now_utc(),
        change: Change::Message {
            body: body.to_string(),
            reply_to_seq: None,
            files: Vec::new(),
        },
    }
    .encode()
}

/// A `Store` that fails appends while `fail_appends` is set (with that kind), fails batches
/// holding a body that contains `fail_bodies_containing` (unavailable: a poison message), and
/// fails its ping while `ping_fails` is set (an outage). Records every batch it was given.
pub struct ScriptedStore {
    store: Arc<dyn Store>,
    events: Arc<Notify>,
    pub fail_appends: Mutex<Option<BackendErrorKind>>,
    pub fail_bodies_containing: Mutex<Option<String>>,
    pub ping_fails: AtomicBool,
    /// The `client_msg_id`s of every `append_events` call, failed or not.
    pub batches: Mutex<Vec<Vec<String>>>,
    pub pings: AtomicUsize,
    pub members_reads: AtomicUsize,
}

impl ScriptedStore {
    fn new(store: Arc<dyn Store>, events: Arc<Notify>) -> Self {
        Self {
            store,
            events,
            fail_appends: Mutex::new(None),
            fail_bodies_containing: Mutex::new(None),
            ping_fails: AtomicBool::new(false),
            batches: Mutex::default(),
            pings: AtomicUsize::new(0),
            members_reads: AtomicUsize::new(0),
        }
    }

    pub fn batches(&self) -> Vec<Vec<String>> {
        lock(&self.batches).clone()
    }
}

/// A `Queue` on a real `WalQueue` that fails receives while `receive_fails` is set, fails
/// appends while `append_fails` is set, holds appends while `hold_appends` is true, fails
/// every fsync of its logs while `fsync_fails` is set (which poisons them, as a real failed
/// fsync does), and can hand out redelivered entries after fresh ones, as another backend
/// may. Records deliveries and retries.
pub struct ScriptedQueue {
    pub inner: Arc<WalQueue>,
    events: Arc<Notify>,
    /// Appends and retries through this wrapper: wakes a waiting receive.
    changed: Notify,
    pub receive_fails: Mutex<Option<BackendErrorKind>>,
    pub append_fails: Mutex<Option<BackendErrorKind>>,
    pub hold_appends: watch::Sender<bool>,
    pub fsync_fails: Arc<AtomicBool>,
    pub redelivered_last: AtomicBool,
    /// `(id, attempts)` of every entry handed out.
    pub deliveries: Mutex<Vec<(DeliveryId, u32)>>,
    pub retries: Mutex<Vec<(DeliveryId, Duration)>>,
    pub receive_failures: AtomicUsize,
    pub append_failures: AtomicUsize,
    pub appends_held: AtomicUsize,
}

impl ScriptedQueue {
    fn open(dir: &std::path::Path, name: &str, events: &Arc<Notify>) -> Arc<Self> {
        let fsync_fails = Arc::new(AtomicBool::new(false));
        let hook = {
            let fsync_fails = Arc::clone(&fsync_fails);
            Arc::new(move |_: &std::fs::File| {
                if fsync_fails.load(SeqCst) {
                    Err(std::io::Error::other("scripted fsync failure"))
                } else {
                    Ok(())
                }
            })
        };
        let inner = WalQueue::open_with_sync_hook(dir, name, WalQueueOptions::default(), hook)
            .expect("open queue");
        Arc::new(Self {
            inner,
            events: Arc::clone(events),
            changed: Notify::new(),
            receive_fails: Mutex::new(None),
            append_fails: Mutex::new(None),
            hold_appends: watch::Sender::new(false),
            fsync_fails,
            redelivered_last: AtomicBool::new(false),
            deliveries: Mutex::default(),
            retries: Mutex::default(),
            receive_failures: AtomicUsize::new(0),
            append_failures: AtomicUsize::new(0),
            appends_held: AtomicUsize::new(0),
        })
    }

    pub fn retries(&self) -> Vec<(DeliveryId, Duration)> {
        lock(&self.retries).clone()
    }

    pub fn deliveries(&self) -> Vec<(DeliveryId, u32)> {
        lock(&self.deliveries).clone()
    }

    /// `(reason, attempts)` of every dead letter.
    pub async fn dead(&self) -> Vec<(String, u32)> {
        let letters = self.inner.dead_letters(1000).await.unwrap();
        letters
            .into_iter()
            .map(|l| (l.reason, l.attempts))
            .collect()
    }

    /// Entries appended and not yet acknowledged.
    pub async fn pending(&self) -> u64 {
        self.inner.depth().await.unwrap().pending
    }

    fn changed(&self) {
        self.changed.notify_waiters();
        self.events.notify_waiters();
    }
}

#[async_trait]
impl Queue for ScriptedQueue {
    async fn append(&self, entries: Vec<Vec<u8>>) -> Result<(), BackendError> {
        let mut held = self.hold_appends.subscribe();
        if *held.borrow_and_update() {
            self.appends_held.fetch_add(1, SeqCst);
            self.events.notify_waiters();
            let _ = held.wait_for(|held| !*held).await;
        }
        let fail = *lock(&self.append_fails);
        let result = match fail {
            Some(kind) => {
                self.append_failures.fetch_add(1, SeqCst);
                Err(BackendError::new(kind, "scripted: the queue fails appends"))
            }
            None => self.inner.append(entries).await,
        };
        self.changed();
        result
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BackendError> {
        // Every receive yields, so that a role retrying without pause cannot starve the test.
        tokio::task::yield_now().await;
        let fail = *lock(&self.receive_fails);
        if let Some(kind) = fail {
            self.receive_failures.fetch_add(1, SeqCst);
            self.events.notify_waiters();
            return Err(BackendError::new(kind, "scripted: the receive timed out"));
        }
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let mut deliveries = self.inner.receive(max, Duration::ZERO).await?;
            if !deliveries.is_empty() {
                if self.redelivered_last.load(SeqCst) {
                    deliveries.sort_by_key(|delivery| delivery.attempts > 1);
                }
                lock(&self.deliveries).extend(deliveries.iter().map(|d| (d.id, d.attempts)));
                self.events.notify_waiters();
                return Ok(deliveries);
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(give_up) => return Ok(Vec::new()),
            }
        }
    }

    async fn ack(&self, ids: &[DeliveryId]) -> Result<(), BackendError> {
        let result = self.inner.ack(ids).await;
        self.events.notify_waiters();
        result
    }

    async fn retry_later(&self, id: DeliveryId, delay: Duration) -> Result<(), BackendError> {
        lock(&self.retries).push((id, delay));
        let result = self.inner.retry_later(id, delay).await;
        self.changed();
        result
    }

    async fn dead_letter(&self, id: DeliveryId, reason: &str) -> Result<(), BackendError> {
        let result = self.inner.dead_letter(id, reason).await;
        self.events.notify_waiters();
        result
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        self.inner.dead_letters(limit).await
    }

    async fn redrive(&self, selection: DeadLetterSelection) -> Result<usize, BackendError> {
        self.inner.redrive(selection).await
    }

    async fn purge(&self, selection: DeadLetterSelection) -> Result<usize, BackendError> {
        self.inner.purge(selection).await
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        self.inner.depth().await
    }
}

/// A `Relay` (the in-process one) that fails every send while `drops` is set.
#[derive(Default)]
pub struct ScriptedRelay {
    inner: LocalRelay,
    pub drops: AtomicBool,
    pub dropped: AtomicUsize,
}

#[async_trait]
impl Relay for ScriptedRelay {
    async fn send(&self, node: NodeId, command: NodeCommand) -> Result<(), BackendError> {
        if self.drops.load(SeqCst) {
            self.dropped.fetch_add(1, SeqCst);
            return Err(BackendError::unavailable(
                "scripted: the relay dropped the command",
            ));
        }
        self.inner.send(node, command).await
    }

    async fn inbox(&self, node: NodeId) -> Result<BoxStream<'static, NodeCommand>, BackendError> {
        self.inner.inbox(node).await
    }
}

#[async_trait]
impl Store for ScriptedStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<Option<User>, BackendError> {
        self.store.create_user(username, password_hash).await
    }
    async fn user_credentials(
        &self,
        username: &str,
    ) -> Result<Option<(User, String)>, BackendError> {
        self.store.user_credentials(username).await
    }
    async fn users_by_prefix(&self, prefix: &str, limit: u16) -> Result<Vec<User>, BackendError> {
        self.store.users_by_prefix(prefix, limit).await
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.pings.fetch_add(1, SeqCst);
        let result = if self.ping_fails.load(SeqCst) {
            Err(BackendError::unavailable(
                "scripted: the store does not answer",
            ))
        } else {
            self.store.ping().await
        };
        self.events.notify_waiters();
        result
    }
    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>, BackendError> {
        self.store.users(ids).await
    }
    async fn set_last_seen(&self, user: UserId, at: OffsetDateTime) -> Result<(), BackendError> {
        self.store.set_last_seen(user, at).await
    }
    async fn last_seen(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(UserId, Option<OffsetDateTime>)>, BackendError> {
        self.store.last_seen(users).await
    }
    async fn create_session(
        &self,
        token: TokenHash,
        user: UserId,
        expires_at: OffsetDateTime,
    ) -> Result<(), BackendError> {
        self.store.create_session(token, user, expires_at).await
    }
    async fn session_user(
        &self,
        token: TokenHash,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, BackendError> {
        self.store.session_user(token, now).await
    }
    async fn delete_session(&self, token: TokenHash) -> Result<(), BackendError> {
        self.store.delete_session(token).await
    }
    async fn create_direct(
        &self,
        a: UserId,
        b: UserId,
    ) -> Result<(ConversationId, bool), BackendError> {
        self.store.create_direct(a, b).await
    }
    async fn create_group(
        &self,
        creator: UserId,
        title: &str,
        members: &[UserId],
    ) -> Result<ConversationId, BackendError> {
        self.store.create_group(creator, title, members).await
    }
    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationView>, BackendError> {
        self.store.conversations_of(user).await
    }
    async fn conversation_of(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<Option<ConversationView>, BackendError> {
        self.store.conversation_of(user, conversation).await
    }
    async fn is_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<bool, BackendError> {
        self.store.is_member(conversation, user).await
    }
    async fn members(&self, conversation: ConversationId) -> Result<Vec<UserId>, BackendError> {
        self.members_reads.fetch_add(1, SeqCst);
        self.store.members(conversation).await
    }
    async fn contacts(
        &self,
        user: UserId,
        members_max: usize,
    ) -> Result<Vec<UserId>, BackendError> {
        self.store.contacts(user, members_max).await
    }
    async fn append_events(&self, batch: &[NewEvent]) -> Result<Vec<Appended>, BackendError> {
        let ids = batch.iter().map(|m| m.client_msg_id.clone()).collect();
        lock(&self.batches).push(ids);
        let poison = lock(&self.fail_bodies_containing).clone();
        let fail = *lock(&self.fail_appends);
        let result = if let Some(kind) = fail {
            Err(BackendError::new(kind, "scripted: the store fails appends"))
        } else if let Some(poison) = poison
            && batch.iter().any(|event| {
                matches!(&event.change, Change::Message { body, .. } if body.contains(&poison))
            })
        {
            Err(BackendError::unavailable("scripted: a poison body"))
        } else {
            self.store.append_events(batch).await
        };
        self.events.notify_waiters();
        result
    }
    async fn messages(
        &self,
        conversation: ConversationId,
        page: Page,
    ) -> Result<Vec<Message>, BackendError> {
        self.store.messages(conversation, page).await
    }
    async fn refusal(&self, event: &NewEvent) -> Result<Option<ApiError>, BackendError> {
        self.store.refusal(event).await
    }
    async fn events(
        &self,
        conversation: ConversationId,
        after_seq: Seq,
        limit: u16,
    ) -> Result<Vec<Event>, BackendError> {
        self.store.events(conversation, after_seq, limit).await
    }
    async fn mark_read(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq: Seq,
    ) -> Result<Option<Seq>, BackendError> {
        self.store.mark_read(conversation, user, seq).await
    }
    async fn mark_delivered(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq: Seq,
    ) -> Result<Option<Seq>, BackendError> {
        self.store.mark_delivered(conversation, user, seq).await
    }
    async fn set_muted(
        &self,
        conversation: ConversationId,
        user: UserId,
        muted: bool,
    ) -> Result<bool, BackendError> {
        self.store.set_muted(conversation, user, muted).await
    }
    async fn record_upload(
        &self,
        file: &StoredFile,
        quota_bytes: u64,
    ) -> Result<UploadRecorded, BackendError> {
        self.store.record_upload(file, quota_bytes).await
    }
    async fn file(&self, user: UserId, id: FileId) -> Result<Option<StoredFile>, BackendError> {
        self.store.file(user, id).await
    }
    async fn expire_uploads(
        &self,
        created_before: OffsetDateTime,
        limit: u16,
    ) -> Result<u64, BackendError> {
        self.store.expire_uploads(created_before, limit).await
    }
    async fn claim_unused_blobs(
        &self,
        unused_before: OffsetDateTime,
        limit: u16,
    ) -> Result<Vec<BlobKey>, BackendError> {
        self.store.claim_unused_blobs(unused_before, limit).await
    }
    async fn forget_blobs(&self, keys: &[BlobKey]) -> Result<(), BackendError> {
        self.store.forget_blobs(keys).await
    }
}
