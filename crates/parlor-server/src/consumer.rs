//! One policy for every queue consumer (the persister, the notifier, and whatever consumes a
//! queue later): what to do with an entry whose step failed is decided in one pure function,
//! [`settle`], and applied to the queue by one small [`Consumer`].
//!
//! | the failure                                        | [`Settle`]                     |
//! |----------------------------------------------------|--------------------------------|
//! | `Poisoned`                                         | `Stop`: the process must exit  |
//! | `StorageFull`, or the backend answers nothing      | `WaitOutage`, no attempt spent |
//! | … but the consumer cannot wait (shutdown, notifier) | `RetryAfter(backoff)`          |
//! | `Rejected`, the entry alone                        | `DeadLetter(the error)`        |
//! | `attempts >= attempts_max`                         | `DeadLetter("failed N times…")`|
//! | anything else                                      | `RetryAfter(backoff)`          |

use std::sync::Arc;
use std::time::Duration;

use parlor_core::ports::{Delivery, DeliveryId, Queue};
use parlor_core::{BackendError, BackendErrorKind};

use crate::config::ConsumerConfig;
use crate::metrics as m;
use crate::retry::backoff;

/// What becomes of an entry whose step failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Hand it back to the queue, to be delivered again after the delay (an attempt spent).
    RetryAfter(Duration),
    /// Give up: to the dead-letter queue with this reason.
    DeadLetter(String),
    /// Durability is lost: the consumer stops and returns the error; the process exits.
    Stop,
    /// An outage that every entry would meet: hold the step and try it again after a pause,
    /// spending no attempt, so that nothing newer overtakes it and nothing healthy is
    /// dead-lettered for it.
    WaitOutage,
}

/// One entry of a failed step, and what the consumer knows besides the error.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    /// The entry's delivery; its id also seeds the backoff's jitter.
    pub delivery: DeliveryId,
    /// Deliveries of the entry so far, this one included (1 on the first).
    pub attempts: u32,
    /// The step held this entry only. A `Rejected` batch may be any entry's fault: its
    /// entries come back and are tried one by one.
    pub alone: bool,
    /// The backend behind the error answers nothing at all (its health check failed too).
    pub backend_down: bool,
    /// The consumer can hold the step and try it again: false at shutdown, and for consumers
    /// that never hold a step (the notifier). An outage then hands the entry back instead.
    pub can_wait: bool,
}

impl Attempt {
    /// A delivery that failed on its own, in a consumer that does not hold steps.
    pub fn alone(delivery: &Delivery) -> Self {
        Self {
            delivery: delivery.id,
            attempts: delivery.attempts,
            alone: true,
            backend_down: false,
            can_wait: false,
        }
    }
}

/// The policy: what becomes of an entry whose step failed with `error`.
pub fn settle(error: &BackendError, attempt: &Attempt, config: &ConsumerConfig) -> Settle {
    let retry = || {
        Settle::RetryAfter(backoff(
            attempt.attempts,
            config.retry_base,
            config.retry_max,
            attempt.delivery.0,
        ))
    };
    if stops(error) {
        return Settle::Stop;
    }
    match error.kind {
        BackendErrorKind::StorageFull if attempt.can_wait => Settle::WaitOutage,
        // A full disk is never a reason to dead-letter, even after many attempts.
        BackendErrorKind::StorageFull => retry(),
        _ if attempt.backend_down && attempt.can_wait => Settle::WaitOutage,
        _ if attempt.backend_down => retry(),
        BackendErrorKind::Rejected if attempt.alone => Settle::DeadLetter(error.to_string()),
        _ if attempt.attempts >= config.attempts_max => {
            Settle::DeadLetter(format!("failed {} times, last: {error}", attempt.attempts))
        }
        _ => retry(),
    }
}

/// Durability is lost (a failed fsync): nothing more may be acknowledged.
pub fn stops(error: &BackendError) -> bool {
    error.kind == BackendErrorKind::Poisoned
}

/// Applies the policy to one queue: hands entries back, dead-letters them (and counts it
/// under `label`), and tells the caller when to stop or to wait.
#[derive(Clone)]
pub struct Consumer {
    queue: Arc<dyn Queue>,
    /// The `queue` label of the dead-letter metric.
    label: &'static str,
    config: ConsumerConfig,
}

