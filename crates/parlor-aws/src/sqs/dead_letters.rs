//! The dead-letter queue `{name}-dlq.fifo`: moving an entry there with its reason, and the
//! operator's side (list, redrive, purge).
//!
//! SQS cannot read a queue without receiving from it, so the operator's side receives the
//! letters with a short visibility, picks, and gives back what it does not take
//! (visibility 0). Two limits follow from FIFO groups: a receive hands out at most ten
//! letters of one group (conversation) and then none of that group until those are
//! deleted or given back, so a listing shows at most ten letters per group, as do redrive
//! and purge by id (`All` works through everything, deleting as it goes); and two
//! operators listing at once hide letters from each other for the hold.

use std::collections::HashSet;

use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use parlor_core::BackendError;
use parlor_core::ports::{DeadLetter, DeadLetterSelection, DeliveryId};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::{CALL_TIMEOUT, sqs_error, timed};
use super::receive::Poll;
use super::send::{BATCH_MAX, Outgoing};
use super::{PLAIN_GROUP, SqsQueue};
use crate::base64;

const REASON: &str = "Parlor-Reason";
const ATTEMPTS: &str = "Parlor-Attempts";
const FAILED_AT: &str = "Parlor-Failed-At";
/// A reason is a log line, not a payload: SQS counts attributes into the message's size.
const REASON_MAX_BYTES: usize = 4096;
/// How long a listing holds the letters it received if it dies before giving them back.
const HOLD_SECS: i32 = 30;
/// The long poll of each receive from the DLQ: a short poll may answer empty while letters
/// are there (SQS's "false empty responses"), and an empty answer ends a listing.
const POLL_SECS: u64 = 1;
/// Letters received per round of a listing, redrive or purge.
const SCAN_MAX: usize = 1000;
/// Rounds of a redrive or purge: each one deletes what it took, so `All` ends when the
/// queue is empty; this only bounds a queue that fills as fast as it is drained.
const ROUNDS_MAX: usize = 1000;

/// A letter as received: what the port shows, and what it takes to move or delete it.
struct Received {
    letter: DeadLetter,
    receipt_handle: String,
    body: String,
    group: String,
}

#[derive(Clone, Copy)]
enum Settle {
    Redrive,
    Purge,
}

impl SqsQueue {
    /// `Queue::dead_letter`: SendMessage to the DLQ in the entry's group, with why, then
    /// DeleteMessage from the queue (a crash between the two leaves the entry in both: it
    /// is delivered again and dead-lettered once more, or stored, idempotently).
    pub(super) async fn dead_letter_entry(
        &self,
        id: DeliveryId,
        reason: &str,
    ) -> Result<(), BackendError> {
        let Some((receipt, body, group, attempts)) =
            self.held.lock().expect("held lock").get(&id).map(|held| {
                (
                    held.receipt_handle.clone(),
                    held.body.clone(),
                    held.group.clone(),
                    held.attempts,
                )
            })
        else {
            return Ok(()); // already settled
        };
        self.send_to_dead_letters(body, group, reason, attempts)
            .await?;
        self.delete_messages(&self.url, &[&receipt]).await?;
        self.held.lock().expect("held lock").remove(&id);
        Ok(())
    }

    /// Dead-letters an entry that was received by someone else (a Lambda's event source
    /// mapping): sends it to the DLQ in its `group` (the record's `MessageGroupId`) with
    /// why. The caller then has it deleted from the queue (by not reporting it failed).
    pub async fn dead_letter_message(
        &self,
        group: &str,
        payload: &[u8],
        reason: &str,
        attempts: u32,
    ) -> Result<(), BackendError> {
        let group = if group.is_empty() { PLAIN_GROUP } else { group };
        self.send_to_dead_letters(base64::encode(payload), group.to_owned(), reason, attempts)
            .await
    }

