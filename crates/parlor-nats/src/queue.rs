//! [`JsQueue`]: a [`Queue`] on NATS JetStream, for several processes consuming one queue.
//!
//! One queue is two file-storage streams: `PARLOR_{NAME}` (subject `parlor.queue.{name}`)
//! with one durable pull consumer shared by every process (competing consumers; `ack_wait`
//! is the visibility timeout), and
//! `PARLOR_{NAME}_DEAD` (subject `parlor.queue.{name}.dead`) holding the dead letters, whose
//! stream sequence is the dead letter's id. JetStream has no dead-letter queue of its own.
//!
//! Durability rests on the server: run it with `sync_interval: always`, so a publish ack
//! means the entry is on disk (see `scripts/services`). An append of several entries is one
//! atomic batch (all or nothing, and a few fsyncs instead of one per entry).
//!
//! The entries stream keeps what was acknowledged (limits retention) until a trim purges it
//! below the consumer's ack floor, at most once per [`TRIM_EVERY`]. With work-queue
//! retention each ack removed its entry from the stream's files at once, one by one:
//! receive + ack ran at 4,200 entries/s, against 62,000 this way. An
//! ack the server had not yet written down when it crashed redelivers its entry: a
//! duplicate, which the port allows.
//!
//! Where it differs from the embedded `WalQueue`, within the port's contract:
//! - `attempts` survives restarts (the server counts deliveries), and a delivery after a
//!   `retry_later` counts towards `attempts_max` like one after a timeout: an entry
//!   delivered more than `attempts_max` times is dead-lettered by `receive` either way.
//! - `depth().in_flight` is the consumer's ack-pending count, which includes entries
//!   waiting out a `retry_later` delay.
//! - A delivery id is fresh for every delivery, and known only to the handle that
//!   received it.
//!
//! With [`JsQueueOptions::exclusive`] the consumer uses a JetStream priority group with the
//! `pinned_client` policy (ADR-42, server 2.11+): the server pins one handle and hands entries
//! only to it, so entries are processed one batch after another, in append order, by one
//! process at a time. See `exclusive` for how the pin is held and how it moves.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::client::PublishErrorKind as ClientPublishErrorKind;
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PriorityPolicy, PullConsumer};
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{
    self, DeleteMessageErrorKind, LastRawMessageErrorKind, RetentionPolicy, StorageType,
};
use async_nats::jetstream::{self, AckKind, ErrorCode};
use async_nats::{HeaderMap, StatusCode, Subject, header};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;
use parlor_core::BackendError;
use parlor_core::ports::{
    DeadLetter, DeadLetterSelection, Delivery, DeliveryId, Queue, QueueDepth,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Semaphore;

const CONSUMER: &str = "parlor";
/// The one priority group of an exclusive queue's consumer.
const GROUP: &str = "parlor";
/// How often a handle purges acknowledged entries from the stream, at most.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// How often a standby handle asks whether the pin is free.
const STANDBY_POLL: Duration = Duration::from_millis(200);
const REASON: &str = "Parlor-Reason";
const ATTEMPTS: &str = "Parlor-Attempts";
const FAILED_AT: &str = "Parlor-Failed-At";

/// Messages published per round of acks when publishing message by message.
const PUBLISH_CHUNK: usize = 1024;
/// Publishes awaiting their ack across all appends of one handle. Kept below the context's
/// own window (see `open`), so that waiting for room happens here, all of a chunk at once:
/// appends that each hold part of the context's window and wait for more would deadlock.
const PUBLISH_WINDOW: usize = 4096;
/// Entries per atomic batch: the server's limit on a batch's size.
const ATOMIC_BATCH_MAX: usize = 1000;
/// The shortest expiry of a pull, so that `receive` with no wait still gets an answer.
const PULL_EXPIRES_MIN: Duration = Duration::from_millis(10);
/// Dead letters read, re-published and deleted per round of a redrive.
const REDRIVE_CHUNK: usize = 256;

/// Connects to NATS, failing (not retrying for ever) when the server cannot be reached.
pub async fn connect(url: &str) -> Result<async_nats::Client, BackendError> {
    async_nats::ConnectOptions::new()
        .name("parlor")
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|error| {
            BackendError::unavailable(format!("cannot connect to NATS at {url}: {error}"))
                .with_source(error)
        })
}

/// Tuning of one queue. Every process that opens the queue should use the same values: the
/// last one to open it sets the consumer's.
#[derive(Clone, Debug)]
pub struct JsQueueOptions {
    /// How long a consumer may hold an entry before it is delivered again (`ack_wait`).
    pub visibility_timeout: Duration,
    /// Deliveries after which an entry that keeps timing out goes to the dead-letter queue.
    pub attempts_max: u32,
    /// Entries handed out and not yet acknowledged, at most, over all processes
    /// (`max_ack_pending`).
    pub in_flight_max: usize,
    /// Bounds every call to the server, so that an outage fails `append` instead of hanging.
    pub append_timeout: Duration,
    /// Stream replicas: 1 for a single server, 3 for a cluster.
    pub replicas: usize,
    /// At most one handle (process) consumes the queue at a time; the others idle on standby
    /// (their `receive` returns empty after `wait`) until the active one is gone, for
    /// `takeover_after`, and one of them takes over. Use it where the order of processing
    /// matters across processes, as with the inbound queue: competing consumers would
    /// process neighbouring batches at once and commit them in either order.
    ///
    /// The server pins the first handle that pulls and keeps the pin for as long as that
    /// handle keeps pulling: a handle that does not call `receive` for `takeover_after` (a
    /// batch that takes that long, say) loses the pin. Entries a dead active handle held come
    /// back after the visibility timeout, before newer entries and in append order, if the
    /// visibility timeout is shorter than `takeover_after`.
    ///
    /// There is no renewal apart from pulling: the only pull that takes nothing (one with
    /// `max_bytes` too small for any entry) makes the server move the first entry due for
    /// redelivery to the back of its redelivery queue, which breaks the order above.
    ///
    /// Every process must agree: a handle opened without `exclusive` cannot pull from an
    /// exclusive consumer, and the last `open` sets the consumer's policy.
    pub exclusive: bool,
    /// With `exclusive`: how long the active handle may be gone (crashed, cut off from NATS,
    /// dropped) before a standby takes over (the consumer's `priority_timeout`). A standby
    /// that is waiting in `receive` gets the next entry within this bound after the active
    /// handle's last pull.
    pub takeover_after: Duration,
}

