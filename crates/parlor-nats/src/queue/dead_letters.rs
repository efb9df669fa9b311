//! The dead-letter stream `PARLOR_{NAME}_DEAD` (JetStream has no dead-letter queue of its
//! own): moving an entry there with its reason, attempts and time, and the operator's side,
//! list, redrive and purge. A dead letter's id is its stream sequence.

use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{self, DeleteMessageErrorKind, LastRawMessageErrorKind};
use bytes::Bytes;
use parlor_core::BackendError;
use parlor_core::ports::{DeadLetter, DeadLetterSelection};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{JsQueue, nats_error, timed};

const REASON: &str = "Parlor-Reason";
const ATTEMPTS: &str = "Parlor-Attempts";
const FAILED_AT: &str = "Parlor-Failed-At";
/// Dead letters read, re-published and deleted per round of a redrive.
const REDRIVE_CHUNK: usize = 256;

impl JsQueue {
    /// `Queue::dead_letters`.
    pub(super) async fn list_dead(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
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

    /// `Queue::redrive`.
    pub(super) async fn redrive_dead(
        &self,
        selection: DeadLetterSelection,
    ) -> Result<usize, BackendError> {
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

    /// `Queue::purge`.
    pub(super) async fn purge_dead(
        &self,
        selection: DeadLetterSelection,
    ) -> Result<usize, BackendError> {
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

    /// Publishes a dead letter, awaiting its ack; the caller acknowledges the original after
    /// it: a crash in between leaves the entry twice, never lost.
    pub(super) async fn publish_dead(
        &self,
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

    pub(super) async fn dead_state(&self) -> Result<stream::State, BackendError> {
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
        // One message per letter, not a pack: each is an entry of its own again, as before
        // it failed, and `depth` counts them.
        let payloads = letters
            .iter()
            .map(|(_, message)| (message.payload.clone(), None))
            .collect();
        timed(
            self.options.append_timeout,
            "redrive",
            self.publish(&self.subject, payloads),
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
