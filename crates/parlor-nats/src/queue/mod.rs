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
//! message, a pack (see `packs`), or when they do not fit in one, an atomic batch of packs:
//! all or nothing either way, and the server's work is per message, not per entry.
//!
//! The entries stream keeps what was acknowledged (limits retention) until a trim purges it
//! below the consumer's ack floor, at most once per [`TRIM_EVERY`](trim::TRIM_EVERY). With work-queue
//! retention each ack removed its entry from the stream's files at once, one by one:
//! receive + ack ran at 4,200 entries/s, against 62,000 this way. An
//! ack the server had not yet written down when it crashed redelivers its entry: a
//! duplicate, which the port allows.
//!
//! Where it differs from the embedded `WalQueue`, within the port's contract:
//! - `attempts` survives restarts (the server counts deliveries), and a delivery after a
//!   `retry_later` counts towards `attempts_max` like one after a timeout: an entry
//!   delivered more than `attempts_max` times is dead-lettered by `receive` either way.
//! - `depth()` counts messages, not entries (one per append, as a rule), and `in_flight` is
//!   the consumer's ack-pending count, which includes entries waiting out a `retry_later`.
//! - An acknowledged entry comes back after a crash of its handle if others in its pack
//!   were not settled yet: a duplicate, which the port allows.
//! - A delivery id is fresh for every delivery, and known only to the handle that
//!   received it.
//!
//! With [`JsQueueOptions::exclusive`] the consumer uses a JetStream priority group with the
//! `pinned_client` policy (ADR-42, server 2.11+): the server pins one handle and hands entries
//! only to it, so entries are processed one batch after another, in append order, by one
//! process at a time. See [`JsQueueOptions::exclusive`] for how the pin is held and how it
//! moves.
//!
//! The code is cut by concern, one file each: `packs` (the pack format, and what a handle
//! holds of each pack, entry by entry), `publish` (append: packs, atomic batches, the
//! message-by-message fallback, which refusals are `Rejected` or `StorageFull`), `consume` (pull,
//! hand out, ack, retry later, timeouts, dead-lettering of entries delivered too often), `exclusive`
//! (the pinned-client priority group: pinned pulls, standby, release), `trim` (purging
//! acknowledged entries below the ack floor) and `dead_letters` (the dead-letter stream:
//! move, list, redrive, purge). This file holds the options, the opening of the streams and
//! consumer, and the `Queue` impl, which only dispatches.

mod consume;
mod dead_letters;
mod exclusive;
mod packs;
mod publish;
mod trim;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::{Subject, jetstream};
use async_trait::async_trait;
use parlor_core::BackendError;
use parlor_core::ports::{
    DeadLetter, DeadLetterSelection, Delivery, DeliveryId, Queue, QueueDepth,
};
use tokio::sync::Semaphore;

use exclusive::Pinning;
use packs::Packs;
use publish::PUBLISH_WINDOW;

const CONSUMER: &str = "parlor";

/// Tuning of one queue. Every process that opens the queue should use the same values: the
/// last one to open it sets the consumer's.
#[derive(Clone, Debug)]
pub struct JsQueueOptions {
    /// How long a consumer may hold an entry before it is delivered again. The handle
    /// enforces it entry by entry; the server's `ack_wait` is a little longer (see
    /// `server_visibility_timeout`), for the messages of a handle that died.
    pub visibility_timeout: Duration,
    /// Deliveries after which an entry that keeps timing out goes to the dead-letter queue.
    pub attempts_max: u32,
    /// Messages handed out and not yet settled, at most, over all processes
    /// (`max_ack_pending`): an append is one message (a pack) when its entries fit in one.
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
    /// The messages this handle pulled and has not settled, entry by entry.
    packs: Mutex<Packs>,
    /// Entries per message pulled, in sixteenths, smoothed: how many messages to pull.
    entries_per_message: AtomicU64,
    publish_window: Semaphore,
    /// With `exclusive`: the pull subject and this handle's pin.
    pinning: Option<Pinning>,
    /// When this handle last trimmed acknowledged entries from the stream.
    trimmed_at: Mutex<Instant>,
    /// When this handle last received an entry for the second time or more.
    redelivered_at: Mutex<Option<Instant>>,
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
            ack_wait: server_visibility_timeout(options.visibility_timeout),
            max_deliver: -1,
            max_ack_pending: i64::try_from(options.in_flight_max).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let consumer_config = if options.exclusive {
            exclusive::pinned_consumer(consumer_config, options.takeover_after)
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
        let pinning = options.exclusive.then(|| Pinning::new(&stream_name));

        let queue = Arc::new(Self {
            name: name.to_string(),
            jetstream,
            entries,
            dead,
            consumer,
            subject: Subject::from(subject),
            dead_subject: Subject::from(dead_subject),
            options,
            next_id: AtomicU64::new(1),
            packs: Mutex::new(Packs::default()),
            entries_per_message: AtomicU64::new(16),
            publish_window: Semaphore::new(PUBLISH_WINDOW),
            pinning,
            trimmed_at: Mutex::new(Instant::now()),
            redelivered_at: Mutex::new(None),
        });
        tokio::spawn(keep(Arc::downgrade(&queue)));
        Ok(queue)
    }