impl Default for JsQueueOptions {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(30),
            attempts_max: 8,
            in_flight_max: 64 * 1024,
            append_timeout: Duration::from_secs(5),
            replicas: 1,
            exclusive: false,
            takeover_after: Duration::from_secs(5),
        }
    }
}

/// A durable queue on two JetStream streams; see the module documentation.
pub struct JsQueue {
    name: String,
    jetstream: jetstream::Context,
    entries: stream::Stream,
    dead: stream::Stream,
    consumer: PullConsumer,
    subject: Subject,
    dead_subject: Subject,
    options: JsQueueOptions,
    next_id: AtomicU64,
    /// Deliveries handed out by this handle and not yet settled, by id.
    held: Mutex<HashMap<DeliveryId, Held>>,
    publish_window: Semaphore,
    /// With `exclusive`: the pull subject and this handle's pin.
    pinning: Option<Pinning>,
    /// When this handle last trimmed acknowledged entries from the stream.
    trimmed_at: Mutex<Instant>,
    /// When this handle last received an entry for the second time or more.
    redelivered_at: Mutex<Option<Instant>>,
}

/// What an exclusive handle needs to pull as a member of the consumer's priority group.
struct Pinning {
    /// `$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}`.
    next: Subject,
    /// The `Nats-Pin-Id` the server gave this handle, while it holds the pin.
    pin: Mutex<Option<String>>,
    /// Set by [`JsQueue::release`]: the handle never pulls again.
    released: AtomicBool,
}

#[derive(Clone, Copy)]
enum Pull {
    Now(Duration),
    InLine(Duration),
}

struct Held {
    /// The `$JS.ACK…` subject that settles this delivery.
    reply: Subject,
    payload: Bytes,
    attempts: u32,
    received_at: Instant,
}

impl JsQueue {
    /// Opens the queue `name` (lower-case letters, digits, `_`, `-`), creating or updating its
    /// streams and consumer, so any number of processes may open the same queue.
    pub async fn open(
        client: async_nats::Client,
        name: &str,
        options: JsQueueOptions,
    ) -> Result<Arc<Self>, BackendError> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid {
            return Err(BackendError::rejected(format!(
                "queue name {name:?} must be lower-case letters, digits, '_' or '-'"
            )));
        }
        if options.attempts_max == 0 || options.in_flight_max == 0 {
            return Err(BackendError::rejected(
                "attempts_max and in_flight_max must be at least 1",
            ));
        }
        if options.exclusive && options.takeover_after < Duration::from_millis(100) {
            return Err(BackendError::rejected(
                "takeover_after must be at least 100 ms",
            ));
        }
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(options.append_timeout)
            .max_ack_inflight(2 * PUBLISH_WINDOW)
            .build(client);
        let stream_name = format!("PARLOR_{}", name.to_ascii_uppercase());
        let subject = format!("parlor.queue.{name}");
        let dead_subject = format!("{subject}.dead");

