//! Consuming: pulls (plain, or pinned through `exclusive`), handing pulled entries out as
//! deliveries (an entry delivered more than `attempts_max` times goes to the dead letters
//! instead), and settling them: ack, retry later, dead letter. `receive` is where a standby
//! of an exclusive queue waits for the pin.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::Subject;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::StreamExt;
use parlor_core::BackendError;
use parlor_core::ports::{Delivery, DeliveryId};

use super::exclusive::STANDBY_POLL;
use super::{JsQueue, nats_error, timed};

/// The shortest expiry of a pull, so that `receive` with no wait still gets an answer.
const PULL_EXPIRES_MIN: Duration = Duration::from_millis(10);

#[derive(Clone, Copy)]
pub(super) enum Pull {
    Now(Duration),
    InLine(Duration),
}

pub(super) struct Held {
    /// The `$JS.ACK…` subject that settles this delivery.
    reply: Subject,
    payload: Bytes,
    attempts: u32,
    received_at: Instant,
}

impl JsQueue {
    /// `Queue::receive`.
    pub(super) async fn receive_entries(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BackendError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        if self.released() {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let give_up = Instant::now() + wait;
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            // A standby waits in line for one entry, which pins it if the pin is free: a
            // large parked pull would make the server refuse the active handle's "no wait"
            // pulls (it counts every parked pull's size against what is there).
            let standby = self.standby();
            if standby && self.pinned_elsewhere().await? {
                // Ask, don't pull: while the pin is another handle's, the server answers a
                // pull from this one by moving the first entry due for redelivery to the back
                // of its line, and the entries a crashed handle held would come back out of
                // order.
                tokio::time::sleep(left.min(STANDBY_POLL)).await;
                if Instant::now() >= give_up {
                    return Ok(Vec::new());
                }
                continue;
            }
            let mut messages = if standby {
                Vec::new()
            } else {
                self.pull(Pull::Now(left), max).await?
            };
            let left = give_up.saturating_duration_since(Instant::now());
            if messages.is_empty() && (!left.is_zero() || standby) {
                // Refused before the wait was over: wait in line for one, then take the rest.
                messages = self.pull(Pull::InLine(left), 1).await?;
                if !messages.is_empty() && max > 1 {
                    // The server has handed the first one out: it must reach the caller even
                    // if taking the rest fails, or it would come back only after the
                    // visibility timeout, behind the entries that followed it.
                    match self.pull(Pull::Now(Duration::ZERO), max - 1).await {
                        Ok(rest) => messages.extend(rest),
                        Err(error) => tracing::debug!(%error, "cannot take the rest of a batch"),
                    }
                }
            }
            let pulled = !messages.is_empty();
            let deliveries = self.hand_out(messages).await;
            let left = give_up.saturating_duration_since(Instant::now());
            if !deliveries.is_empty() || left.is_zero() {
                return Ok(deliveries);
            }
            if !pulled {
                // Both pulls ended early (at `in_flight_max`, say): do not poll in a loop.
                tokio::time::sleep(left.min(PULL_EXPIRES_MIN * 5)).await;
            }
        }
    }

    /// `Queue::ack`.
    pub(super) async fn ack_entries(&self, ids: &[DeliveryId]) -> Result<(), BackendError> {
        let replies: Vec<(DeliveryId, Subject)> = {
            let held = self.held.lock().expect("queue lock");
            ids.iter()
                .filter_map(|id| held.get(id).map(|held| (*id, held.reply.clone())))
                .collect()
        };
        let Some(((_, last), rest)) = replies.split_last() else {
            return Ok(());
        };
        // One round trip for the lot: the server handles one consumer's acks in the order
        // they arrive, so its answer to the last one means every one before it is done too
        // (and a following `depth` or `receive` sees them all).
        let client = self.jetstream.client();
        timed(self.options.append_timeout, "acknowledge", async {
            for (_, reply) in rest {
                client
                    .publish(reply.clone(), AckKind::Ack.into())
                    .await
                    .map_err(|error| nats_error("acknowledge", error))?;
            }
            client
                .request(last.clone(), AckKind::Ack.into())
                .await
                .map(|_| ())
                .map_err(|error| nats_error("acknowledge", error))
        })
        .await?;
        {
            let mut held = self.held.lock().expect("queue lock");
            for (id, _) in &replies {
                held.remove(id);
            }
        }
        self.trim_if_due().await;
        Ok(())
    }

    /// `Queue::retry_later`.
    pub(super) async fn retry_entry_later(
        &self,
        id: DeliveryId,
        delay: Duration,
    ) -> Result<(), BackendError> {
        let reply = match self.held.lock().expect("queue lock").get(&id) {
            Some(held) => held.reply.clone(),
            None => return Ok(()), // already acknowledged or dead-lettered
        };
        self.settle(&reply, AckKind::Nak(Some(delay)).into())
            .await?;
        self.held.lock().expect("queue lock").remove(&id);
        Ok(())
    }