    /// SendMessage to the DLQ in `group`, with why as message attributes.
    async fn send_to_dead_letters(
        &self,
        body: String,
        group: String,
        reason: &str,
        attempts: u32,
    ) -> Result<(), BackendError> {
        let failed_at = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .map_err(|error| BackendError::rejected(format!("format a time: {error}")))?;
        let text = |value: String, kind: &str| {
            MessageAttributeValue::builder()
                .data_type(kind)
                .string_value(value)
                .build()
                .map_err(|error| BackendError::rejected(format!("build an attribute: {error}")))
        };
        let reason = attribute_text(reason);
        let request = self
            .client
            .send_message()
            .queue_url(&self.dead_url)
            .message_body(body)
            .message_group_id(group)
            .message_deduplication_id(uuid::Uuid::now_v7().simple().to_string())
            .message_attributes(REASON, text(reason, "String")?)
            .message_attributes(ATTEMPTS, text(attempts.to_string(), "Number")?)
            .message_attributes(FAILED_AT, text(failed_at, "String")?);
        timed(CALL_TIMEOUT, "dead-letter an entry", async {
            request
                .send()
                .await
                .map_err(|error| sqs_error("dead-letter an entry", error))
        })
        .await?;
        Ok(())
    }

    /// `Queue::dead_letters`: the oldest by the time they failed, up to `limit`.
    pub(super) async fn list_dead(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (mut received, _) = self.receive_dead().await?;
        self.give_back(&received).await;
        // Stable: letters of one group that failed at one instant keep the group's order.
        received.sort_by_key(|letter| letter.letter.failed_at);
        Ok(received
            .into_iter()
            .take(limit)
            .map(|received| received.letter)
            .collect())
    }

    pub(super) async fn redrive_dead(
        &self,
        selection: DeadLetterSelection,
    ) -> Result<usize, BackendError> {
        self.settle_dead(selection, Settle::Redrive).await
    }

    pub(super) async fn purge_dead(
        &self,
        selection: DeadLetterSelection,
    ) -> Result<usize, BackendError> {
        self.settle_dead(selection, Settle::Purge).await
    }

    /// Rounds of: receive the letters, give back the unselected, redrive (send to the queue
    /// in the letter's group with a fresh deduplication id, in the DLQ's order) or purge
    /// the selected, delete them from the DLQ.
    async fn settle_dead(
        &self,
        selection: DeadLetterSelection,
        settle: Settle,
    ) -> Result<usize, BackendError> {
        let mut wanted: Option<HashSet<u64>> = match selection {
            DeadLetterSelection::All => None,
            DeadLetterSelection::Ids(ids) => Some(ids.into_iter().collect()),
        };
        let mut done = 0;
        for _ in 0..ROUNDS_MAX {
            if wanted.as_ref().is_some_and(HashSet::is_empty) {
                break;
            }
            let (received, cut_off) = self.receive_dead().await?;
            let (chosen, rest): (Vec<Received>, Vec<Received>) =
                received.into_iter().partition(|received| {
                    wanted
                        .as_ref()
                        .is_none_or(|wanted| wanted.contains(&received.letter.id))
                });
            self.give_back(&rest).await;
            if chosen.is_empty() {
                break;
            }
            if let Settle::Redrive = settle {
                let entries = chosen
                    .iter()
                    .map(|received| Outgoing::new(&received.group, received.body.clone()))
                    .collect();
                if let Err(error) = self.send_all(&self.url, entries).await {
                    self.give_back(&chosen).await;
                    return Err(error);
                }
            }
            // A redriven letter that is not deleted here is in both queues: delivered, it is
            // stored idempotently.
            for batch in chosen.chunks(BATCH_MAX) {
                let receipts: Vec<&str> = batch
                    .iter()
                    .map(|received| received.receipt_handle.as_str())
                    .collect();
                self.delete_messages(&self.dead_url, &receipts).await?;
            }
            done += chosen.len();
            // `All` goes on until a round finds the DLQ empty. By ids: letters held back
            // behind their group's first ones show only once those are gone, and with no
            // full receive there were none.
            if let Some(wanted) = &mut wanted {
                for received in &chosen {
                    wanted.remove(&received.letter.id);
                }
                if !cut_off {
                    break;
                }
            }
        }
        Ok(done)
    }