        let entries_config = stream::Config {
            name: stream_name.clone(),
            description: Some(format!("Parlor queue {name}")),
            subjects: vec![subject.clone()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: options.replicas,
            allow_atomic_publish: true,
            ..Default::default()
        };
        let dead_config = stream::Config {
            name: format!("{stream_name}_DEAD"),
            description: Some(format!("Parlor queue {name}: dead letters")),
            subjects: vec![dead_subject.clone()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: options.replicas,
            ..Default::default()
        };
        // Unlimited deliveries on the server: `receive` moves an entry delivered more than
        // `attempts_max` times to the dead letters itself. The alternative, `max_deliver` and
        // the MAX_DELIVERIES advisory, loses the entry (stuck, never delivered again) if no
        // process happens to listen when the advisory is sent; this way the entry stays in
        // the stream until some `receive` has dead-lettered it, across any crash.
        let consumer_config = pull::Config {
            durable_name: Some(CONSUMER.to_string()),
            description: Some(format!("Parlor consumers of queue {name}")),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: options.visibility_timeout,
            max_deliver: -1,
            max_ack_pending: i64::try_from(options.in_flight_max).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let consumer_config = if options.exclusive {
            pull::Config {
                priority_policy: PriorityPolicy::PinnedClient,
                priority_groups: vec![GROUP.to_string()],
                priority_timeout: options.takeover_after,
                ..consumer_config
            }
        } else {
            consumer_config
        };

        let setup = async {
            let context = &jetstream;
            replace_empty_work_queue(context, &stream_name).await?;
            context
                .create_or_update_stream(entries_config)
                .await
                .map_err(|error| nats_error("create the queue stream", error))?;
            context
                .create_or_update_stream(dead_config.clone())
                .await
                .map_err(|error| nats_error("create the dead-letter stream", error))?;
            let entries = context
                .get_stream(&stream_name)
                .await
                .map_err(|error| nats_error("open the queue stream", error))?;
            let dead = context
                .get_stream(&dead_config.name)
                .await
                .map_err(|error| nats_error("open the dead-letter stream", error))?;
            let consumer: PullConsumer = entries
                .create_consumer(consumer_config)
                .await
                .map_err(|error| nats_error("create the queue consumer", error))?;
            Ok::<_, BackendError>((entries, dead, consumer))
        };
        let (entries, dead, consumer) = timed(options.append_timeout * 4, "open", setup).await?;
        let pinning = options.exclusive.then(|| {
            let next = Subject::from(format!(
                "$JS.API.CONSUMER.MSG.NEXT.{stream_name}.{CONSUMER}"
            ));
            Pinning {
                next,
                pin: Mutex::new(None),
                released: AtomicBool::new(false),
            }
        });

        Ok(Arc::new(Self {
            name: name.to_string(),
            jetstream,
            entries,
            dead,
            consumer,
            subject: Subject::from(subject),
            dead_subject: Subject::from(dead_subject),
            options,
            next_id: AtomicU64::new(1),
            held: Mutex::new(HashMap::new()),
            publish_window: Semaphore::new(PUBLISH_WINDOW),
            pinning,
            trimmed_at: Mutex::new(Instant::now()),
            redelivered_at: Mutex::new(None),
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// With `exclusive`: gives up this handle's pin, so that a standby takes over at once
    /// rather than `takeover_after` later. For a graceful shutdown, after the last `ack`:
    /// from now on this handle's `receive` returns empty after `wait`, and entries it still
    /// holds come back after the visibility timeout. Does nothing without `exclusive`.
    ///
    /// The server unpins whichever handle holds the pin: should this handle have lost it
    /// unnoticed within the last `takeover_after / 4` (cut off from NATS, say), the new
    /// holder loses it too and has to pull for it again.
    pub async fn release(&self) -> Result<(), BackendError> {
        let Some(pinning) = &self.pinning else {
            return Ok(());
        };
        pinning.released.store(true, Ordering::SeqCst);
        let held = pinning.pin.lock().expect("pin lock").take();
        if held.is_none() {
            return Ok(());
        }
        timed(self.options.append_timeout, "release the queue", async {
            self.entries
                .unpin_consumer(CONSUMER, GROUP)
                .await
                .map_err(|error| nats_error("release the queue", error))
        })
        .await
    }

    /// Deletes both streams, with every entry and dead letter: for tests and tear-down.
    pub async fn delete(&self) -> Result<(), BackendError> {
        for stream in [self.entries.cached_info(), self.dead.cached_info()] {
            let name = stream.config.name.clone();
            timed(self.options.append_timeout, "delete a stream", async {
                self.jetstream
                    .delete_stream(&name)
                    .await
                    .map_err(|error| nats_error("delete a stream", error))
            })
            .await?;
        }
        Ok(())
    }

    /// Publishes in order, message by message, and waits for every ack.
    async fn publish(
        &self,
        subject: &Subject,
        entries: Vec<(Bytes, Option<HeaderMap>)>,
    ) -> Result<(), BackendError> {
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let chunk: Vec<_> = entries.by_ref().take(PUBLISH_CHUNK).collect();
            let _permits = self
                .publish_window
                .acquire_many(chunk.len() as u32)
                .await
                .map_err(|_| BackendError::unavailable("the publish window is closed"))?;
            // Publish all, then await all: one round trip per chunk rather than per entry.
            let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(chunk.len());
            for (payload, headers) in chunk {
                let publish = match headers {
                    Some(headers) => {
                        self.jetstream
                            .publish_with_headers(subject.clone(), headers, payload)
                            .await
                    }
                    None => self.jetstream.publish(subject.clone(), payload).await,
                };
                acks.push(publish.map_err(publish_error)?);
            }
            for ack in join_all(acks.into_iter().map(IntoFuture::into_future)).await {
                ack.map_err(publish_error)?;
            }
        }
        Ok(())
    }

    /// Publishes entries in order as atomic batches (ADR-50), awaiting each commit.
    ///
    /// Why batches: with `sync_interval: always` the server fsyncs every message published
    /// on its own (about 1 300 entries/s here), while a committed batch costs a few fsyncs in
    /// all (about 20 000 entries/s in batches of 64). A batch is also all or nothing, so a
    /// failed append stores none of its entries.
    async fn publish_batches(
        &self,
        subject: &Subject,
        entries: Vec<Bytes>,
    ) -> Result<(), BackendError> {
        if entries.len() == 1 {
            let entries = entries.into_iter().map(|entry| (entry, None)).collect();
            return self.publish(subject, entries).await;
        }
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let batch: Vec<Bytes> = entries.by_ref().take(ATOMIC_BATCH_MAX).collect();
            if let Err(refusal) = self.publish_atomic(subject, batch.clone()).await? {
                // Refused as a whole, so nothing of it is stored: entry by entry is safe.
                tracing::warn!(queue = %self.name, %refusal, "atomic batch refused; publishing entry by entry");
                let batch = batch.into_iter().map(|entry| (entry, None)).collect();
                self.publish(subject, batch).await?;
            }
        }
        Ok(())
    }

    /// One atomic batch: the entries without a reply, then a commit that the server answers
    /// once the batch is stored. `Ok(Err(why))` when the server refused the batch (too many
    /// batches in flight, say), which stores none of it.
    async fn publish_atomic(
        &self,
        subject: &Subject,
        batch: Vec<Bytes>,
    ) -> Result<Result<(), String>, BackendError> {
        let client = self.jetstream.client();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let count = batch.len();
        for (index, entry) in batch.into_iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert(header::NATS_BATCH_ID, id.as_str());
            headers.insert(
                header::NATS_BATCH_SEQUENCE,
                (index + 1).to_string().as_str(),
            );
            if index + 1 < count {
                client
                    .publish_with_headers(subject.clone(), headers, entry)
                    .await
                    .map_err(|error| match error.kind() {
                        ClientPublishErrorKind::MaxPayloadExceeded => {
                            BackendError::rejected(format!("entry too large for NATS: {error}"))
                        }
                        _ => nats_error("publish", error),
                    })?;
                continue;
            }
            headers.insert(header::NATS_BATCH_COMMIT, "1");
            let reply = client
                .request_with_headers(subject.clone(), headers, entry)
                .await
                .map_err(|error| nats_error("commit a batch", error))?;
            let answer: serde_json::Value = serde_json::from_slice(&reply.payload)
                .map_err(|error| nats_error("read a batch commit", error))?;
            if let Some(error) = answer.get("error") {
                return Ok(Err(error.to_string()));
            }
        }
        Ok(Ok(()))
    }

    /// Pulls up to `max` messages. `Now` is a "no wait" pull with an expiry: the server
    /// answers as soon as it has any message (a plain pull would be held until `max` came)
    /// and ends it at the expiry, also when the consumer is at its `max_ack_pending` (without
    /// an expiry that pull would stay open, and later take messages nobody reads). `InLine`
    /// is a plain pull, queued behind other consumers' pulls instead of refused (a "no wait"
    /// pull is refused at once while theirs ask for more than there is).
    async fn pull(&self, kind: Pull, max: usize) -> Result<Vec<jetstream::Message>, BackendError> {
        let expires = match kind {
            Pull::Now(wait) | Pull::InLine(wait) => wait.max(PULL_EXPIRES_MIN),
        };
        if let Some(pinning) = &self.pinning {
            let bound = expires + self.options.append_timeout;
            return timed(
                bound,
                "pull from the queue",
                self.pull_pinned(pinning, kind, expires, max),
            )
            .await;
        }
        let request = async {
            let batch = match kind {
                Pull::Now(_) => {
                    self.consumer
                        .fetch()
                        .max_messages(max)
                        .expires(expires)
                        .messages()
                        .await
                }
                Pull::InLine(_) => {
                    self.consumer
                        .batch()
                        .max_messages(max)
                        .expires(expires)
                        .messages()
                        .await
                }
            };
            let mut batch = batch.map_err(|error| nats_error("pull from the queue", error))?;
            let mut messages = Vec::new();
            while let Some(message) = batch.next().await {
                match message {
                    Ok(message) => messages.push(message),
                    // The consumer holds `in_flight_max` unacknowledged entries: none for now.
                    Err(error) if error.to_string().contains("MaxAckPending") => break,
                    // What was handed out already must reach the caller (see `receive`).
                    Err(_) if !messages.is_empty() => break,
                    Err(error) => {
                        return Err(BackendError::unavailable(format!(
                            "pull from the queue: {error}"
                        )));
                    }
                }
            }
            Ok(messages)
        };
        let bound = expires + self.options.append_timeout;
        timed(bound, "pull from the queue", request).await
    }

    /// A pull as a member of the consumer's priority group, with this handle's pin if it has
    /// one: the library's `fetch` and `batch` refuse a pinned-client consumer (they would not
    /// keep the pin), and its continuous `stream` would prefetch entries nobody asked for.
    ///
    /// Without a pin the server parks the pull while another handle holds the pin (it ends
    /// empty at its expiry), or pins this handle with the first entry it hands over. A pull
    /// with a pin that is no longer the server's is refused (423): the pin is dropped and the
    /// handle is a standby again.
    async fn pull_pinned(
        &self,
        pinning: &Pinning,
        kind: Pull,
        expires: Duration,
        max: usize,
    ) -> Result<Vec<jetstream::Message>, BackendError> {
        let pin = pinning.pin.lock().expect("pin lock").clone();
        let request = PullRequest {
            batch: max,
            expires: u64::try_from(expires.as_nanos()).unwrap_or(u64::MAX),
            no_wait: matches!(kind, Pull::Now(_)),
            group: GROUP,
            id: pin.as_deref(),
        };
        let body = serde_json::to_vec(&request).expect("a pull request serializes");
        let client = self.jetstream.client();
        let inbox = Subject::from(client.new_inbox());
        // Dropping the subscription ends the pull, should this future be dropped early.
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|error| nats_error("pull from the queue", error))?;
        client
            .publish_with_reply(pinning.next.clone(), inbox, body.into())
            .await
            .map_err(|error| nats_error("pull from the queue", error))?;
        let mut messages = Vec::new();
        while messages.len() < max {
            let Some(message) = replies.next().await else {
                if !messages.is_empty() {
                    break;
                }
                return Err(BackendError::unavailable(
                    "pull from the queue: the connection closed",
                ));
            };
            match message.status {
                None | Some(StatusCode::OK) => {
                    if let Some(id) = message
                        .headers
                        .as_ref()
                        .and_then(|headers| headers.get_last(header::NATS_PIN_ID))
                    {
                        let mut pin = pinning.pin.lock().expect("pin lock");
                        if pin.as_deref() != Some(id.as_str()) {
                            *pin = Some(id.as_str().to_string());
                        }
                    }
                    messages.push(jetstream::Message {
                        message,
                        context: self.jetstream.clone(),
                    });
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                // The pull is over: expired, or nothing more to hand out right now.
                Some(StatusCode::TIMEOUT) | Some(StatusCode::NOT_FOUND) => break,
                Some(StatusCode::PIN_ID_MISMATCH) => {
                    let mut current = pinning.pin.lock().expect("pin lock");
                    if *current == pin {
                        *current = None;
                    }
                    break;
                }
                // The consumer holds `in_flight_max` unacknowledged entries: none for now.
                Some(StatusCode::REQUEST_TERMINATED)
                    if message
                        .description
                        .as_deref()
                        .is_some_and(|description| description.contains("MaxAckPending")) =>
                {
                    break;
                }
                // What was handed out already must reach the caller (see `receive`).
                Some(_) if !messages.is_empty() => break,
                Some(status) => {
                    return Err(BackendError::unavailable(format!(
                        "pull from the queue: {status} {}",
                        message.description.unwrap_or_default()
                    )));
                }
            }
        }
        Ok(messages)
    }

    /// Purges acknowledged entries, those below the consumer's ack floor, if this handle has
    /// not done so for [`TRIM_EVERY`]. Best effort: what is left is purged by the next trim.
    ///
    /// Not while redeliveries come in: a purge makes the server forget which entries are due
    /// for redelivery, and those it has not handed out yet would come back after newer ones
    /// (the entries a crashed persister held, say).
    async fn trim_if_due(&self) {
        let redelivered_at = *self.redelivered_at.lock().expect("trim lock");
        if redelivered_at.is_some_and(|at| at.elapsed() < self.options.visibility_timeout * 2) {
            return;
        }
        {
            let mut trimmed_at = self.trimmed_at.lock().expect("trim lock");
            if trimmed_at.elapsed() < TRIM_EVERY {
                return;
            }
            *trimmed_at = Instant::now();
        }
        let trim = async {
            let consumer = self
                .consumer
                .get_info()
                .await
                .map_err(|error| nats_error("read the queue consumer", error))?;
            let floor = consumer.ack_floor.stream_sequence;
            if floor > 0 {
                self.entries
                    .purge()
                    .sequence(floor + 1)
                    .await
                    .map_err(|error| nats_error("trim the queue", error))?;
            }
            Ok::<_, BackendError>(())
        };
        if let Err(error) = timed(self.options.append_timeout, "trim the queue", trim).await {
            tracing::debug!(%error, queue = %self.name, "cannot trim the queue");
        }
    }

    /// Whether another handle holds the pin of this exclusive queue.
    async fn pinned_elsewhere(&self) -> Result<bool, BackendError> {
        let info = timed(
            self.options.append_timeout,
            "read the queue consumer",
            async {
                self.consumer
                    .get_info()
                    .await
                    .map_err(|error| nats_error("read the queue consumer", error))
            },
        )
        .await?;
        Ok(info
            .priority_groups
            .iter()
            .any(|group| group.group == GROUP && group.pinned_client_id.is_some()))
    }

    /// Turns pulled messages into deliveries, dead-lettering those delivered more than
    /// `attempts_max` times.
    async fn hand_out(&self, messages: Vec<jetstream::Message>) -> Vec<Delivery> {
        let now = Instant::now();
        let mut deliveries = Vec::with_capacity(messages.len());
        for message in messages {
            let delivered = match message.info() {
                Ok(info) => u32::try_from(info.delivered).unwrap_or(u32::MAX),
                Err(error) => {
                    tracing::warn!(queue = %self.name, %error, "a pulled message without ack info");
                    continue;
                }
            };
            let message = message.message;
            let Some(reply) = message.reply else {
                continue;
            };
            if delivered > 1 {
                *self.redelivered_at.lock().expect("trim lock") = Some(now);
            }
            if delivered > self.options.attempts_max {
                let attempts = delivered - 1;
                let reason = format!(
                    "not acknowledged within the visibility timeout after {attempts} attempts"
                );
                // On failure the entry is delivered again after the visibility timeout and
                // this is tried again; the healthy entries of the batch still go out.
                if let Err(error) = self
                    .move_to_dead(&reply, message.payload, attempts, &reason)
                    .await
                {
                    tracing::warn!(queue = %self.name, %error, "cannot dead-letter an exhausted entry");
                }
                continue;
            }
            let id = DeliveryId(self.next_id.fetch_add(1, Ordering::Relaxed));
            deliveries.push(Delivery {
                id,
                payload: message.payload.to_vec(),
                attempts: delivered,
            });
            let held = Held {
                reply,
                payload: message.payload,
                attempts: delivered,
                received_at: now,
            };
            self.held.lock().expect("queue lock").insert(id, held);
        }
        let mut held = self.held.lock().expect("queue lock");
        // Deliveries a consumer dropped without settling them would pile up here; the server
        // bounds what can be in flight, so only stale ones can take us over that bound.
        if held.len() > self.options.in_flight_max {
            let visibility_timeout = self.options.visibility_timeout;
            held.retain(|_, held| now.duration_since(held.received_at) < visibility_timeout);
        }
        deliveries
    }

    /// Publishes a dead letter (awaiting its ack), then acknowledges the original: a crash in
    /// between leaves the entry twice, never lost.
    async fn move_to_dead(
        &self,
        reply: &Subject,
        payload: Bytes,
        attempts: u32,
        reason: &str,
    ) -> Result<(), BackendError> {
        let failed_at = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .expect("a UTC time formats as RFC 3339");
        let mut headers = HeaderMap::new();
        // Header values end at a line break.
        headers.insert(REASON, reason.replace(['\r', '\n'], " ").as_str());
        headers.insert(ATTEMPTS, attempts.to_string().as_str());
        headers.insert(FAILED_AT, failed_at.as_str());
        timed(
            self.options.append_timeout,
            "publish a dead letter",
            self.publish(&self.dead_subject, vec![(payload, Some(headers))]),
        )
        .await?;
        self.settle(reply, AckKind::Ack.into()).await
    }

    /// Sends an ack (or nak) and waits for the server to confirm it processed it, so that a
    /// following `depth` or `receive` sees its effect.
    async fn settle(&self, reply: &Subject, body: Bytes) -> Result<(), BackendError> {
        let client = self.jetstream.client();
        timed(self.options.append_timeout, "acknowledge", async {
            client
                .request(reply.clone(), body)
                .await
                .map(|_| ())
                .map_err(|error| nats_error("acknowledge", error))
        })
        .await
    }

    /// Up to `limit` dead letters in sequence order, from sequence `from` to `up_to`.
    async fn read_dead(
        &self,
        from: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, StreamMessage)>, BackendError> {
        let mut letters = Vec::new();
        let mut next = from.max(1);
        while letters.len() < limit && next <= up_to {
            let message = timed(self.options.append_timeout, "read a dead letter", async {
                self.dead
                    .raw_message_builder()
                    .sequence(next)
                    .next_by_subject(self.dead_subject.to_string())
                    .send()
                    .await
                    .map(Some)
                    .or_else(|error| match error.kind() {
                        LastRawMessageErrorKind::NoMessageFound => Ok(None),
                        _ => Err(nats_error("read a dead letter", error)),
                    })
            })
            .await?;
            let Some(message) = message else {
                break;
            };
            if message.sequence > up_to {
                break;
            }
            next = message.sequence + 1;
            letters.push((message.sequence, message));
        }
        Ok(letters)
    }

    async fn dead_state(&self) -> Result<stream::State, BackendError> {
        timed(
            self.options.append_timeout,
            "read the dead-letter stream",
            async {
                self.dead
                    .get_info()
                    .await
                    .map(|info| info.state)
                    .map_err(|error| nats_error("read the dead-letter stream", error))
            },
        )
        .await
    }

    /// Deletes one dead letter; `false` if it was not there.
    async fn delete_dead(&self, id: u64) -> Result<bool, BackendError> {
        let result = timed(self.options.append_timeout, "delete a dead letter", async {
            Ok(self.dead.delete_message(id).await)
        })
        .await?;
        match result {
            Ok(deleted) => Ok(deleted),
            // The server answers a missing sequence with the same code as a failed delete
            // ("stream store EOF", "no message found"): look before calling it a failure.
            Err(error) => match error.kind() {
                DeleteMessageErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_MESSAGE_DELETE_FAILED
                        && self.read_dead(id, id, 1).await?.is_empty() =>
                {
                    Ok(false)
                }
                _ => Err(nats_error("delete a dead letter", error)),
            },
        }
    }

    /// Re-publishes dead letters to the queue, then deletes them: a crash in between
    /// redrives twice (the consumers are idempotent) rather than losing a letter.
    async fn redrive_letters(
        &self,
        letters: Vec<(u64, StreamMessage)>,
    ) -> Result<usize, BackendError> {
        let payloads = letters
            .iter()
            .map(|(_, message)| message.payload.clone())
            .collect();
        timed(
            self.options.append_timeout,
            "redrive",
            self.publish_batches(&self.subject, payloads),
        )
        .await?;
        let mut moved = 0;
        for (id, _) in letters {
            if self.delete_dead(id).await? {
                moved += 1;
            }
        }
        Ok(moved)
    }
}

#[async_trait]
impl Queue for JsQueue {
    async fn append(&self, entries: Vec<Vec<u8>>) -> Result<(), BackendError> {
        if entries.is_empty() {
            return Ok(());
        }
        let entries = entries.into_iter().map(Bytes::from).collect();
        timed(
            self.options.append_timeout,
            "append",
            self.publish_batches(&self.subject, entries),
        )
        .await
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BackendError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        if let Some(pinning) = &self.pinning
            && pinning.released.load(Ordering::SeqCst)
        {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let give_up = Instant::now() + wait;
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            // A standby waits in line for one entry, which pins it if the pin is free: a
            // large parked pull would make the server refuse the active handle's "no wait"
            // pulls (it counts every parked pull's size against what is there).
            let standby = self
                .pinning
                .as_ref()
                .is_some_and(|pinning| pinning.pin.lock().expect("pin lock").is_none());
            if standby && self.pinned_elsewhere().await? {
                // Ask, don't pull: while the pin is another handle's, the server answers a
                // pull from this one by moving the first entry due for redelivery to the back
                // of its line, and the entries a crashed handle held would come back out of
                // order.
                tokio::time::sleep(left.min(STANDBY_POLL)).await;
                if Instant::now() >= give_up {
                    return Ok(Vec::new());
                }
                continue;
            }
            let mut messages = if standby {
                Vec::new()
            } else {
                self.pull(Pull::Now(left), max).await?
            };
            let left = give_up.saturating_duration_since(Instant::now());
            if messages.is_empty() && (!left.is_zero() || standby) {
                // Refused before the wait was over: wait in line for one, then take the rest.
                messages = self.pull(Pull::InLine(left), 1).await?;
                if !messages.is_empty() && max > 1 {
                    // The server has handed the first one out: it must reach the caller even
                    // if taking the rest fails, or it would come back only after the
                    // visibility timeout, behind the entries that followed it.
                    match self.pull(Pull::Now(Duration::ZERO), max - 1).await {
                        Ok(rest) => messages.extend(rest),
                        Err(error) => tracing::debug!(%error, "cannot take the rest of a batch"),
                    }
                }
            }
            let pulled = !messages.is_empty();
            let deliveries = self.hand_out(messages).await;
            let left = give_up.saturating_duration_since(Instant::now());
            if !deliveries.is_empty() || left.is_zero() {
                return Ok(deliveries);
            }
            if !pulled {
                // Both pulls ended early (at `in_flight_max`, say): do not poll in a loop.
                tokio::time::sleep(left.min(PULL_EXPIRES_MIN * 5)).await;
            }
        }
    }

    async fn ack(&self, ids: &[DeliveryId]) -> Result<(), BackendError> {
        let replies: Vec<(DeliveryId, Subject)> = {
            let held = self.held.lock().expect("queue lock");
            ids.iter()
                .filter_map(|id| held.get(id).map(|held| (*id, held.reply.clone())))
                .collect()
        };
        let Some(((_, last), rest)) = replies.split_last() else {
            return Ok(());
        };
        // One round trip for the lot: the server handles one consumer's acks in the order
        // they arrive, so its answer to the last one means every one before it is done too
        // (and a following `depth` or `receive` sees them all).
        let client = self.jetstream.client();
        timed(self.options.append_timeout, "acknowledge", async {
            for (_, reply) in rest {
                client
                    .publish(reply.clone(), AckKind::Ack.into())
                    .await
                    .map_err(|error| nats_error("acknowledge", error))?;
            }
            client
                .request(last.clone(), AckKind::Ack.into())
                .await
                .map(|_| ())
                .map_err(|error| nats_error("acknowledge", error))
        })
        .await?;
        {
            let mut held = self.held.lock().expect("queue lock");
            for (id, _) in &replies {
                held.remove(id);
            }
        }
        self.trim_if_due().await;
        Ok(())
    }

    async fn retry_later(&self, id: DeliveryId, delay: Duration) -> Result<(), BackendError> {
        let reply = match self.held.lock().expect("queue lock").get(&id) {
            Some(held) => held.reply.clone(),
            None => return Ok(()), // already acknowledged or dead-lettered
        };
        self.settle(&reply, AckKind::Nak(Some(delay)).into())
            .await?;
        self.held.lock().expect("queue lock").remove(&id);
        Ok(())
    }

    async fn dead_letter(&self, id: DeliveryId, reason: &str) -> Result<(), BackendError> {
        let (reply, payload, attempts) = match self.held.lock().expect("queue lock").get(&id) {
            Some(held) => (held.reply.clone(), held.payload.clone(), held.attempts),
            None => return Ok(()),
        };
        self.move_to_dead(&reply, payload, attempts, reason).await?;
        self.held.lock().expect("queue lock").remove(&id);
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let state = self.dead_state().await?;
        if state.messages == 0 {
            return Ok(Vec::new());
        }
        let letters = self
            .read_dead(state.first_sequence, u64::MAX, limit)
            .await?;
        Ok(letters
            .into_iter()
            .map(|(id, message)| {
                let header = |name: &str| {
                    message
                        .headers
                        .get(name)
                        .map(|value| value.as_str().to_string())
                };
                DeadLetter {
                    id,
                    payload: message.payload.to_vec(),
                    reason: header(REASON).unwrap_or_default(),
                    attempts: header(ATTEMPTS)
                        .and_then(|value| value.parse().ok())
                        .unwrap_or(0),
                    failed_at: header(FAILED_AT)
                        .and_then(|value| OffsetDateTime::parse(&value, &Rfc3339).ok())
                        .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                }
            })
            .collect())
    }

    async fn redrive(&self, selection: DeadLetterSelection) -> Result<usize, BackendError> {
        let state = self.dead_state().await?;
        if state.messages == 0 {
            return Ok(0);
        }
        match selection {
            DeadLetterSelection::All => {
                // Up to the last letter as of now: a redriven entry that fails again comes
                // back as a new letter and must not be redriven in the same call.
                let up_to = state.last_sequence;
                let mut from = state.first_sequence;
                let mut moved = 0;
                loop {
                    let letters = self.read_dead(from, up_to, REDRIVE_CHUNK).await?;
                    let Some((last, _)) = letters.last() else {
                        return Ok(moved);
                    };
                    from = last + 1;
                    moved += self.redrive_letters(letters).await?;
                }
            }
            DeadLetterSelection::Ids(mut ids) => {
                // Dead-letter order, like the embedded queue.
                ids.sort_unstable();
                ids.dedup();
                let mut moved = 0;
                for chunk in ids.chunks(REDRIVE_CHUNK) {
                    let mut letters = Vec::with_capacity(chunk.len());
                    for &id in chunk {
                        if let Some(letter) = self.read_dead(id, id, 1).await?.pop() {
                            letters.push(letter);
                        }
                    }
                    if !letters.is_empty() {
                        moved += self.redrive_letters(letters).await?;
                    }
                }
                Ok(moved)
            }
        }
    }

    async fn purge(&self, selection: DeadLetterSelection) -> Result<usize, BackendError> {
        match selection {
            DeadLetterSelection::All => {
                let state = self.dead_state().await?;
                if state.messages == 0 {
                    return Ok(0);
                }
                // Up to the last letter as of now, like the embedded queue's snapshot.
                let response = timed(self.options.append_timeout, "purge", async {
                    self.dead
                        .purge()
                        .sequence(state.last_sequence + 1)
                        .await
                        .map_err(|error| nats_error("purge", error))
                })
                .await?;
                Ok(usize::try_from(response.purged).unwrap_or(usize::MAX))
            }
            DeadLetterSelection::Ids(mut ids) => {
                ids.sort_unstable();
                ids.dedup();
                let mut deleted = 0;
                for id in ids {
                    if self.delete_dead(id).await? {
                        deleted += 1;
                    }
                }
                Ok(deleted)
            }
        }
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        let consumer = timed(self.options.append_timeout, "depth", async {
            self.consumer
                .get_info()
                .await
                .map_err(|error| nats_error("read the queue consumer", error))
        })
        .await?;
        let dead = self.dead_state().await?;
        // The stream still holds acknowledged entries until the next trim: count what the
        // consumer has not delivered yet and what it has delivered and not seen acknowledged.
        Ok(QueueDepth {
            pending: consumer.num_pending + consumer.num_ack_pending as u64,
            in_flight: consumer.num_ack_pending as u64,
            dead: dead.messages,
        })
    }
}

/// A pull request as the server reads it (ADR-13, with ADR-42's priority group).
#[derive(serde::Serialize)]
struct PullRequest<'a> {
    batch: usize,
    /// Nanoseconds.
    expires: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    no_wait: bool,
    group: &'a str,
    /// The pin this handle holds, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

/// Bounds `work` by `limit`: a server that does not answer is `Unavailable`, never a hang.
async fn timed<T>(
    limit: Duration,
    what: &str,
    work: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(BackendError::unavailable(format!(
            "{what}: NATS did not answer within {limit:?}"
        )))
    })
}

/// Every NATS failure is transient from our side: connection, timeout, no responders, a
/// server without JetStream. Input that can never succeed is caught before it is sent.
fn nats_error(what: &str, error: impl std::error::Error + Send + Sync + 'static) -> BackendError {
    BackendError::unavailable(format!("{what}: {error}")).with_source(error)
}

/// A publish the server refused for lack of storage (its disk, or the account's or stream's
/// storage limit: JetStream error codes 10023 "insufficient resources" and 10047 "insufficient
/// storage resources available") stored nothing and succeeds once space is freed:
/// `StorageFull`, an outage rather than a bad entry.
fn publish_error(error: async_nats::jetstream::context::PublishError) -> BackendError {
    use async_nats::jetstream::ErrorCode;
    let refused_code = std::error::Error::source(&error)
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
        .map(|refusal| refusal.error_code());
    match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => {
            BackendError::rejected(format!("entry too large for NATS: {error}")).with_source(error)
        }
        _ if matches!(
            refused_code,
            Some(ErrorCode::INSUFFICIENT_RESOURCES | ErrorCode::STORAGE_RESOURCES_EXCEEDED)
        ) =>
        {
            BackendError::storage_full(format!("publish: NATS is out of storage: {error}"))
                .with_source(error)
        }
        _ => nats_error("publish", error),
    }
}

