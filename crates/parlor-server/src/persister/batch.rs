//! One persister step over entries handed in from outside, for hosts that push batches
//! instead of letting the persister pull them: an AWS Lambda's SQS event. The host
//! acknowledges what this does not report (the Lambda service deletes those messages),
//! hands the reported failures back to the queue, and dead-letters the rest itself.
//!
//! Order: a conversation's entries come in order (SQS FIFO message groups), so after one
//! of them fails the later ones of that conversation fail too, unstored; the other
//! conversations go on. A poison entry thus holds back only its own conversation, until the
//! queue's receive count moves it to the dead-letter queue.

use std::collections::HashSet;

use parlor_core::BackendErrorKind;
use parlor_core::ids::ConversationId;
use parlor_core::ports::{Delivery, DeliveryId, NewEvent, Queue, Store};
use parlor_core::queue::InboundEntry;
use time::OffsetDateTime;

use super::notification;

/// What became of a batch: every entry not named here is done (stored and announced, or
/// refused and its sender told).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// To be delivered again (the store or the notification queue failed, or an earlier
    /// entry of the same conversation did).
    pub failed: Vec<DeliveryId>,
    /// Can never be stored: to the dead-letter queue, with why.
    pub dead_letters: Vec<(DeliveryId, String)>,
}

/// Stores `deliveries` and appends their notifications. Tries the batch as one; if that
/// fails and the store still answers its ping, tries each entry alone, so that one bad
/// entry fails alone (with the later entries of its conversation).
pub async fn persist_batch(
    store: &dyn Store,
    notifications: &dyn Queue,
    deliveries: &[Delivery],
) -> BatchOutcome {
    let stages = Stages {
        store,
        notifications,
    };
    let mut outcome = BatchOutcome::default();
    let mut entries: Vec<(&Delivery, NewEvent)> = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        match InboundEntry::decode(&delivery.payload) {
            Ok(entry) => entries.push((delivery, entry.into_new_event())),
            Err(error) => outcome
                .dead_letters
                .push((delivery.id, format!("undecodable inbound entry: {error}"))),
        }
    }
    if entries.is_empty() {
        return outcome;
    }
    let whole = match store_and_announce(&stages, &entries, false, &mut outcome).await {
        Ok(()) => return outcome,
        Err(kind) => kind,
    };
    // An outage (the store answers nothing) fails everyone; otherwise some entry may be
    // the cause, and each is tried alone.
    let outage = whole == BackendErrorKind::Unavailable && stages.store.ping().await.is_err();
    if outage || entries.len() == 1 {
        outcome
            .failed
            .extend(entries.iter().map(|(delivery, _)| delivery.id));
        return outcome;
    }
    let mut failed_conversations: HashSet<ConversationId> = HashSet::new();
    for entry in entries {
        let conversation = entry.1.conversation_id;
        let id = entry.0.id;
        if failed_conversations.contains(&conversation)
            || store_and_announce(&stages, std::slice::from_ref(&entry), true, &mut outcome)
                .await
                .is_err()
        {
            failed_conversations.insert(conversation);
            outcome.failed.push(id);
        }
    }
    outcome
}

/// Where a batch goes: only the store and the notification queue.
struct Stages<'a> {
    store: &'a dyn Store,
    notifications: &'a dyn Queue,
}

/// Stores `entries` in one batch and appends their notifications; on failure nothing of
/// theirs is in `outcome` and the error's kind is returned (what was stored is stored: the
/// redelivery is answered as duplicates, announced then). `again`: the batch they were in
/// failed just now, perhaps after storing some, so a duplicate is announced to everyone.
async fn store_and_announce(
    stages: &Stages<'_>,
    entries: &[(&Delivery, NewEvent)],
    again: bool,
    outcome: &mut BatchOutcome,
) -> Result<(), BackendErrorKind> {
    let batch: Vec<NewEvent> = entries.iter().map(|(_, new)| new.clone()).collect();
    let results = stages.store.append_events(&batch).await.map_err(|error| {
        tracing::warn!(%error, entries = batch.len(), "cannot store a batch");
        error.kind
    })?;
    let now = OffsetDateTime::now_utc();
    let mut notifications = Vec::with_capacity(results.len());
    let mut dead_letters = Vec::new();
    for (result, (delivery, new)) in results.into_iter().zip(entries) {
        let attempts = if again {
            delivery.attempts.max(2)
        } else {
            delivery.attempts
        };
        match notification(result, new, attempts, now) {
            Ok(notification) => notifications.push((new.conversation_id, notification.encode())),
            Err(reason) => dead_letters.push((delivery.id, reason)),
        }
    }
    if !notifications.is_empty() {
        stages
            .notifications
            .append_keyed(notifications)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "cannot append notifications");
                error.kind
            })?;
    }
    outcome.dead_letters.extend(dead_letters);
    Ok(())
}
