//! Appending: entries go out packed into as few messages as fit (see `packs`), several
//! messages as atomic batches (all or nothing), falling back to message by message when the
//! server refuses a batch as a whole, and how the
//! server's refusals map to error kinds (too large: `Rejected`; out of storage: `StorageFull`;
//! anything else: `Unavailable`). Dead letters and redrives publish through here too.

use async_nats::client::PublishErrorKind as ClientPublishErrorKind;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::{HeaderMap, Subject, header};
use bytes::Bytes;
use futures::future::join_all;
use parlor_core::BackendError;

use super::{JsQueue, nats_error, packs, timed};

/// Messages published per round of acks when publishing message by message.
const PUBLISH_CHUNK: usize = 1024;
/// Publishes awaiting their ack across all appends of one handle. Kept below the context's
/// own window (see `JsQueue::open`), so that waiting for room happens here, all of a chunk at once:
/// appends that each hold part of the context's window and wait for more would deadlock.
pub(super) const PUBLISH_WINDOW: usize = 4096;
/// Messages per atomic batch: the server's limit on a batch's size.
const ATOMIC_BATCH_MAX: usize = 1000;
/// Room left in a message for its headers (the pack's, a batch's, a retry's).
const HEADER_ROOM: usize = 4096;

impl JsQueue {
    /// `Queue::append`.
    pub(super) async fn append_entries(&self, entries: Vec<Vec<u8>>) -> Result<(), BackendError> {
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

    /// Publishes in order, message by message, and waits for every ack.
    pub(super) async fn publish(
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

    /// Publishes entries in order, packed (see [`packs`]): one message when they fit in
    /// one, else atomic batches of packs (ADR-50), awaiting each commit.
    ///
    /// Why packs: with `sync_interval: always` the server writes and fsyncs every message,
    /// and even inside an atomic batch it stores entry by entry, so its work per message set
    /// the queue's rate (11,700–14,200 entries/s). A pack is one message whatever it holds.
    /// A batch is all or nothing, so a failed append stores none of its entries.
    pub(super) async fn publish_batches(
        &self,
        subject: &Subject,
        entries: Vec<Bytes>,
    ) -> Result<(), BackendError> {
        let messages = packs::pack(entries, message_bytes_max(&self.jetstream.client()));
        if messages.len() == 1 {
            return self.publish(subject, messages).await;
        }
        let mut messages = messages.into_iter().peekable();
        while messages.peek().is_some() {
            let batch: Vec<_> = messages.by_ref().take(ATOMIC_BATCH_MAX).collect();
            if let Err(refusal) = self.publish_atomic(subject, batch.clone()).await? {
                // Refused as a whole, so nothing of it is stored: message by message is safe.
                tracing::warn!(queue = %self.name, %refusal, "atomic batch refused; publishing message by message");
                self.publish(subject, batch).await?;
            }
        }
        Ok(())
    }

    /// One atomic batch: the messages without a reply, then a commit that the server answers
    /// once the batch is stored. `Ok(Err(why))` when the server refused the batch (too many
    /// batches in flight, say), which stores none of it.
    async fn publish_atomic(
        &self,
        subject: &Subject,
        batch: Vec<(Bytes, Option<HeaderMap>)>,
    ) -> Result<Result<(), String>, BackendError> {
        let client = self.jetstream.client();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let count = batch.len();
        for (index, (payload, headers)) in batch.into_iter().enumerate() {
            let mut headers = headers.unwrap_or_default();
            headers.insert(header::NATS_BATCH_ID, id.as_str());
            headers.insert(
                header::NATS_BATCH_SEQUENCE,
                (index + 1).to_string().as_str(),
            );
            if index + 1 < count {
                client
                    .publish_with_headers(subject.clone(), headers, payload)
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
                .request_with_headers(subject.clone(), headers, payload)
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
}

/// The largest message a handle publishes: the server's limit, less room for headers.
pub(super) fn message_bytes_max(client: &async_nats::Client) -> usize {
    let max_payload = client.server_info().max_payload;
    max_payload.saturating_sub(HEADER_ROOM).max(HEADER_ROOM)
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