    pub fn name(&self) -> &str {
        &self.name
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
}

#[async_trait]
impl Queue for JsQueue {
    async fn append(&self, entries: Vec<Vec<u8>>) -> Result<(), BackendError> {
        self.append_entries(entries).await
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BackendError> {
        self.receive_entries(max, wait).await
    }

    async fn ack(&self, ids: &[DeliveryId]) -> Result<(), BackendError> {
        self.ack_entries(ids).await
    }

    async fn retry_later(&self, id: DeliveryId, delay: Duration) -> Result<(), BackendError> {
        self.retry_entry_later(id, delay).await
    }

    async fn dead_letter(&self, id: DeliveryId, reason: &str) -> Result<(), BackendError> {
        self.dead_letter_entry(id, reason).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        self.list_dead(limit).await
    }

    async fn redrive(&self, selection: DeadLetterSelection) -> Result<usize, BackendError> {
        self.redrive_dead(selection).await
    }

    async fn purge(&self, selection: DeadLetterSelection) -> Result<usize, BackendError> {
        self.purge_dead(selection).await
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

    async fn receive_held(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        Ok(self.take_waiting(max).await.unwrap_or_default())
    }

    async fn hand_over(&self) -> Result<(), BackendError> {
        self.hand_over_pin().await
    }
}

/// The handle's keeper: gives back the entries of held packs whose visibility timeout ran
/// out, until the handle is dropped.
async fn keep(queue: Weak<JsQueue>) {
    let Some(tick) = queue
        .upgrade()
        .map(|queue| keeper_tick(queue.options.visibility_timeout))
    else {
        return;
    };
    loop {
        tokio::time::sleep(tick).await;
        let Some(queue) = queue.upgrade() else {
            return;
        };
        queue.expire_held().await;
    }
}

fn keeper_tick(visibility_timeout: Duration) -> Duration {
    (visibility_timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

/// The server's visibility timeout (`ack_wait`): a little longer than the handle's own, so
/// that a live handle gives back a pack's unsettled entries (without those settled beside
/// them) before the server would redeliver the whole pack. The server's is what brings
/// back the packs of a handle that died.
pub(super) fn server_visibility_timeout(visibility_timeout: Duration) -> Duration {
    let margin = (visibility_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    visibility_timeout + margin + keeper_tick(visibility_timeout)
}

impl Drop for JsQueue {
    /// A handle that closes gives back what it holds, without what it settled, so that
    /// another handle gets exactly the unsettled entries; at once, rather than after the
    /// visibility timeout, unless no runtime is left to do it.
    fn drop(&mut self) {
        // Unless the pin may be another handle's by now (see `JsQueue::release`).
        if self.pinning.is_some() && !self.holds_pin_for(Duration::ZERO) {
            return;
        }
        let resolutions = self
            .packs
            .get_mut()
            // Exactly the unsettled entries, as the port promises a closing handle; a
            // persister releases its exclusive handle before (`JsQueue::release`).
            .map(|packs| packs.give_back_all(Instant::now(), false))
            .unwrap_or_default();
        if resolutions.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let settler = consume::Settler::of(self);
        runtime.spawn(async move {
            if let Err(error) = settler.resolve(resolutions).await {
                tracing::warn!(%error, "a closed queue handle could not give back its entries");
            }
        });
    }
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
