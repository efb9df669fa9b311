//! Consuming: pulls (plain, or pinned through `exclusive`), handing pulled entries out as
//! deliveries (an entry delivered more than `attempts_max` times goes to the dead letters
//! instead), and settling them: ack, retry later, dead letter. `receive` is where a standby
//! of an exclusive queue waits for the pin.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::StreamExt;
use parlor_core::BackendError;
use parlor_core::ports::{Delivery, DeliveryId};

use super::exclusive::STANDBY_POLL;
use super::packs::{self, ATTEMPTS_BEFORE, NOT_BEFORE, Resolution, Settle};
use super::publish::message_bytes_max;
use super::{JsQueue, nats_error, server_visibility_timeout, timed};

/// The shortest expiry of a pull, so that `receive` with no wait still gets an answer.
const PULL_EXPIRES_MIN: Duration = Duration::from_millis(10);

#[derive(Clone, Copy)]
pub(super) enum Pull {
    Now(Duration),
    InLine(Duration),
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
        // What an earlier pull brought and was not handed out yet goes first: it is older.
        if let Some(deliveries) = self.take_waiting(max).await {
            return Ok(deliveries);
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
            let messages_max = self.messages_for(max);
            let mut messages = if standby {
                Vec::new()
            } else {
                self.pull(Pull::Now(left), messages_max).await?
            };
            let left = give_up.saturating_duration_since(Instant::now());
            if messages.is_empty() && (!left.is_zero() || standby) {
                // Refused before the wait was over: wait in line for one, then take the rest.
                messages = self.pull(Pull::InLine(left), 1).await?;
                if !messages.is_empty() && messages_max > 1 {
                    // The server has handed the first one out: it must reach the caller even
                    // if taking the rest fails, or it would come back only after the
                    // visibility timeout, behind the entries that followed it.
                    match self.pull(Pull::Now(Duration::ZERO), messages_max - 1).await {
                        Ok(rest) => messages.extend(rest),
                        Err(error) => tracing::debug!(%error, "cannot take the rest of a batch"),
                    }
                }
            }
            let pulled = !messages.is_empty();
            let deliveries = self.hand_out(messages, max).await;
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
        let resolutions: Vec<Resolution> = {
            let mut packs = self.packs.lock().expect("queue lock");
            ids.iter()
                .filter_map(|id| packs.settle(*id, Settle::Ack))
                .collect()
        };
        self.resolve(resolutions).await?;
        self.trim_if_due().await;
        Ok(())
    }

    /// `Queue::retry_later`.
    pub(super) async fn retry_entry_later(
        &self,
        id: DeliveryId,
        delay: Duration,
    ) -> Result<(), BackendError> {
        let due = Instant::now() + delay;
        let resolution = self
            .packs
            .lock()
            .expect("queue lock")
            .settle(id, Settle::RetryAt(due));
        self.resolve(resolution.into_iter().collect()).await
    }

    /// `Queue::dead_letter`.
    pub(super) async fn dead_letter_entry(
        &self,
        id: DeliveryId,
        reason: &str,
    ) -> Result<(), BackendError> {
        let Some((payload, attempts)) = self.packs.lock().expect("queue lock").get(id) else {
            return Ok(()); // already settled
        };
        self.publish_dead(payload, attempts, reason).await?;
        let resolution = self
            .packs
            .lock()
            .expect("queue lock")
            .settle(id, Settle::Dead);
        self.resolve(resolution.into_iter().collect()).await
    }

    /// Tells the server what became of messages whose entries are all settled.
    pub(super) async fn resolve(&self, resolutions: Vec<Resolution>) -> Result<(), BackendError> {
        Settler::of(self).resolve(resolutions).await
    }

