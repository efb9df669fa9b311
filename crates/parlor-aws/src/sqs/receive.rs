//! Handing entries out and settling them: long polls, the receipt handles this handle
//! holds, ack (DeleteMessageBatch), retry (ChangeMessageVisibility).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName,
};
use parlor_core::BackendError;
use parlor_core::ports::{Delivery, DeliveryId};

use super::error::{CALL_TIMEOUT, entry_error, is_stale_receipt, sqs_error, timed};
use super::send::BATCH_MAX;
use super::{PLAIN_GROUP, SqsQueue, VISIBILITY_MAX_SECS, base64, whole_seconds_up};

/// SQS's longest long poll.
const LONG_POLL_MAX_SECS: u64 = 20;
/// Between the short polls of a wait's last fraction of a second (SQS's long polls are
/// whole seconds): each is a request, billed, so waits of whole seconds cost least.
const SHORT_POLL_PAUSE: Duration = Duration::from_millis(100);
/// How long a delivery nobody settled is remembered after its visibility ended: its receipt
/// handle may still delete it until another consumer receives it.
const ABANDONED_KEPT: Duration = Duration::from_secs(5 * 60);
/// Tries for the entries of a batch settle that SQS refused for its own reasons.
const ENTRY_TRIES: u32 = 3;

/// A delivery this handle handed out and has not settled.
pub struct Held {
    pub receipt_handle: String,
    /// As SQS holds it (base64), to dead-letter it unchanged.
    pub body: String,
    pub group: String,
    pub attempts: u32,
    pub received_at: Instant,
    /// When SQS makes it visible again unless it is settled.
    visible_until: Instant,
}

/// What a receive asks SQS for.
pub struct Poll<'a> {
    pub url: &'a str,
    pub max: usize,
    pub wait_secs: u64,
    pub visibility_secs: i32,
    /// Message attributes and send times too (dead letters carry their reason in them).
    pub dead_letter_side: bool,
}