    /// `Queue::dead_letter`.
    pub(super) async fn dead_letter_entry(
        &self,
        id: DeliveryId,
        reason: &str,
    ) -> Result<(), BackendError> {
        let (reply, payload, attempts) = match self.held.lock().expect("queue lock").get(&id) {
            Some(held) => (held.reply.clone(), held.payload.clone(), held.attempts),
            None => return Ok(()),
        };
        self.move_to_dead(&reply, payload, attempts, reason).await?;
        self.held.lock().expect("queue lock").remove(&id);
        Ok(())
    }

    /// Pulls up to `max` messages. `Now` is a "no wait" pull with an expiry: the server
    /// answers as soon as it has any message (a plain pull would be held until `max` came)
    /// and ends it at the expiry, also when the consumer is at its `max_ack_pending` (without
    /// an expiry that pull would stay open, and later take messages nobody reads). `InLine`
    /// is a plain pull, queued behind other consumers' pulls instead of refused (a "no wait"
    /// pull is refused at once while theirs ask for more than there is).
    async fn pull(&self, kind: Pull, max: usize) -> Result<Vec<jetstream::Message>, BackendError> {
        let expires = match kind {
            Pull::Now(wait) | Pull::InLine(wait) => wait.max(PULL_EXPIRES_MIN),
        };
        if let Some(pinning) = &self.pinning {
            let bound = expires + self.options.append_timeout;
            return timed(
                bound,
                "pull from the queue",
                self.pull_pinned(pinning, kind, expires, max),
            )
            .await;
        }
        let request = async {
            let batch = match kind {
                Pull::Now(_) => {
                    self.consumer
                        .fetch()
                        .max_messages(max)
                        .expires(expires)
                        .messages()
                        .await
                }
                Pull::InLine(_) => {
                    self.consumer
                        .batch()
                        .max_messages(max)
                        .expires(expires)
                        .messages()
                        .await
                }
            };
            let mut batch = batch.map_err(|error| nats_error("pull from the queue", error))?;
            let mut messages = Vec::new();
            while let Some(message) = batch.next().await {
                match message {
                    Ok(message) => messages.push(message),
                    // The consumer holds `in_flight_max` unacknowledged entries: none for now.
                    Err(error) if error.to_string().contains("MaxAckPending") => break,
                    // What was handed out already must reach the caller (see `receive`).
                    Err(_) if !messages.is_empty() => break,
                    Err(error) => {
                        return Err(BackendError::unavailable(format!(
                            "pull from the queue: {error}"
                        )));
                    }
                }
            }
            Ok(messages)
        };
        let bound = expires + self.options.append_timeout;
        timed(bound, "pull from the queue", request).await
    }

    /// Turns pulled messages into deliveries, dead-lettering those delivered more than
    /// `attempts_max` times.
    async fn hand_out(&self, messages: Vec<jetstream::Message>) -> Vec<Delivery> {
        let now = Instant::now();
        let mut deliveries = Vec::with_capacity(messages.len());
        for message in messages {
            let delivered = match message.info() {
                Ok(info) => u32::try_from(info.delivered).unwrap_or(u32::MAX),
                Err(error) => {
                    tracing::warn!(queue = %self.name, %error, "a pulled message without ack info");
                    continue;
                }
            };
            let message = message.message;
            let Some(reply) = message.reply else {
                continue;
            };
            if delivered > 1 {
                *self.redelivered_at.lock().expect("trim lock") = Some(now);
            }
            if delivered > self.options.attempts_max {
                let attempts = delivered - 1;
                let reason = format!(
                    "not acknowledged within the visibility timeout after {attempts} attempts"
                );
                // On failure the entry is delivered again after the visibility timeout and
                // this is tried again; the healthy entries of the batch still go out.
                if let Err(error) = self
                    .move_to_dead(&reply, message.payload, attempts, &reason)
                    .await
                {
                    tracing::warn!(queue = %self.name, %error, "cannot dead-letter an exhausted entry");
                }
                continue;
            }
            let id = DeliveryId(self.next_id.fetch_add(1, Ordering::Relaxed));
            deliveries.push(Delivery {
                id,
                payload: message.payload.to_vec(),
                attempts: delivered,
            });
            let held = Held {
                reply,
                payload: message.payload,
                attempts: delivered,
                received_at: now,
            };
            self.held.lock().expect("queue lock").insert(id, held);
        }
        let mut held = self.held.lock().expect("queue lock");
        // Deliveries a consumer dropped without settling them would pile up here; the server
        // bounds what can be in flight, so only stale ones can take us over that bound.
        if held.len() > self.options.in_flight_max {
            let visibility_timeout = self.options.visibility_timeout;
            held.retain(|_, held| now.duration_since(held.received_at) < visibility_timeout);
        }
        deliveries
    }

    /// Sends an ack (or nak) and waits for the server to confirm it processed it, so that a
    /// following `depth` or `receive` sees its effect.
    pub(super) async fn settle(&self, reply: &Subject, body: Bytes) -> Result<(), BackendError> {
        let client = self.jetstream.client();
        timed(self.options.append_timeout, "acknowledge", async {
            client
                .request(reply.clone(), body)
                .await
                .map(|_| ())
                .map_err(|error| nats_error("acknowledge", error))
        })
        .await
    }
}
