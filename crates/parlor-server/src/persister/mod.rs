//! The persister: inbound queue → store → notification queue.
//!
//! Per batch: decode, store in one transaction (the store checks the conversation's rules
//! again, assigns gap-free `seq` and deduplicates), append one notification per stored
//! event (or per refused change, to its sender), and only then acknowledge the inbound
//! entries. A crash anywhere in between redelivers the entries; the store answers them as
//! duplicates and their notifications are sent again (clients drop events whose `seq` they
//! have).

use std::time::Duration;

use parlor_core::events::EventData;
use parlor_core::ids::ConversationId;
use parlor_core::ports::{Appended, Delivery, DeliveryId, Lease, NewEvent, Stored as StoredEvent};
use parlor_core::protocol::ServerFrame;
use parlor_core::queue::{Audience, InboundEntry, Notification};
use parlor_core::{BackendError, BackendErrorKind};
use time::OffsetDateTime;

use crate::config::ConsumerConfig;
use crate::consumer::{Attempt, Consumer};
use crate::metrics as m;
use crate::{Deps, Shutdown, ShutdownSignal, notifier};
use hold::Hold;

mod batch;
mod hold;
mod share;

pub use batch::{BatchOutcome, persist_batch};

/// How long one receive waits for entries before checking for shutdown.
const RECEIVE_WAIT: Duration = Duration::from_millis(500);

/// Batches stored and waiting for their notifications, at most. Two stages overlap: while
/// one batch's notifications are appended and its entries acknowledged (an fsync each), the
/// next batch is already being stored.
const STORED_BATCHES_QUEUED_MAX: usize = 2;

/// Runs until `shutdown`, then drains what is queued for up to `drain_timeout`.
/// Returns an error only when durability is lost (a poisoned queue): the process must exit.
/// Where several persisters share the inbound queue (`Deps::inbound_lease`), this one
/// stores the partitions that are its share, one task each (`share.rs`), and delivers their
/// notifications (with `config` too: a process consumes both queues alike).
pub async fn run(
    deps: Deps,
    config: ConsumerConfig,
    shutdown: Shutdown,
) -> Result<(), BackendError> {
    match deps.inbound_lease.clone() {
        Some(sharing) => share::run(deps, config, shutdown, sharing).await,
        None => run_partition(deps, config, shutdown, None).await,
    }
}

/// Stores what `deps.inbound` holds: alone (`hold` is `None`) until `shutdown`; or, under
/// `hold`, in tenures, each from taking the partition's lease to handing it over.
async fn run_partition(
    deps: Deps,
    config: ConsumerConfig,
    shutdown: Shutdown,
    mut hold: Option<Hold>,
) -> Result<(), BackendError> {
    let inbound = Consumer::new(deps.inbound.clone(), "inbound", config);
    loop {
        if let Some(hold) = &mut hold
            && !share::wait_for_lease(hold, &shutdown).await
        {
            return Ok(());
        }
        let outcome = tenure(&deps, &inbound, &shutdown, hold.as_mut()).await;
        let Some(hold) = &mut hold else {
            return outcome;
        };
        outcome?;
        // What was stored is acknowledged: the next holder takes over now, with nothing
        // twice. Entries still held go back to the queue first, in order.
        if let Err(error) = inbound.queue().hand_over().await {
            tracing::warn!(%error, "cannot hand the partition's queue over; it passes after a timeout");
        }
        hold.release().await;
        metrics::gauge!(m::PARTITIONS_HELD).decrement(1);
        if shutdown.is_fired() {
            return Ok(());
        }
    }
}

