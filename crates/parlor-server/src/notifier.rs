//! The notifier: notification queue → the live connections of every member.
//!
//! Notifications are handled in queue order, and each node's relay and each connection's
//! queue are FIFO, so members see a conversation's messages in `seq` order. Whatever is
//! missed (a slow connection dropped, a redelivery) is caught up from the store by `seq`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parlor_core::ports::{Delivery, MessageOrder};
use parlor_core::queue::{Audience, Notification};
use parlor_core::{BackendError, ConversationId, Seq, UserId};
use time::OffsetDateTime;

use crate::config::ConsumerConfig;
use crate::consumer::{Attempt, Consumer};
use crate::metrics as m;
use crate::{Deps, Shutdown, deliver};

const RECEIVE_WAIT: Duration = Duration::from_millis(500);
/// Conversations whose members are cached, at most; the cache starts over beyond it.
const MEMBERS_CACHED_MAX: usize = 100_000;

/// Member lists by conversation, each with the membership version it is known to be at
/// least as new as. Looking members up was most of the notifier's time (one store read per
/// conversation per batch: 18 of the 23 ms from accepted to delivered at 10,000 messages/s),
/// so lists are reused, exactly as long as they are right: every notification says the
/// conversation's membership version when its event was stored
/// ([`Notification::members_seq`]), and a list older than that is read again. A list read
/// after the store committed version `v` reflects at least `v`.
#[derive(Default)]
struct MembersCache {
    entries: HashMap<ConversationId, (Arc<Vec<UserId>>, Seq)>,
}

impl MembersCache {
    async fn get(
        &mut self,
        deps: &Deps,
        conversation: ConversationId,
        members_seq: Seq,
    ) -> Result<Arc<Vec<UserId>>, BackendError> {
        if let Some((members, known)) = self.entries.get(&conversation)
            && *known >= members_seq
        {
            return Ok(Arc::clone(members));
        }
        let members = Arc::new(deps.store.members(conversation).await?);
        if self.entries.len() >= MEMBERS_CACHED_MAX {
            self.entries.clear();
        }
        self.entries
            .insert(conversation, (Arc::clone(&members), members_seq));
        Ok(members)
    }
}

/// Runs until `shutdown`. Returns an error only when a queue is poisoned.
pub async fn run(
    deps: Deps,
    config: ConsumerConfig,
    shutdown: Shutdown,
) -> Result<(), BackendError> {
    let notifications = Consumer::new(deps.notifications.clone(), "notifications", config);
    let mut members = MembersCache::default();
    while !shutdown.is_fired() {
        receive_and_notify(&deps, &notifications, &mut members, RECEIVE_WAIT).await?;
    }
    Ok(())
}

/// One partition of the notification queue where persisters share the partitions (the
/// cluster): the holder of inbound partition `p` delivers notification partition `p`
/// (`deps.notifications`) until `stop`, when its tenure ends; then what is left in it, which
/// its own last batches appended, for `drain_timeout` at most; then it hands the queue over
/// to the next holder, whose pulls the queue's pin held back until now.
pub async fn deliver_partition(
    deps: Deps,
    config: ConsumerConfig,
    stop: Shutdown,
) -> Result<(), BackendError> {
    let drain_timeout = config.drain_timeout;
    let notifications = Consumer::new(deps.notifications.clone(), "notifications", config);
    let mut members = MembersCache::default();
    while !stop.is_fired() {
        receive_and_notify(&deps, &notifications, &mut members, RECEIVE_WAIT).await?;
    }
    let until = tokio::time::Instant::now() + drain_timeout;
    while tokio::time::Instant::now() < until
        && receive_and_notify(&deps, &notifications, &mut members, Duration::ZERO).await?
    {}
    if let Err(error) = notifications.queue().hand_over().await {
        tracing::warn!(%error, "cannot hand the notifications over; they pass after a timeout");
    }
    Ok(())
}

/// One receive and the delivery of what it brought; false when it brought nothing.
async fn receive_and_notify(
    deps: &Deps,
    notifications: &Consumer,
    members: &mut MembersCache,
    wait: Duration,
) -> Result<bool, BackendError> {
    // A receive runs to its end (0.5 s at most), then what it brought is delivered: cut
    // short, its pull could still be answered (NATS), to nobody, and those notifications
    // would come back a visibility timeout later, behind newer ones.
    let deliveries = notifications
        .queue()
        .receive(notifications.config().batch_max, wait)
        .await;
    match deliveries {
        Ok(deliveries) if deliveries.is_empty() => Ok(false),
        Ok(deliveries) => {
            notify(deps, notifications, members, deliveries).await?;
            Ok(true)
        }
        Err(error) => {
            notifications.queue_failed(error).await?;
            Ok(false)
        }
    }
}

async fn notify(
    deps: &Deps,
    notifications: &Consumer,
    members: &mut MembersCache,
    deliveries: Vec<Delivery>,
) -> Result<(), BackendError> {
    let mut done = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        let notification = match Notification::decode(&delivery.payload) {
            Ok(notification) => notification,
            Err(error) => {
                let reason = format!("undecodable notification: {error}");
                notifications.dead_letter(delivery.id, &reason).await?;
                continue;
            }
        };
        match deliver(deps, members, notification).await {
            Ok(()) => done.push(delivery.id),
            Err(error) => {
                // Never held: a notification that fails goes back to the queue (or to the
                // dead letters), and the next one is tried.
                let outage = notifications
                    .apply(error, &[Attempt::alone(&delivery)])
                    .await?;
                debug_assert!(outage.is_none(), "the notifier never waits out an outage");
            }
        }
    }
    if let Err(error) = notifications.queue().ack(&done).await {
        notifications.queue_failed(error).await?;
    }
    Ok(())
}

/// Hands one notification to the nodes that hold its recipients.
async fn deliver(
    deps: &Deps,
    members: &mut MembersCache,
    notification: Notification,
) -> Result<(), BackendError> {
    let conversation = notification.conversation_id;
    let recipients = match notification.audience {
        Audience::Sender(user) => Arc::new(vec![user]),
        Audience::Members => {
            members
                .get(deps, conversation, notification.members_seq)
                .await?
        }
        Audience::MembersAnd(user) => {
            let mut everyone = members
                .get(deps, conversation, notification.members_seq)
                .await?
                .to_vec();
            if !everyone.contains(&user) {
                everyone.push(user);
            }
            Arc::new(everyone)
        }
    };
    let order = notification
        .seq
        .map(|seq| MessageOrder { conversation, seq });
    let frame: Arc<str> = notification.frame.get().into();
    let reached = deliver::to_users(deps, &recipients, frame, order).await?;
    metrics::counter!(m::MESSAGES_DELIVERED).increment(reached as u64);
    let latency = (OffsetDateTime::now_utc() - notification.accepted_at).as_seconds_f64();
    metrics::histogram!(m::DELIVERY_SECONDS).record(latency.max(0.0));
    Ok(())
}
