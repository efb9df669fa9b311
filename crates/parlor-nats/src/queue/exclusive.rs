//! An exclusive queue (`JsQueueOptions::exclusive`): the consumer is a pinned-client
//! priority group (ADR-42), so the server hands entries to one handle only. Here: the
//! consumer's group settings, the pull as a member of the group (the library's own pulls
//! refuse such a consumer), whether another handle holds the pin (what a standby asks instead
//! of pulling), and giving the pin up on shutdown.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{PriorityPolicy, pull};
use async_nats::{StatusCode, Subject, header, jetstream};
use futures::StreamExt;
use parlor_core::BackendError;

use super::consume::Pull;
use super::{CONSUMER, JsQueue, nats_error, timed};

/// The one priority group of an exclusive queue's consumer.
const GROUP: &str = "parlor";
/// How often a standby handle asks whether the pin is free.
pub(super) const STANDBY_POLL: Duration = Duration::from_millis(200);

/// What an exclusive handle needs to pull as a member of the consumer's priority group.
pub(super) struct Pinning {
    /// `$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}`.
    next: Subject,
    /// The pin the server gave this handle, while it holds it.
    pin: Mutex<Option<Pin>>,
    /// Set by [`JsQueue::release`]: the handle never pulls again (unless it was a hand-over).
    released: AtomicBool,
    /// Where the server answers this handle's pulls: one subscription for all of them, each
    /// pull to a subject of its own under it (a subscription per pull was two more protocol
    /// operations for client and server, and a change to the server's interest, per pull).
    replies: tokio::sync::Mutex<Option<Replies>>,
}

/// The subscription to `{prefix}.*`, and the number of the last pull.
struct Replies {
    prefix: String,
    subscriber: async_nats::Subscriber,
    last: u64,
    /// Whether the last pull ended as the server ended it. One given up on this side (a
    /// timeout, the future dropped) may still be answered, and is ended by unsubscribing:
    /// what it brought would be taken by the next pull for that pull's.
    finished: bool,
}

/// A pin this handle holds.
struct Pin {
    /// The `Nats-Pin-Id` the server gave.
    id: String,
    /// Until when the pin is surely this handle's: the server unpins a handle
    /// `takeover_after` after its last pull with the pin arrived, so this counts from the
    /// sending of the last pull that the server answered with an entry for this pin.
    sure_until: Instant,
}

/// What [`JsQueue::holds_pin_for`] leaves for the way to the server and its timers.
const PIN_MARGIN: Duration = Duration::from_millis(250);

impl Pinning {
    /// The server answered a pull as the pin `id`'s: the pin is this handle's until
    /// `sure_until`.
    fn confirm(&self, queue: &str, id: &str, sure_until: Instant) {
        let mut pin = self.pin.lock().expect("pin lock");
        match pin.as_mut() {
            Some(pin) if pin.id == id => pin.sure_until = pin.sure_until.max(sure_until),
            _ => {
                tracing::info!(queue, pin = id, "this handle holds the queue's pin");
                *pin = Some(Pin {
                    id: id.to_string(),
                    sure_until,
                });
            }
        }
    }

    fn pin_id(&self) -> Option<String> {
        let pin = self.pin.lock().expect("pin lock");
        pin.as_ref().map(|pin| pin.id.clone())
    }

    pub(super) fn new(stream_name: &str) -> Self {
        let next = Subject::from(format!(
            "$JS.API.CONSUMER.MSG.NEXT.{stream_name}.{CONSUMER}"
        ));
        Pinning {
            next,
            pin: Mutex::new(None),
            released: AtomicBool::new(false),
            replies: tokio::sync::Mutex::new(None),
        }
    }
}

/// The consumer's settings as the one member of a pinned-client priority group.
pub(super) fn pinned_consumer(config: pull::Config, takeover_after: Duration) -> pull::Config {
    pull::Config {
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec![GROUP.to_string()],
        priority_timeout: takeover_after,
        ..config
    }
}