    /// Receives every letter SQS hands out (up to `SCAN_MAX`), held for `HOLD_SECS`; the
    /// last, empty, answer takes `POLL_SECS`. With `true` when a receive came full: SQS may
    /// have held back more of a group.
    async fn receive_dead(&self) -> Result<(Vec<Received>, bool), BackendError> {
        let mut received = Vec::new();
        let mut cut_off = false;
        while received.len() < SCAN_MAX {
            let poll = Poll {
                url: &self.dead_url,
                max: BATCH_MAX,
                wait_secs: POLL_SECS,
                visibility_secs: HOLD_SECS,
                dead_letter_side: true,
            };
            let messages = match self.receive_messages(poll).await {
                Ok(messages) => messages,
                Err(error) => {
                    self.give_back(&received).await;
                    return Err(error);
                }
            };
            if messages.is_empty() {
                break;
            }
            cut_off |= messages.len() == BATCH_MAX;
            received.extend(messages.iter().filter_map(|message| self.letter(message)));
        }
        Ok((received, cut_off))
    }

    /// Makes letters visible again at once; on failure they come back after the hold.
    async fn give_back(&self, letters: &[Received]) {
        for batch in letters.chunks(BATCH_MAX) {
            let receipts: Vec<&str> = batch
                .iter()
                .map(|received| received.receipt_handle.as_str())
                .collect();
            if let Err(error) = self.change_visibility(&self.dead_url, &receipts, 0).await {
                tracing::warn!(
                    queue = %self.name,
                    %error,
                    "giving dead letters back failed; they are hidden for {HOLD_SECS} s"
                );
            }
        }
    }

    /// A DLQ message as a letter. One SQS moved itself (after `maxReceiveCount`
    /// deliveries) carries none of our attributes: it was delivered that many times, and
    /// SQS records no time of the move, so its time is when it was appended.
    fn letter(&self, message: &Message) -> Option<Received> {
        let receipt_handle = message.receipt_handle()?.to_owned();
        let body = message.body().unwrap_or_default().to_owned();
        let ours = |name: &str| {
            message
                .message_attributes()
                .and_then(|all| all.get(name))
                .and_then(|value| value.string_value())
        };
        let system = |name| message.attributes().and_then(|all| all.get(&name));
        let attempts = ours(ATTEMPTS)
            .and_then(|attempts| attempts.parse().ok())
            .unwrap_or(self.max_receive_count);
        let reason = ours(REASON)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("delivered {attempts} times without being acknowledged"));
        let sent_at = system(MessageSystemAttributeName::SentTimestamp)
            .and_then(|millis| millis.parse::<i128>().ok())
            .and_then(|millis| OffsetDateTime::from_unix_timestamp_nanos(millis * 1_000_000).ok());
        let failed_at = ours(FAILED_AT)
            .and_then(|at| OffsetDateTime::parse(at, &Rfc3339).ok())
            .or(sent_at)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let payload = base64::decode(&body).unwrap_or_else(|| body.as_bytes().to_vec());
        let group = system(MessageSystemAttributeName::MessageGroupId)
            .cloned()
            .unwrap_or_else(|| PLAIN_GROUP.to_owned());
        Some(Received {
            letter: DeadLetter {
                id: letter_id(message.message_id().unwrap_or(&receipt_handle)),
                payload,
                reason,
                attempts,
                failed_at,
            },
            receipt_handle,
            body,
            group,
        })
    }
}

/// A letter's id: stable across listings, as its SQS MessageId is.
fn letter_id(message_id: &str) -> u64 {
    let digest = Sha256::digest(message_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A reason as SQS takes an attribute value: not empty, only the characters XML allows
/// (an error's text may hold others), at most `REASON_MAX_BYTES`.
fn attribute_text(reason: &str) -> String {
    let allowed = |c: char| matches!(c, '\t' | '\n' | '\r' | ' '..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..);
    let mut text = String::new();
    for c in reason.chars() {
        let c = if allowed(c) { c } else { '\u{FFFD}' };
        if text.len() + c.len_utf8() > REASON_MAX_BYTES {
            break;
        }
        text.push(c);
    }
    if text.is_empty() {
        text.push_str("no reason given");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{REASON_MAX_BYTES, attribute_text};

    #[test]
    fn reasons_become_text_sqs_accepts() {
        assert_eq!(attribute_text("cannot store: é"), "cannot store: é");
        assert_eq!(attribute_text(""), "no reason given");
        assert_eq!(attribute_text("a\u{0}b\u{1b}c"), "a\u{FFFD}b\u{FFFD}c");
        let long = attribute_text(&"é".repeat(REASON_MAX_BYTES));
        assert!(long.len() <= REASON_MAX_BYTES && long.chars().all(|c| c == 'é'));
    }
}