impl SqsQueue {
    /// `Queue::receive`: long polls for the whole seconds of `wait` and short polls for the
    /// rest, until something comes or `wait` is over, then whatever more is there at once,
    /// up to `max`. A long poll never outlasts `wait`: a caller that expects nothing for
    /// 300 ms must not be handed what became visible at 900 ms.
    pub(super) async fn receive_entries(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BackendError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.forget_abandoned();
        let deadline = Instant::now() + wait;
        let poll = |max: usize, wait_secs: u64| Poll {
            url: &self.url,
            max: max.min(BATCH_MAX),
            wait_secs,
            visibility_secs: self.visibility_secs,
            dead_letter_side: false,
        };
        let mut messages = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait_secs = left.as_secs().min(LONG_POLL_MAX_SECS);
            let messages = self.receive_messages(poll(max, wait_secs)).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !messages.is_empty() || left.is_zero() {
                break messages;
            }
            if left < Duration::from_secs(1) {
                tokio::time::sleep(left.min(SHORT_POLL_PAUSE)).await;
            }
        };
        while !messages.is_empty() && messages.len() < max {
            match self.receive_messages(poll(max - messages.len(), 0)).await {
                Ok(more) if more.is_empty() => break,
                Ok(more) => messages.extend(more),
                // Hand out what came: failing now would strand it until its visibility ends.
                Err(error) => {
                    tracing::warn!(queue = %self.name, %error, "receiving more failed");
                    break;
                }
            }
        }
        Ok(self.hand_out(messages))
    }

    /// One ReceiveMessage call.
    pub(super) async fn receive_messages(
        &self,
        poll: Poll<'_>,
    ) -> Result<Vec<Message>, BackendError> {
        let mut request = self
            .client
            .receive_message()
            .queue_url(poll.url)
            .max_number_of_messages(poll.max as i32)
            .wait_time_seconds(poll.wait_secs as i32)
            .visibility_timeout(poll.visibility_secs)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            // The SDK's retry of a call whose answer was lost gets the same messages back,
            // instead of finding their groups in flight until the visibility timeout.
            .receive_request_attempt_id(uuid::Uuid::now_v7().simple().to_string());
        if poll.dead_letter_side {
            request = request
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .message_attribute_names("All");
        }
        let limit = CALL_TIMEOUT + Duration::from_secs(poll.wait_secs);
        let output = timed(limit, "receive from the queue", async {
            request
                .send()
                .await
                .map_err(|error| sqs_error("receive from the queue", error))
        })
        .await?;
        Ok(output.messages.unwrap_or_default())
    }

    /// Remembers each message's receipt handle under a new delivery id.
    fn hand_out(&self, messages: Vec<Message>) -> Vec<Delivery> {
        let received_at = Instant::now();
        let visible_until = received_at + Duration::from_secs(self.visibility_secs as u64);
        let mut held = self.held.lock().expect("held lock");
        messages
            .into_iter()
            .filter_map(|message| {
                let attribute = |name| message.attributes().and_then(|all| all.get(&name));
                let receipt_handle = message.receipt_handle()?.to_owned();
                let body = message.body().unwrap_or_default().to_owned();
                let payload = base64::decode(&body).unwrap_or_else(|| {
                    // Not sent by Parlor: handed out as it is, for the consumer to refuse.
                    tracing::warn!(queue = %self.name, "a message whose body is not base64");
                    body.as_bytes().to_vec()
                });
                let attempts = attribute(MessageSystemAttributeName::ApproximateReceiveCount)
                    .and_then(|count| count.parse().ok())
                    .unwrap_or(1);
                let group = attribute(MessageSystemAttributeName::MessageGroupId)
                    .cloned()
                    .unwrap_or_else(|| PLAIN_GROUP.to_owned());
                let id = DeliveryId(self.next_delivery.fetch_add(1, Ordering::Relaxed));
                held.insert(
                    id,
                    Held {
                        receipt_handle,
                        body,
                        group,
                        attempts,
                        received_at,
                        visible_until,
                    },
                );
                Some(Delivery {
                    id,
                    payload,
                    attempts,
                })
            })
            .collect()
    }

    /// Drops deliveries that were never settled and are long visible again.
    fn forget_abandoned(&self) {
        let now = Instant::now();
        self.held
            .lock()
            .expect("held lock")
            .retain(|_, held| held.visible_until + ABANDONED_KEPT > now);
    }

    /// `Queue::ack`: DeleteMessageBatch, ten per call. Unknown ids were settled already.
    pub(super) async fn ack_entries(&self, ids: &[DeliveryId]) -> Result<(), BackendError> {
        let handles: Vec<(DeliveryId, String)> = {
            let held = self.held.lock().expect("held lock");
            ids.iter()
                .filter_map(|id| Some((*id, held.get(id)?.receipt_handle.clone())))
                .collect()
        };
        for batch in handles.chunks(BATCH_MAX) {
            let receipts: Vec<&str> = batch.iter().map(|(_, handle)| handle.as_str()).collect();
            self.delete_messages(&self.url, &receipts).await?;
            let mut held = self.held.lock().expect("held lock");
            for (id, _) in batch {
                held.remove(id);
            }
        }
        Ok(())
    }

    /// Deletes up to ten messages by receipt handle. A stale handle is not an error: the
    /// message is back in the queue and comes again (consumers are idempotent).
    pub(super) async fn delete_messages(
        &self,
        url: &str,
        receipts: &[&str],
    ) -> Result<(), BackendError> {
        let mut left: Vec<usize> = (0..receipts.len()).collect();
        for attempt in 1..=ENTRY_TRIES {
            let entries = left
                .iter()
                .map(|&at| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(at.to_string())
                        .receipt_handle(receipts[at])
                        .build()
                        .map_err(|error| {
                            BackendError::rejected(format!("build a delete entry: {error}"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let output = timed(CALL_TIMEOUT, "delete from the queue", async {
                self.client
                    .delete_message_batch()
                    .queue_url(url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|error| sqs_error("delete from the queue", error))
            })
            .await?;
            left = self.batch_failures(
                "delete from the queue",
                output.failed(),
                attempt == ENTRY_TRIES,
            )?;
            if left.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Sets the visibility of up to ten messages; stale handles are skipped (the message
    /// is visible already).
    pub(super) async fn change_visibility(
        &self,
        url: &str,
        receipts: &[&str],
        visibility_secs: u64,
    ) -> Result<(), BackendError> {
        let mut left: Vec<usize> = (0..receipts.len()).collect();
        for attempt in 1..=ENTRY_TRIES {
            let entries = left
                .iter()
                .map(|&at| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(at.to_string())
                        .receipt_handle(receipts[at])
                        .visibility_timeout(visibility_secs as i32)
                        .build()
                        .map_err(|error| {
                            BackendError::rejected(format!("build a visibility entry: {error}"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let output = timed(CALL_TIMEOUT, "change visibility", async {
                self.client
                    .change_message_visibility_batch()
                    .queue_url(url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|error| sqs_error("change visibility", error))
            })
            .await?;
            left =
                self.batch_failures("change visibility", output.failed(), attempt == ENTRY_TRIES)?;
            if left.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// The positions of a settle batch's entries to try again; an error when one can never
    /// succeed or tries are over.
    fn batch_failures(
        &self,
        what: &str,
        failed: &[aws_sdk_sqs::types::BatchResultErrorEntry],
        last_try: bool,
    ) -> Result<Vec<usize>, BackendError> {
        let mut again = Vec::new();
        for failure in failed {
            if is_stale_receipt(Some(failure.code())) {
                tracing::warn!(
                    queue = %self.name,
                    code = failure.code(),
                    "{what}: the delivery's visibility had ended; it comes again"
                );
                continue;
            }
            let error = entry_error(
                what,
                failure.code(),
                failure.message(),
                failure.sender_fault(),
            );
            if failure.sender_fault() || last_try {
                return Err(error);
            }
            again.extend(failure.id().parse::<usize>().ok());
        }
        Ok(again)
    }

    /// `Queue::retry_later`: the entry stays invisible for `delay`, rounded up to whole
    /// seconds and cut to what is left of SQS's 12 hours since it was received.
    pub(super) async fn retry_entry_later(
        &self,
        id: DeliveryId,
        delay: Duration,
    ) -> Result<(), BackendError> {
        let Some((receipt, received_at)) = self
            .held
            .lock()
            .expect("held lock")
            .get(&id)
            .map(|held| (held.receipt_handle.clone(), held.received_at))
        else {
            return Ok(()); // already settled
        };
        let left_secs = VISIBILITY_MAX_SECS.saturating_sub(received_at.elapsed().as_secs() + 1);
        let wanted_secs = whole_seconds_up(delay);
        if wanted_secs > left_secs {
            tracing::warn!(
                queue = %self.name,
                ?delay,
                left_secs,
                "a retry delay beyond SQS's 12 hours of visibility; cut short"
            );
        }
        self.change_visibility(&self.url, &[&receipt], wanted_secs.min(left_secs))
            .await?;
        self.held.lock().expect("held lock").remove(&id);
        Ok(())
    }
}
