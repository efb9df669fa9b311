//! Sending entries in batches of ten (SQS's SendMessageBatch limit), in order.
//!
//! SQS has no all-or-nothing batch: each entry of a batch succeeds or fails on its own, and
//! a call that fails after earlier batches went through leaves those sent. Both are
//! harmless to Parlor: an append that returns an error is retried whole by its caller, and
//! an entry that arrives twice is stored once (the store is idempotent on
//! `(sender, client_msg_id)`, with no time window). A retried entry lands after the ones
//! that followed it in its batch; SQS refuses single entries of a batch only for their own
//! fault (too large: `Rejected`, no retry) or, rarely, for an internal error.

use std::time::Duration;

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use parlor_core::BackendError;

use super::SqsQueue;
use super::error::{CALL_TIMEOUT, entry_error, sqs_error, timed};

/// SQS's most entries per batch call (send, delete, change visibility).
pub const BATCH_MAX: usize = 10;
/// The most body bytes per batch call: SQS's limit on a batch's total size was 256 KiB
/// for years (1 MiB since 2025); the smaller holds everywhere.
const BATCH_BYTES_MAX: usize = 256 * 1024;
/// Tries for the entries of a batch that SQS refused for its own (internal) reasons.
const ENTRY_TRIES: u32 = 3;
const ENTRY_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// One message to send: its group, its body (base64) and a deduplication id of its own.
pub struct Outgoing {
    group: String,
    body: String,
    /// Fresh per entry per append: SQS's five-minute deduplication must never drop a
    /// redriven or re-sent entry. Kept across retries of this call, so an entry SQS stored
    /// but reported failed is not stored twice.
    deduplication_id: String,
}

impl Outgoing {
    pub fn new(group: &str, body: String) -> Outgoing {
        Outgoing {
            group: group.to_owned(),
            body,
            deduplication_id: uuid::Uuid::now_v7().simple().to_string(),
        }
    }
}

impl SqsQueue {
    /// Sends `entries` to `url` in order, ten per call; `Ok` once SQS stored every one.
    pub(super) async fn send_all(
        &self,
        url: &str,
        entries: Vec<Outgoing>,
    ) -> Result<(), BackendError> {
        let mut rest = entries.as_slice();
        while !rest.is_empty() {
            let (batch, after) = rest.split_at(batch_len(rest));
            self.send_batch(url, batch).await?;
            rest = after;
        }
        Ok(())
    }

    async fn send_batch(&self, url: &str, batch: &[Outgoing]) -> Result<(), BackendError> {
        // Batch entry ids are positions in `batch`.
        let mut unsent: Vec<usize> = (0..batch.len()).collect();
        for attempt in 1..=ENTRY_TRIES {
            let entries = unsent
                .iter()
                .map(|&at| {
                    let entry = &batch[at];
                    SendMessageBatchRequestEntry::builder()
                        .id(at.to_string())
                        .message_body(&entry.body)
                        .message_group_id(&entry.group)
                        .message_deduplication_id(&entry.deduplication_id)
                        .build()
                        .map_err(|error| {
                            BackendError::rejected(format!("build a batch entry: {error}"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let output = timed(CALL_TIMEOUT, "append to the queue", async {
                self.client
                    .send_message_batch()
                    .queue_url(url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|error| sqs_error("append to the queue", error))
            })
            .await?;
            let mut refused = None;
            unsent.clear();
            for failed in output.failed() {
                let error = entry_error(
                    "append to the queue",
                    failed.code(),
                    failed.message(),
                    failed.sender_fault(),
                );
                if failed.sender_fault() {
                    return Err(error);
                }
                unsent.extend(failed.id().parse::<usize>().ok());
                refused = Some(error);
            }
            match refused {
                None => return Ok(()),
                Some(error) if attempt == ENTRY_TRIES || unsent.is_empty() => return Err(error),
                Some(error) => {
                    tracing::warn!(
                        queue = %self.name,
                        %error,
                        unsent = unsent.len(),
                        "SQS refused entries of a batch; sending them again"
                    );
                    tokio::time::sleep(ENTRY_RETRY_PAUSE * attempt).await;
                }
            }
        }
        Ok(())
    }
}

/// How many of `entries` go in the next batch: up to ten within `BATCH_BYTES_MAX`, and at
/// least one (an entry too large on its own is SQS's to refuse).
fn batch_len(entries: &[Outgoing]) -> usize {
    let mut bytes = 0;
    let mut len = 0;
    for entry in entries.iter().take(BATCH_MAX) {
        bytes += entry.body.len();
        if bytes > BATCH_BYTES_MAX && len > 0 {
            break;
        }
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::{BATCH_BYTES_MAX, Outgoing, batch_len};

    fn bodies(sizes: &[usize]) -> Vec<Outgoing> {
        sizes
            .iter()
            .map(|size| Outgoing::new("group", "x".repeat(*size)))
            .collect()
    }

    #[test]
    fn batches_hold_ten_entries_within_the_byte_limit() {
        assert_eq!(batch_len(&bodies(&[10; 25])), 10);
        assert_eq!(batch_len(&bodies(&[10; 3])), 3);
        let half = BATCH_BYTES_MAX / 2;
        assert_eq!(batch_len(&bodies(&[half, half, 1])), 2);
        assert_eq!(batch_len(&bodies(&[BATCH_BYTES_MAX * 2, 1])), 1);
    }
}