impl JsQueue {
    /// With `exclusive`: gives up this handle's pin, so that a standby takes over at once
    /// rather than `takeover_after` later. For a graceful shutdown, after the last `ack`:
    /// from now on this handle's `receive` returns empty after `wait`. What it still holds
    /// goes back first, in order. Does nothing without `exclusive`.
    ///
    /// A handle that may have lost its pin unnoticed (it has not pulled for a while: a long
    /// batch, a pause, cut off from NATS) and cannot get an answer as the pin's holder now
    /// touches nothing: the pin, and what it holds, may be another handle's by now. Those
    /// entries come back from the server when their visibility timeout runs out, first in
    /// line, to whichever handle holds the pin then.
    pub async fn release(&self) -> Result<(), BackendError> {
        let Some(pinning) = &self.pinning else {
            return Ok(());
        };
        pinning.released.store(true, Ordering::SeqCst);
        if !self.holds_pin_for(Duration::ZERO) {
            self.ask_for_pin(pinning).await;
        }
        if !self.holds_pin_for(Duration::ZERO) {
            let forgotten = std::mem::take(&mut *self.packs.lock().expect("queue lock"));
            pinning.pin.lock().expect("pin lock").take();
            if !forgotten.is_empty() {
                tracing::info!(
                    queue = %self.name,
                    "this handle may have lost the queue's pin: what it held comes back from the server"
                );
            }
            return Ok(());
        }
        let resolutions = self
            .packs
            .lock()
            .expect("queue lock")
            .give_back_all(Instant::now(), true);
        self.resolve(resolutions).await?;
        pinning.pin.lock().expect("pin lock").take();
        timed(self.options.append_timeout, "release the queue", async {
            self.entries
                .unpin_consumer(CONSUMER, GROUP)
                .await
                .map_err(|error| nats_error("release the queue", error))
        })
        .await
    }

