//! Trimming: the entries stream keeps acknowledged entries (limits retention, since a
//! work-queue stream removing each one as it was acknowledged was 15 times slower) until a
//! handle purges them below the consumer's ack floor, at most once per [`TRIM_EVERY`], after
//! an ack.

use std::time::{Duration, Instant};

use parlor_core::BackendError;

use super::{JsQueue, nats_error, timed};

/// How often a handle purges acknowledged entries from the stream, at most.
pub(super) const TRIM_EVERY: Duration = Duration::from_secs(1);

impl JsQueue {
    /// Purges acknowledged entries, those below the consumer's ack floor, if this handle has
    /// not done so for [`TRIM_EVERY`]. Best effort: what is left is purged by the next trim.
    ///
    /// Not while redeliveries come in: a purge makes the server forget which entries are due
    /// for redelivery, and those it has not handed out yet would come back after newer ones
    /// (the entries a crashed persister held, say).
    pub(super) async fn trim_if_due(&self) {
        let redelivered_at = *self.redelivered_at.lock().expect("trim lock");
        if redelivered_at.is_some_and(|at| at.elapsed() < self.options.visibility_timeout * 2) {
            return;
        }
        {
            let mut trimmed_at = self.trimmed_at.lock().expect("trim lock");
            if trimmed_at.elapsed() < TRIM_EVERY {
                return;
            }
            *trimmed_at = Instant::now();
        }
        let trim = async {
            let consumer = self
                .consumer
                .get_info()
                .await
                .map_err(|error| nats_error("read the queue consumer", error))?;
            let floor = consumer.ack_floor.stream_sequence;
            if floor > 0 {
                self.entries
                    .purge()
                    .sequence(floor + 1)
                    .await
                    .map_err(|error| nats_error("trim the queue", error))?;
            }
            Ok::<_, BackendError>(())
        };
        if let Err(error) = timed(self.options.append_timeout, "trim the queue", trim).await {
            tracing::debug!(%error, queue = %self.name, "cannot trim the queue");
        }
    }
}