/// Stores and announces until `shutdown` (then drains), or until `hold` ends: the partition
/// is another persister's share now, or its lease was lost.
async fn tenure(
    deps: &Deps,
    inbound: &Consumer,
    shutdown: &Shutdown,
    hold: Option<&mut Hold>,
) -> Result<(), BackendError> {
    // A partition's holder delivers the partition's notifications too, for as long as it
    // holds it (`notifier::deliver_partition`).
    let delivering = hold.is_some().then(|| {
        metrics::gauge!(m::PARTITIONS_HELD).increment(1);
        let (stop, stopped) = ShutdownSignal::new();
        let notifier = notifier::deliver_partition(deps.clone(), inbound.config().clone(), stopped);
        (stop, tokio::spawn(notifier))
    });
    let (stored_tx, mut stored_rx) = tokio::sync::mpsc::channel(STORED_BATCHES_QUEUED_MAX);
    let announcer = {
        let (deps, inbound, shutdown) = (deps.clone(), inbound.clone(), shutdown.clone());
        tokio::spawn(async move {
            // In batch order, so per conversation the notifications follow `seq`.
            while let Some(stored) = stored_rx.recv().await {
                announce(&deps, &inbound, &shutdown, stored).await?;
            }
            Ok(())
        })
    };
    let storing = store_until_shutdown(deps, inbound, shutdown.clone(), stored_tx, hold).await;
    let announcing = announcer.await.unwrap_or_else(|panic| {
        std::panic::resume_unwind(panic.into_panic());
    });
    let delivered = match delivering {
        Some((stop, notifier)) => {
            stop.fire();
            notifier.await.unwrap_or_else(|panic| {
                std::panic::resume_unwind(panic.into_panic());
            })
        }
        None => Ok(()),
    };
    storing.and(announcing).and(delivered)
}