/// Parlor's queues were work-queue streams before; JetStream cannot change a stream's
/// retention. An empty one is replaced; one that holds entries is refused with what to do.
async fn replace_empty_work_queue(
    context: &jetstream::Context,
    stream_name: &str,
) -> Result<(), BackendError> {
    // Processes that start together race to replace it: look again after a failed delete.
    let mut failure = None;
    for _ in 0..3 {
        let Ok(mut stream) = context.get_stream(stream_name).await else {
            return Ok(()); // none (any more), or the next call reports why not
        };
        let info = stream
            .info()
            .await
            .map_err(|error| nats_error("read the queue stream", error))?;
        if info.config.retention != RetentionPolicy::WorkQueue {
            return Ok(());
        }
        if info.state.messages > 0 {
            return Err(BackendError::rejected(format!(
                "the queue stream {stream_name} is a work-queue stream of an earlier Parlor \
                 holding {} entries: let that version's persisters drain it, then start again",
                info.state.messages
            )));
        }
        tracing::info!(stream = stream_name, "replacing an empty work-queue stream");
        match context.delete_stream(stream_name).await {
            Ok(_) => return Ok(()),
            Err(error) => failure = Some(nats_error("replace the queue stream", error)),
        }
    }
    Err(failure.expect("a failed attempt"))
}
