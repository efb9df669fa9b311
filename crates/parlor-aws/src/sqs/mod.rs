//! `SqsQueue`: a `Queue` on an Amazon SQS FIFO queue `{name}.fifo` with a FIFO dead-letter
//! queue `{name}-dlq.fifo` beside it, tied by a redrive policy.
//!
//! Order: `append_keyed` sends each entry with its conversation as `MessageGroupId`, so
//! each conversation's order holds and an entry in flight (or waiting in `retry_later`)
//! holds back only its own conversation; plain `append` puts every entry in one fixed group
//! (one order for all). SQS hands out nothing more of a group while an entry of it is in
//! flight: a second `receive` before the first one's entries of that group are settled
//! gets none of that group.
//!
//! Cut by concern: `setup` (creating or looking up the queues), `send` (batches of ten,
//! retries of refused entries), `receive` (long polls, the deliveries this handle holds,
//! ack, retry, dead-letter), `dead_letters` (the operator's side: list, redrive, purge),
//! `error` (SDK failures as error kinds); bodies are base64 (`crate::base64`): text.

mod dead_letters;
mod error;
mod receive;
mod send;
mod setup;

use crate::base64;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::QueueAttributeName;
use parlor_core::ports::{
    DeadLetter, DeadLetterSelection, Delivery, DeliveryId, Queue, QueueDepth,
};
use parlor_core::{BackendError, ConversationId};

use error::{CALL_TIMEOUT, sqs_error, timed};
use receive::Held;

/// The message group of every entry of a plain `append`: one group, one order.
const PLAIN_GROUP: &str = "parlor";

/// An entry's bytes from an SQS message body (base64, as this queue writes it): for records
/// received by someone else, such as a Lambda's event source mapping.
pub fn decode_body(body: &str) -> Option<Vec<u8>> {
    base64::decode(body)
}
/// SQS's longest visibility timeout (12 hours).
const VISIBILITY_MAX_SECS: u64 = 12 * 60 * 60;

/// How to open an [`SqsQueue`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqsQueueOptions {
    /// The queue's name without ".fifo", e.g. "parlor-inbound"; its DLQ is "{name}-dlq.fifo".
    pub name: String,
    /// Rounded up to whole seconds (SQS's unit), at least one.
    pub visibility_timeout: Duration,
    /// Deliveries after which an entry is dead-lettered (the RedrivePolicy's maxReceiveCount).
    pub attempts_max: u32,
    /// Create the queue and its DLQ (with the redrive policy) if missing: tests and the local
    /// emulator. Production's are made by the CloudFormation template and only looked up.
    pub create: bool,
}

/// A handle on one SQS FIFO queue and its DLQ. Several handles (processes) may consume the
/// same queue; each remembers the receipt handles of what it received.
pub struct SqsQueue {
    client: Client,
    name: String,
    url: String,
    dead_url: String,
    /// The visibility timeout asked for on every receive.
    visibility_secs: i32,
    /// The redrive policy's: how many deliveries an entry SQS dead-lettered itself had.
    max_receive_count: u32,
    /// What this handle received and has not settled, by the id it handed out: bounded by
    /// what is in flight (settled ones leave, abandoned ones once their visibility ended).
    held: Mutex<HashMap<DeliveryId, Held>>,
    next_delivery: AtomicU64,
}

impl SqsQueue {
    /// Opens `{name}.fifo` and `{name}-dlq.fifo`, creating them first with `create`.
    pub async fn open(client: Client, options: SqsQueueOptions) -> Result<SqsQueue, BackendError> {
        let visibility_secs =
            whole_seconds_up(options.visibility_timeout).clamp(1, VISIBILITY_MAX_SECS);
        let queues = if options.create {
            setup::create(&client, &options, visibility_secs).await?
        } else {
            setup::look_up(&client, &options).await?
        };
        Ok(SqsQueue {
            client,
            name: options.name,
            url: queues.url,
            dead_url: queues.dead_url,
            visibility_secs: visibility_secs as i32,
            max_receive_count: queues.max_receive_count,
            held: Mutex::new(HashMap::new()),
            next_delivery: AtomicU64::new(1),
        })
    }

    /// Deletes the queue and its DLQ (tests' cleanup); one already gone is no error.
    pub async fn delete(&self) -> Result<(), BackendError> {
        for url in [&self.url, &self.dead_url] {
            timed(CALL_TIMEOUT, "delete a queue", async {
                match self.client.delete_queue().queue_url(url).send().await {
                    Ok(_) => Ok(()),
                    Err(error) if error::is_missing_queue(error.code()) => Ok(()),
                    Err(error) => Err(sqs_error("delete a queue", error)),
                }
            })
            .await?;
        }
        Ok(())
    }

    /// The queue's `ApproximateNumberOf…` counts, by name.
    async fn counts(&self, url: &str) -> Result<HashMap<QueueAttributeName, String>, BackendError> {
        let output = timed(CALL_TIMEOUT, "read the queue's depth", async {
            self.client
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                .send()
                .await
                .map_err(|error| sqs_error("read the queue's depth", error))
        })
        .await?;
        Ok(output.attributes().cloned().unwrap_or_default())
    }
}

/// Whole seconds, rounded up: SQS counts time in seconds, and a wait or a delay must not
/// end sooner than asked.
fn whole_seconds_up(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[async_trait]
impl Queue for SqsQueue {
    async fn append(&self, entries: Vec<Vec<u8>>) -> Result<(), BackendError> {
        let entries = entries
            .iter()
            .map(|entry| send::Outgoing::new(PLAIN_GROUP, base64::encode(entry)))
            .collect();
        self.send_all(&self.url, entries).await
    }

    async fn append_keyed(
        &self,
        entries: Vec<(ConversationId, Vec<u8>)>,
    ) -> Result<(), BackendError> {
        let entries = entries
            .iter()
            .map(|(conversation, entry)| {
                send::Outgoing::new(&conversation.to_string(), base64::encode(entry))
            })
            .collect();
        self.send_all(&self.url, entries).await
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

    /// Approximate, as SQS's counts are: in production they lag by up to a minute.
    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        let (queue, dead) =
            futures::try_join!(self.counts(&self.url), self.counts(&self.dead_url))?;
        let count = |counts: &HashMap<QueueAttributeName, String>, name: QueueAttributeName| {
            counts
                .get(&name)
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let in_flight = count(
            &queue,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        );
        Ok(QueueDepth {
            pending: count(&queue, QueueAttributeName::ApproximateNumberOfMessages)
                + count(
                    &queue,
                    QueueAttributeName::ApproximateNumberOfMessagesDelayed,
                )
                + in_flight,
            in_flight,
            // Letters an operator is listing are not visible while listed; still dead.
            dead: count(&dead, QueueAttributeName::ApproximateNumberOfMessages)
                + count(
                    &dead,
                    QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                ),
        })
    }
}