    /// Deals with held packs whose visibility timeout ran out (see [`Packs::expire`]): the
    /// keeper calls it a few times per visibility timeout.
    ///
    /// [`Packs::expire`]: super::packs::Packs::expire
    pub(super) async fn expire_held(&self) {
        let expired = self.packs.lock().expect("queue lock").expire(
            Instant::now(),
            self.options.visibility_timeout,
            self.options.attempts_max,
            // In line, on an exclusive queue, also after the pin lapsed (a process starved
            // of CPU past `takeover_after`): where order matters only one handle pulls (a
            // persister's partition is its lease's), and gets the pin back. A notifier that
            // hangs keeps its entries until it wakes; the members catch up by `seq`.
            self.pinning.is_some(),
        );
        let mut resolutions = expired.resolutions;
        self.restart_clocks(expired.restart).await;
        for exhausted in expired.exhausted {
            let reason = format!(
                "not acknowledged within the visibility timeout after {} attempts",
                exhausted.attempts
            );
            let moved = self
                .publish_dead(exhausted.payload, exhausted.attempts, &reason)
                .await;
            let mut packs = self.packs.lock().expect("queue lock");
            match moved {
                Ok(()) => resolutions.extend(packs.exhausted_dead(exhausted.pack, exhausted.index)),
                Err(error) => {
                    tracing::warn!(queue = %self.name, %error, "cannot dead-letter an exhausted entry");
                    packs.exhausted_kept(exhausted.pack, exhausted.index);
                }
            }
        }
        if resolutions.is_empty() {
            return;
        }
        if let Err(error) = self.resolve(resolutions).await {
            // The server's own, slightly longer, timeout redelivers them whole.
            tracing::warn!(queue = %self.name, %error, "cannot give back timed-out entries");
        }
    }

    /// Hands out waiting entries of packs pulled before, if there are any.
    pub(super) async fn take_waiting(&self, max: usize) -> Option<Vec<Delivery>> {
        let (deliveries, restart) = {
            let mut packs = self.packs.lock().expect("queue lock");
            if !packs.has_waiting() {
                return None;
            }
            packs.take(max, || self.next_delivery_id(), Instant::now())
        };
        self.restart_clocks(restart).await;
        Some(deliveries)
    }