async fn store_until_shutdown(
    deps: &Deps,
    inbound: &Consumer,
    shutdown: Shutdown,
    stored: tokio::sync::mpsc::Sender<Stored>,
    mut hold: Option<&mut Hold>,
) -> Result<(), BackendError> {
    let config = inbound.config();
    let mut draining_until = None;
    loop {
        if draining_until.is_none() && shutdown.is_fired() {
            draining_until = Some(tokio::time::Instant::now() + config.drain_timeout);
        }
        // A partition's holder that stops, or whose partition is another's share now, pulls
        // nothing more: it stores what the queue handle already holds back (the rest of a
        // pack it pulled), then hands over. Handed back instead, those entries would be
        // appended again behind newer ones, out of order.
        let finishing = hold
            .as_deref()
            .is_some_and(|hold| draining_until.is_some() || !hold.is_share());
        let lease = match hold.as_deref_mut() {
            None => None,
            Some(hold) => match hold.current().await {
                Some(lease) => Some(lease),
                None => return Ok(()),
            },
        };
        let wait = if draining_until.is_some() {
            Duration::ZERO
        } else {
            RECEIVE_WAIT
        };
        let deliveries = if finishing {
            inbound.queue().receive_held(config.batch_max).await
        } else {
            // A partition's holder lets a receive finish (it waits 0.5 s at most): a pull
            // cut short can still be answered, to nobody, and what it brought would come
            // back only after the visibility timeout, behind what the next holder stored.
            let interruptible = draining_until.is_none() && hold.is_none();
            tokio::select! {
                deliveries = inbound.queue().receive(config.batch_max, wait) => deliveries,
                _ = shutdown.clone().wait(), if interruptible => continue,
            }
        };
        let deliveries = match deliveries {
            Ok(deliveries) => deliveries,
            Err(error) => {
                inbound.queue_failed(error).await?;
                continue;
            }
        };
        if deliveries.is_empty() {
            if draining_until.is_some() || finishing {
                return Ok(());
            }
            continue;
        }
        if let Some(until) = draining_until
            && tokio::time::Instant::now() > until
        {
            tracing::warn!("persister drain timed out; the rest is redelivered on restart");
            return Ok(());
        }
        // Redelivered entries first: they are older than the fresh ones. One batch all the
        // same: after a failover most of a batch is redelivered, and storing those one by
        // one (as this did, to keep a poison entry from holding its batch-mates back) was
        // slow enough that held entries timed out and came back again, without end. A batch
        // that fails is tried entry by entry instead (see `store`).
        let (mut deliveries, fresh): (Vec<_>, Vec<_>) = deliveries
            .into_iter()
            .partition(|delivery| delivery.attempts > 1);
        deliveries.extend(fresh);
        let batch = match store(deps, inbound, deliveries, &shutdown, false, lease.as_ref()).await {
            Ok(batch) => batch,
            Err(error) if error.kind == BackendErrorKind::Fenced => {
                // The lease lapsed while the batch waited (for the store, or in a pause):
                // another persister may hold the partition now. The tenure ends, and the
                // hand-over gives the batch back to whoever holds the queue next, in order,
                // this persister too if it takes the lease again. Pulling on instead
                // would store newer entries before these.
                metrics::counter!(m::BATCHES_FENCED).increment(1);
                if let Some(hold) = hold.as_deref_mut() {
                    hold.lose(&error.to_string());
                }
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        if let Some(batch) = batch
            && stored.send(batch).await.is_err()
        {
            // The announcer stopped on a poisoned queue; its error is the one to report.
            return Ok(());
        }
    }
}

/// A batch in the store, its notifications not yet appended, its entries not yet acked.
struct Stored {
    deliveries: Vec<Delivery>,
    notifications: Vec<(ConversationId, Vec<u8>)>,
    done: Vec<DeliveryId>,
}

/// Stores a batch; `None` when nothing is left to announce (all failed or dead-lettered).
/// A batch the store refuses while it still answers may be one entry's fault: its entries
/// are tried alone, in order, at once, and only those that fail alone are handed back or
/// dead-lettered. `failed_before`: the entries were part of a batch that failed just now.
/// Under `lease`, a batch the store fences is `Err(Fenced)`: nothing of it was stored.
async fn store(
    deps: &Deps,
    inbound: &Consumer,
    deliveries: Vec<Delivery>,
    shutdown: &Shutdown,
    failed_before: bool,
    lease: Option<&Lease>,
) -> Result<Option<Stored>, BackendError> {
    if deliveries.is_empty() {
        return Ok(None);
    }
    let mut batch: Vec<NewEvent> = Vec::with_capacity(deliveries.len());
    let mut batch_ids: Vec<DeliveryId> = Vec::with_capacity(deliveries.len());
    let mut batch_attempts: Vec<u32> = Vec::with_capacity(deliveries.len());
    for delivery in &deliveries {
        match InboundEntry::decode(&delivery.payload) {
            Ok(entry) => {
                batch.push(entry.into_new_event());
                batch_ids.push(delivery.id);
                batch_attempts.push(delivery.attempts);
            }
            Err(error) => {
                let reason = format!("undecodable inbound entry: {error}");
                inbound.dead_letter(delivery.id, &reason).await?;
            }
        }
    }
    if batch.is_empty() {
        return Ok(None);
    }
    metrics::histogram!(m::PERSIST_BATCH_MESSAGES).record(batch.len() as f64);

    let mut full = SpaceWait::new("store events");
    // A store whose batch spans several transactions (DynamoDB: one per conversation) may
    // have stored part of a batch that failed: after a failure, a duplicate is announced to
    // everyone, as a redelivered one is.
    let mut failed_before = failed_before;
    let results = loop {
        let appended = match lease {
            Some(lease) => deps.store.append_events_fenced(&batch, lease).await,
            None => deps.store.append_events(&batch).await,
        };
        let error = match appended {
            Ok(results) => {
                full.ended();
                break results;
            }
            Err(error) if error.kind == BackendErrorKind::Fenced => return Err(error),
            Err(error) => error,
        };
        failed_before = true;
        // An outage (the store answers nothing at all) is nobody's fault: the batch waits
        // here for the store and spends no attempt. Handing it back to the queue instead
        // would let newer entries be stored before it once the store is back, and a long
        // outage would dead-letter healthy messages.
        let backend_down = error.kind == BackendErrorKind::Unavailable
            && !shutdown.is_fired()
            && deps.store.ping().await.is_err();
        if batch.len() > 1
            && !backend_down
            && error.kind != BackendErrorKind::StorageFull
            && !crate::consumer::stops(&error)
        {
            tracing::warn!(%error, entries = batch.len(), "a batch failed: its entries are tried alone");
            let decoded = deliveries
                .into_iter()
                .filter(|delivery| batch_ids.contains(&delivery.id))
                .collect();
            return store_each(deps, inbound, decoded, shutdown, lease).await;
        }
        let entries = attempts(&deliveries, &batch_ids, backend_down, shutdown);
        let Some(error) = inbound.apply(error, &entries).await? else {
            return Ok(None);
        };
        if backend_down {
            wait_for_store(deps, shutdown, &error).await;
        } else {
            // A full disk is an outage too, but the store still answers its ping: the batch
            // itself is what tells when space is back.
            full.pause(shutdown, &error).await;
        }
    };
    debug_assert_eq!(results.len(), batch.len());

    let now = OffsetDateTime::now_utc();
    let mut notifications = Vec::with_capacity(results.len());
    let mut done = Vec::with_capacity(results.len());
    let entries = batch_ids.iter().zip(&batch_attempts).zip(&batch);
    for (result, ((id, attempts), new)) in results.into_iter().zip(entries) {
        let attempts = if failed_before {
            (*attempts).max(2)
        } else {
            *attempts
        };
        match notification(result, new, attempts, now) {
            Ok(notification) => {
                notifications.push((new.conversation_id, notification.encode()));
                done.push(*id);
            }
            Err(reason) => inbound.dead_letter(*id, &reason).await?,
        }
    }
    Ok(Some(Stored {
        deliveries,
        notifications,
        done,
    }))
}

/// Stores each of `deliveries` alone, in order, after their batch failed: one stored batch
/// of all that were stored.
async fn store_each(
    deps: &Deps,
    inbound: &Consumer,
    deliveries: Vec<Delivery>,
    shutdown: &Shutdown,
    lease: Option<&Lease>,
) -> Result<Option<Stored>, BackendError> {
    let mut all = Stored {
        deliveries: Vec::new(),
        notifications: Vec::new(),
        done: Vec::new(),
    };
    for delivery in deliveries {
        // Boxed: `store` calls this, so its future would contain itself.
        let one = Box::pin(store(deps, inbound, vec![delivery], shutdown, true, lease)).await?;
        if let Some(one) = one {
            all.deliveries.extend(one.deliveries);
            all.notifications.extend(one.notifications);
            all.done.extend(one.done);
        }
    }
    Ok((!all.deliveries.is_empty()).then_some(all))
}

/// What the store's answer for `new` (delivered for the `attempts`th time) tells its
/// audience; `Err` with the reason when it must be dead-lettered instead.
fn notification(
    result: Appended,
    new: &NewEvent,
    attempts: u32,
    now: OffsetDateTime,
) -> Result<Notification, String> {
    Ok(match result {
        Appended::New(stored) => {
            metrics::counter!(m::MESSAGES_STORED).increment(1);
            metrics::histogram!(m::STORE_SECONDS)
                .record((now - new.accepted_at).as_seconds_f64().max(0.0));
            announcement(stored, new, false)
        }
        Appended::Duplicate(stored) => {
            metrics::counter!(m::MESSAGES_DUPLICATE).increment(1);
            // A first delivery that is a duplicate is a client's resend of an event stored
            // and announced before: only the sender needs it back, to learn its seq. A
            // redelivered entry may have been stored by an attempt that died before
            // announcing it, so everyone gets it then.
            announcement(stored, new, attempts == 1)
        }
        Appended::Refused(error) => {
            // Allowed when the gateway accepted it, refused now (the sender was removed
            // meanwhile, the message deleted): the sender learns why, by its id.
            metrics::counter!(m::CHANGES_REFUSED).increment(1);
            let frame = ServerFrame::error(error, Some(new.client_msg_id.clone()));
            Notification::new(
                new.conversation_id,
                None,
                Audience::Sender(new.sender_id),
                0,
                new.accepted_at,
                &frame,
            )
        }
        Appended::Rejected(reason) => return Err(reason),
    })
}

/// The notification of a stored event: a `message` frame for a message (the frame older
/// clients know), an `event` frame for every other kind; to every member, and to a member
/// who just left or was removed; or, for a resend, to its sender only and out of order.
fn announcement(stored: StoredEvent, new: &NewEvent, sender_only: bool) -> Notification {
    let StoredEvent { event, members_seq } = stored;
    let (seq, audience) = if sender_only {
        (None, Audience::Sender(new.sender_id))
    } else {
        let audience = match event.data.departed() {
            Some(user) => Audience::MembersAnd(user),
            None => Audience::Members,
        };
        (Some(event.seq), audience)
    };
    let conversation = event.conversation_id;
    let frame = match event.data {
        EventData::Message { message } => ServerFrame::Message { message },
        data => ServerFrame::Event {
            event: parlor_core::events::Event { data, ..event },
        },
    };
    Notification::new(
        conversation,
        seq,
        audience,
        members_seq,
        new.accepted_at,
        &frame,
    )
}

/// The policy's view of the entries `ids` among `deliveries`, after a failed step.
fn attempts(
    deliveries: &[Delivery],
    ids: &[DeliveryId],
    backend_down: bool,
    shutdown: &Shutdown,
) -> Vec<Attempt> {
    deliveries
        .iter()
        .filter(|delivery| ids.contains(&delivery.id))
        .map(|delivery| Attempt {
            delivery: delivery.id,
            attempts: delivery.attempts,
            alone: ids.len() == 1,
            backend_down,
            can_wait: !shutdown.is_fired(),
        })
        .collect()
}

/// Waits until the store answers again, or until shutdown.
async fn wait_for_store(deps: &Deps, shutdown: &Shutdown, error: &BackendError) {
    tracing::warn!(%error, "the store is unavailable: the persister waits for it");
    metrics::counter!(m::STORE_OUTAGES).increment(1);
    let mut pause = Duration::from_millis(100);
    while !shutdown.is_fired() {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.clone().wait() => return,
        }
        if deps.store.ping().await.is_ok() {
            tracing::info!("the store answers again");
            return;
        }
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Waits out a full disk (store or queue) for one step, spending no attempt: the step is
/// simply tried again after a pause of 100 ms, doubling up to 1 s, so work resumes within
/// about a second of space being freed and nothing newer overtakes it.
struct SpaceWait {
    step: &'static str,
    /// The next pause; `None` until the step first found the disk full.
    next: Option<Duration>,
}

impl SpaceWait {
    const PAUSE_MIN: Duration = Duration::from_millis(100);
    const PAUSE_MAX: Duration = Duration::from_secs(1);

    fn new(step: &'static str) -> Self {
        Self { step, next: None }
    }

    /// Pauses before the next try, or until shutdown: the step is then tried once more, and
    /// if the disk is still full its entries go back to the queue, redelivered after the
    /// restart.
    async fn pause(&mut self, shutdown: &Shutdown, error: &BackendError) {
        let pause = match self.next {
            Some(pause) => pause,
            None => {
                tracing::error!(
                    %error,
                    step = self.step,
                    "out of disk space: the persister waits until space is freed"
                );
                metrics::counter!(m::STORAGE_FULL, "step" => self.step).increment(1);
                Self::PAUSE_MIN
            }
        };
        self.next = Some((pause * 2).min(Self::PAUSE_MAX));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.clone().wait() => {}
        }
    }

    /// The step succeeded: says so if it had waited.
    fn ended(&mut self) {
        if self.next.take().is_some() {
            tracing::info!(
                step = self.step,
                "disk space is back: the persister goes on"
            );
        }
    }
}

/// Appends the batch's notifications, then acknowledges its inbound entries.
async fn announce(
    deps: &Deps,
    inbound: &Consumer,
    shutdown: &Shutdown,
    stored: Stored,
) -> Result<(), BackendError> {
    if stored.done.is_empty() {
        return Ok(());
    }
    let mut full = SpaceWait::new("append notifications");
    loop {
        let Err(error) = deps
            .notifications
            .append_keyed(stored.notifications.clone())
            .await
        else {
            full.ended();
            break;
        };
        // Stored but not announced: redeliver; the store answers with duplicates whose
        // notifications are appended then. On a full disk the batch waits for space here
        // instead: the messages are stored, and handing the entries back would spend their
        // attempts.
        let entries = attempts(&stored.deliveries, &stored.done, false, shutdown);
        let Some(error) = inbound.apply(error, &entries).await? else {
            return Ok(());
        };
        full.pause(shutdown, &error).await;
    }
    if let Err(error) = inbound.queue().ack(&stored.done).await {
        inbound.queue_failed(error).await?;
    }
    Ok(())
}