impl Consumer {
    pub fn new(queue: Arc<dyn Queue>, label: &'static str, config: ConsumerConfig) -> Self {
        Self {
            queue,
            label,
            config,
        }
    }

    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// Settles every entry of a step that failed with `error`. `Ok(None)`: each was handed
    /// back or dead-lettered. `Ok(Some(error))`: an outage, nothing was done; the caller
    /// waits and tries the step again. `Err`: stop (the error, or one from the queue).
    pub async fn apply(
        &self,
        error: BackendError,
        entries: &[Attempt],
    ) -> Result<Option<BackendError>, BackendError> {
        let settled: Vec<Settle> = entries
            .iter()
            .map(|attempt| settle(&error, attempt, &self.config))
            .collect();
        if settled.contains(&Settle::Stop) {
            tracing::error!(%error, queue = self.label, "durability is lost: the consumer stops");
            return Err(error);
        }
        if settled.contains(&Settle::WaitOutage) {
            return Ok(Some(error));
        }
        tracing::warn!(%error, queue = self.label, entries = entries.len(), "a step failed");
        for (attempt, settle) in entries.iter().zip(settled) {
            match settle {
                Settle::RetryAfter(delay) => {
                    if let Err(error) = self.queue.retry_later(attempt.delivery, delay).await {
                        // Not handed back: redelivered after its visibility timeout anyway.
                        self.stop_on_poison(error)?;
                    }
                }
                Settle::DeadLetter(reason) => self.dead_letter(attempt.delivery, &reason).await?,
                Settle::Stop | Settle::WaitOutage => unreachable!("handled above"),
            }
        }
        Ok(None)
    }

    /// Moves an entry to the dead-letter queue with `reason`, and counts it.
    pub async fn dead_letter(&self, id: DeliveryId, reason: &str) -> Result<(), BackendError> {
        tracing::warn!(delivery = id.0, reason, queue = self.label, "dead-lettered");
        metrics::counter!(m::DEAD_LETTERED, "queue" => self.label).increment(1);
        if let Err(error) = self.queue.dead_letter(id, reason).await {
            // Not recorded: the entry is redelivered after its visibility timeout, tried again.
            tracing::error!(%error, queue = self.label, "cannot dead-letter an entry");
            self.stop_on_poison(error)?;
        }
        Ok(())
    }

    /// A failed `receive` or `ack`: stop if the queue is poisoned, else pause briefly.
    pub async fn queue_failed(&self, error: BackendError) -> Result<(), BackendError> {
        self.stop_on_poison(error)
            .map_err(|error| {
                tracing::error!(%error, queue = self.label, "the queue is poisoned: the consumer stops");
                error
            })?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }

    /// `Err` for a poisoned queue (the consumer stops), else logs and carries on.
    fn stop_on_poison(&self, error: BackendError) -> Result<(), BackendError> {
        if stops(&error) {
            return Err(error);
        }
        tracing::warn!(%error, queue = self.label, "queue operation failed; going on");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ConsumerConfig {
        ConsumerConfig {
            attempts_max: 3,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
            ..ConsumerConfig::default()
        }
    }

    fn attempt(attempts: u32) -> Attempt {
        Attempt {
            delivery: DeliveryId(0),
            attempts,
            alone: false,
            backend_down: false,
            can_wait: true,
        }
    }

    #[test]
    fn the_policy_table() {
        let config = config();
        let unavailable = BackendError::unavailable("down");
        let full = BackendError::storage_full("full");
        let rejected = BackendError::rejected("never");
        let poisoned = BackendError::poisoned("fsync");
        let retry = |attempts| Settle::RetryAfter(Duration::from_millis(100u64 << (attempts - 1)));
        let cases = [
            (&poisoned, attempt(1), Settle::Stop),
            (&poisoned, Attempt::alone(&delivery(5)), Settle::Stop),
            (&unavailable, attempt(1), retry(1)),
            (&unavailable, attempt(2), retry(2)),
            (
                &unavailable,
                attempt(3),
                Settle::DeadLetter("failed 3 times, last: Unavailable: down".into()),
            ),
            (&full, attempt(1), Settle::WaitOutage),
            (&full, attempt(9), Settle::WaitOutage),
            (
                &full,
                Attempt {
                    can_wait: false,
                    ..attempt(9)
                },
                Settle::RetryAfter(Duration::from_secs(1)),
            ),
            (
                &unavailable,
                Attempt {
                    backend_down: true,
                    ..attempt(9)
                },
                Settle::WaitOutage,
            ),
            (&rejected, attempt(1), retry(1)),
            (
                &rejected,
                Attempt {
                    alone: true,
                    ..attempt(1)
                },
                Settle::DeadLetter("Rejected: never".into()),
            ),
        ];
        for (error, attempt, expected) in cases {
            assert_eq!(
                settle(error, &attempt, &config),
                expected,
                "{error} {attempt:?}"
            );
        }
    }

    fn delivery(attempts: u32) -> Delivery {
        Delivery {
            id: DeliveryId(0),
            payload: Vec::new(),
            attempts,
        }
    }
}