    fn next_delivery_id(&self) -> DeliveryId {
        DeliveryId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Restarts the server's visibility clock of messages part of which is handed out only
    /// now (an in-progress ack): else the server would redeliver them whole a visibility
    /// timeout after the first part. Best effort: the keeper gives back what times out.
    async fn restart_clocks(&self, replies: Vec<Subject>) {
        if replies.is_empty() {
            return;
        }
        if self.pinning.is_some()
            && !self.holds_pin_for(server_visibility_timeout(self.options.visibility_timeout))
        {
            // Restarted now, a message could still be this handle's when the server gives
            // the pin to another (this one has not pulled for a while: stuck, paused, cut
            // off), and the next holder would be handed newer entries first. Left alone,
            // it is redelivered once its clock runs out, first in line.
            tracing::debug!(queue = %self.name, "not restarting clocks: the pin may be lost");
            return;
        }
        let client = self.jetstream.client();
        for reply in replies {
            if let Err(error) = client.publish(reply, AckKind::Progress.into()).await {
                tracing::debug!(queue = %self.name, %error, "cannot restart a message's clock");
            }
        }
    }

    /// Messages to pull for `max` entries, from the entries per message seen so far.
    fn messages_for(&self, max: usize) -> usize {
        let per_message = (self.entries_per_message.load(Ordering::Relaxed) / 16).max(1);
        max.div_ceil(per_message as usize).clamp(1, max)
    }

    /// Pulls up to `max` messages. `Now` is a "no wait" pull with an expiry: the server
    /// answers as soon as it has any message (a plain pull would be held until `max` came)
    /// and ends it at the expiry, also when the consumer is at its `max_ack_pending` (without
    /// an expiry that pull would stay open, and later take messages nobody reads). `InLine`
    /// is a plain pull, queued behind other consumers' pulls instead of refused (a "no wait"
    /// pull is refused at once while theirs ask for more than there is).
    pub(super) async fn pull(
        &self,
        kind: Pull,
        max: usize,
    ) -> Result<Vec<jetstream::Message>, BackendError> {
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

    /// Holds pulled messages (`hold_pulled`) and hands out up to `max` entries.
    async fn hand_out(&self, messages: Vec<jetstream::Message>, max: usize) -> Vec<Delivery> {
        let now = Instant::now();
        self.hold_pulled(messages, now).await;
        let (deliveries, restart) = {
            let mut packs = self.packs.lock().expect("queue lock");
            packs.take(max, || self.next_delivery_id(), now)
        };
        self.restart_clocks(restart).await;
        deliveries
    }

    /// Holds pulled messages as packs, to be handed out in order: a message delivered more
    /// than `attempts_max` times goes to the dead letters instead, and one that waits out a
    /// retry is handed back until it is due.
    pub(super) async fn hold_pulled(&self, mut messages: Vec<jetstream::Message>, now: Instant) {
        // In append order. A pull brings redelivered messages first, but in the server's
        // order, not the stream's: after a leader change it redelivered stream sequences
        // 13, 10, 11, 12, 7, 8, 9 in one pull, and handed out so, a sender's messages were
        // stored out of order.
        messages
            .sort_by_key(|message| message.info().map_or(u64::MAX, |info| info.stream_sequence));
        for message in messages {
            let (delivered, sequence) = match message.info() {
                Ok(info) => (
                    u32::try_from(info.delivered).unwrap_or(u32::MAX),
                    info.stream_sequence,
                ),
                Err(error) => {
                    tracing::warn!(queue = %self.name, %error, "a pulled message without ack info");
                    continue;
                }
            };
            let message = message.message;
            let Some(reply) = message.reply else {
                continue;
            };
            if self
                .packs
                .lock()
                .expect("queue lock")
                .redelivered(sequence, &reply)
            {
                continue;
            }
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(name))
                    .and_then(|value| value.as_str().parse::<u64>().ok())
            };
            if delivered == 1
                && let Some(wait) = header(NOT_BEFORE).and_then(wait_until)
            {
                if let Err(error) = self.settle(&reply, AckKind::Nak(Some(wait)).into()).await {
                    tracing::debug!(queue = %self.name, %error, "cannot hand back a waiting entry");
                }
                continue;
            }
            if delivered > 1 {
                *self.redelivered_at.lock().expect("trim lock") = Some(now);
            }
            let before =
                header(ATTEMPTS_BEFORE).map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
            let attempts = before.saturating_add(delivered);
            let entries = match packs::unpack(message.headers.as_ref(), message.payload.clone()) {
                Ok(entries) => entries,
                Err(reason) => {
                    let reason = format!("unreadable queue message: {reason}");
                    self.dead_letter_message(&reply, vec![message.payload], attempts, &reason)
                        .await;
                    continue;
                }
            };
            if attempts > self.options.attempts_max {
                let attempts = attempts - 1;
                let reason = format!(
                    "not acknowledged within the visibility timeout after {attempts} attempts"
                );
                self.dead_letter_message(&reply, entries, attempts, &reason)
                    .await;
                continue;
            }
            let count = entries.len() as u64;
            // Entries per message, in sixteenths, smoothed: how many messages a pull asks for.
            let average = self.entries_per_message.load(Ordering::Relaxed);
            self.entries_per_message
                .store((average * 7 + count * 16) / 8, Ordering::Relaxed);
            self.packs
                .lock()
                .expect("queue lock")
                .add(reply, sequence, entries, attempts, now);
        }
    }