    /// Asks whether the pin is still this handle's, after a while without entries: a pull
    /// with the pin (which restarts the server's count, and whatever it brings is held with
    /// the rest), then the consumer's pinned client.
    async fn ask_for_pin(&self, pinning: &Pinning) {
        let Some(id) = pinning.pin_id() else {
            return;
        };
        let asked_at = Instant::now();
        let asked = async {
            let messages = self.pull(Pull::Now(Duration::ZERO), 1).await?;
            self.hold_pulled(messages, Instant::now()).await;
            self.pinned_client().await
        };
        match asked.await {
            Ok(Some(pinned)) if pinned == id => {
                let sure_until = asked_at + self.options.takeover_after;
                pinning.confirm(&self.name, &id, sure_until);
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(queue = %self.name, %error, "cannot ask for the pin"),
        }
    }

    /// [`Queue::hand_over`](parlor_core::ports::Queue::hand_over) with `exclusive`: as
    /// [`JsQueue::release`], except that a later `receive` pulls, and is pinned, again (a
    /// persister gives a partition to another and may be given it back).
    pub(super) async fn hand_over_pin(&self) -> Result<(), BackendError> {
        let released = self.release().await;
        if let Some(pinning) = &self.pinning {
            pinning.released.store(false, Ordering::SeqCst);
        }
        released
    }

    /// Whether this handle was released: it never pulls again.
    pub(super) fn released(&self) -> bool {
        self.pinning
            .as_ref()
            .is_some_and(|pinning| pinning.released.load(Ordering::SeqCst))
    }

    /// Whether this is an exclusive handle without the pin.
    pub(super) fn standby(&self) -> bool {
        self.pinning
            .as_ref()
            .is_some_and(|pinning| pinning.pin.lock().expect("pin lock").is_none())
    }

    /// Whether this exclusive handle surely holds its pin `longer` from now. The server
    /// unpins a handle that has not pulled for `takeover_after`; after that, what it held is
    /// redelivered to the next holder only if its visibility clock ran out by then (see
    /// `restart_clocks`), and a pin given back or entries handed back would be the next
    /// holder's.
    pub(super) fn holds_pin_for(&self, longer: Duration) -> bool {
        let Some(pinning) = &self.pinning else {
            return false;
        };
        let pin = pinning.pin.lock().expect("pin lock");
        pin.as_ref()
            .is_some_and(|pin| pin.sure_until > Instant::now() + longer + PIN_MARGIN)
    }

    /// Whether another handle holds the pin of this exclusive queue.
    pub(super) async fn pinned_elsewhere(&self) -> Result<bool, BackendError> {
        Ok(self.pinned_client().await?.is_some())
    }

    /// The pin the server gave, if any.
    async fn pinned_client(&self) -> Result<Option<String>, BackendError> {
        let info = timed(
            self.options.append_timeout,
            "read the queue consumer",
            async {
                self.consumer
                    .get_info()
                    .await
                    .map_err(|error| nats_error("read the queue consumer", error))
            },
        )
        .await?;
        Ok(info
            .priority_groups
            .into_iter()
            .find(|group| group.group == GROUP)
            .and_then(|group| group.pinned_client_id))
    }

    /// A pull as a member of the consumer's priority group, with this handle's pin if it has
    /// one: the library's `fetch` and `batch` refuse a pinned-client consumer (they would not
    /// keep the pin), and its continuous `stream` would prefetch entries nobody asked for.
    ///
    /// Without a pin the server parks the pull while another handle holds the pin (it ends
    /// empty at its expiry), or pins this handle with the first entry it hands over. A pull
    /// with a pin that is no longer the server's is refused (423): the pin is dropped and the
    /// handle is a standby again.
    pub(super) async fn pull_pinned(
        &self,
        pinning: &Pinning,
        kind: Pull,
        expires: Duration,
        max: usize,
    ) -> Result<Vec<jetstream::Message>, BackendError> {
        let pin = pinning.pin_id();
        let request = PullRequest {
            batch: max,
            expires: u64::try_from(expires.as_nanos()).unwrap_or(u64::MAX),
            no_wait: matches!(kind, Pull::Now(_)),
            group: GROUP,
            id: pin.as_deref(),
        };
        let body = serde_json::to_vec(&request).expect("a pull request serializes");
        let client = self.jetstream.client();
        // One pull at a time: the lock is held until this one is over (or dropped).
        let mut replies = pinning.replies.lock().await;
        if replies.as_ref().is_none_or(|replies| !replies.finished) {
            *replies = None;
            let prefix = client.new_inbox();
            let subscriber = client
                .subscribe(format!("{prefix}.*"))
                .await
                .map_err(|error| nats_error("pull from the queue", error))?;
            *replies = Some(Replies {
                prefix,
                subscriber,
                last: 0,
                finished: true,
            });
        }
        let state = replies.as_mut().expect("subscribed above");
        state.last += 1;
        state.finished = false;
        let inbox = Subject::from(format!("{}.{}", state.prefix, state.last));
        let sent_at = Instant::now();
        client
            .publish_with_reply(pinning.next.clone(), inbox.clone(), body.into())
            .await
            .map_err(|error| nats_error("pull from the queue", error))?;
        let mut messages = Vec::new();
        while messages.len() < max {
            let Some(message) = state.subscriber.next().await else {
                *replies = None;
                if !messages.is_empty() {
                    break;
                }
                return Err(BackendError::unavailable(
                    "pull from the queue: the connection closed",
                ));
            };
            // Entries come under their own subject; a status under the pull's.
            let entry = matches!(message.status, None | Some(StatusCode::OK));
            if !entry && message.subject != inbox {
                continue;
            }
            match message.status {
                None | Some(StatusCode::OK) => {
                    if let Some(id) = message
                        .headers
                        .as_ref()
                        .and_then(|headers| headers.get_last(header::NATS_PIN_ID))
                    {
                        let sure_until = sent_at + self.options.takeover_after;
                        pinning.confirm(&self.name, id.as_str(), sure_until);
                    }
                    messages.push(jetstream::Message {
                        message,
                        context: self.jetstream.clone(),
                    });
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                // The pull is over: expired, or nothing more to hand out right now. (The
                // server takes a pull with a pin it has given up, too: these do not say
                // whose the pin is.)
                Some(StatusCode::TIMEOUT) | Some(StatusCode::NOT_FOUND) => break,
                Some(StatusCode::PIN_ID_MISMATCH) => {
                    let mut current = pinning.pin.lock().expect("pin lock");
                    if current.as_ref().map(|pin| &pin.id) == pin.as_ref() {
                        tracing::info!(queue = %self.name, "this handle lost the queue's pin");
                        *current = None;
                    }
                    break;
                }
                // The consumer holds `in_flight_max` unacknowledged entries: none for now.
                Some(StatusCode::REQUEST_TERMINATED)
                    if message
                        .description
                        .as_deref()
                        .is_some_and(|description| description.contains("MaxAckPending")) =>
                {
                    break;
                }
                // What was handed out already must reach the caller (see `receive`).
                Some(_) if !messages.is_empty() => break,
                Some(status) => {
                    state.finished = true;
                    return Err(BackendError::unavailable(format!(
                        "pull from the queue: {status} {}",
                        message.description.unwrap_or_default()
                    )));
                }
            }
        }
        if let Some(state) = replies.as_mut() {
            state.finished = true;
        }
        Ok(messages)
    }
}

/// A pull request as the server reads it (ADR-13, with ADR-42's priority group).
#[derive(serde::Serialize)]
struct PullRequest<'a> {
    batch: usize,
    /// Nanoseconds.
    expires: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    no_wait: bool,
    group: &'a str,
    /// The pin this handle holds, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}