    /// Moves every entry of a message to the dead letters, then acknowledges it. On failure
    /// the message is delivered again after the visibility timeout and this is tried again;
    /// the healthy messages of the pull still go out.
    async fn dead_letter_message(
        &self,
        reply: &Subject,
        entries: Vec<Bytes>,
        attempts: u32,
        reason: &str,
    ) {
        let moved = async {
            for entry in entries {
                self.publish_dead(entry, attempts, reason).await?;
            }
            self.settle(reply, AckKind::Ack.into()).await
        };
        if let Err(error) = moved.await {
            tracing::warn!(queue = %self.name, %error, "cannot dead-letter an exhausted entry");
        }
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

/// How long until `millis` since the Unix epoch, if that is in the future.
fn wait_until(millis: u64) -> Option<Duration> {
    let at = UNIX_EPOCH + Duration::from_millis(millis);
    at.duration_since(SystemTime::now())
        .ok()
        .filter(|wait| !wait.is_zero())
}

/// What settling messages with the server takes, apart from the handle: a closed handle's
/// last settlements run on it after the handle is gone.
pub(super) struct Settler {
    jetstream: jetstream::Context,
    subject: Subject,
    append_timeout: Duration,
}

impl Settler {
    pub(super) fn of(queue: &JsQueue) -> Settler {
        Settler {
            jetstream: queue.jetstream.clone(),
            subject: queue.subject.clone(),
            append_timeout: queue.options.append_timeout,
        }
    }

    /// Tells the server what became of messages whose entries are all settled. Acks go out
    /// in one round trip: the server handles one consumer's acks in the order they arrive,
    /// so its answer to the last one means every one before it is done too (and a following
    /// `depth` or `receive` sees them all).
    pub(super) async fn resolve(&self, resolutions: Vec<Resolution>) -> Result<(), BackendError> {
        let client = self.jetstream.client();
        let mut acks = Vec::new();
        for resolution in resolutions {
            match resolution {
                Resolution::Ack(reply) => acks.push(reply),
                Resolution::Nak(reply, delay) => {
                    let nak = if delay.is_zero() {
                        AckKind::Nak(None)
                    } else {
                        AckKind::Nak(Some(delay))
                    };
                    timed(self.append_timeout, "give entries back", async {
                        client
                            .request(reply, nak.into())
                            .await
                            .map(|_| ())
                            .map_err(|error| nats_error("give entries back", error))
                    })
                    .await?;
                }
                Resolution::Republish {
                    reply,
                    entries,
                    attempts,
                    due,
                } => {
                    self.republish(entries, attempts, due).await?;
                    acks.push(reply);
                }
            }
        }
        let Some((last, rest)) = acks.split_last() else {
            return Ok(());
        };
        timed(self.append_timeout, "acknowledge", async {
            for reply in rest {
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
        .await
    }

    /// Publishes entries of a message that were retried or timed out while others in it
    /// were settled, as a new pack that remembers their attempts: `due` is when they may be
    /// handed out again. A crash before the old message is acknowledged delivers them twice,
    /// never loses them.
    async fn republish(
        &self,
        entries: Vec<Bytes>,
        attempts: u32,
        due: Instant,
    ) -> Result<(), BackendError> {
        let wait = due.saturating_duration_since(Instant::now());
        let mut headers = HeaderMap::new();
        // A pack that must wait is handed back once, at its first delivery, with the rest of
        // its wait: that delivery is not an attempt.
        let before = if wait.is_zero() {
            attempts
        } else {
            let not_before = SystemTime::now() + wait;
            let millis = not_before
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            headers.insert(NOT_BEFORE, millis.to_string().as_str());
            attempts.saturating_sub(1)
        };
        headers.insert(ATTEMPTS_BEFORE, before.to_string().as_str());
        let messages: Vec<_> = packs::pack(entries, message_bytes_max(&self.jetstream.client()))
            .into_iter()
            .map(|(payload, pack_headers)| {
                let mut headers = headers.clone();
                if let Some(pack_headers) = pack_headers {
                    for (name, values) in pack_headers.iter() {
                        for value in values {
                            headers.insert(name.clone(), value.clone());
                        }
                    }
                }
                (payload, Some(headers))
            })
            .collect();
        timed(
            self.append_timeout,
            "publish retried entries again",
            async {
                let mut acks = Vec::with_capacity(messages.len());
                for (payload, headers) in messages {
                    let headers = headers.expect("a retried entry has headers");
                    let ack = self
                        .jetstream
                        .publish_with_headers(self.subject.clone(), headers, payload)
                        .await
                        .map_err(|error| nats_error("publish retried entries again", error))?;
                    acks.push(ack);
                }
                for ack in acks {
                    ack.await
                        .map_err(|error| nats_error("publish retried entries again", error))?;
                }
                Ok(())
            },
        )
        .await
    }
}
