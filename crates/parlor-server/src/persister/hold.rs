//! The persister's hold on the inbound queue where several persisters run (the cluster): a
//! lease in the store ([`Leases`]), taken before it pulls anything, renewed every quarter of
//! its time to live between batches, and checked by the store in every batch's transaction
//! (`Store::append_events_fenced`). A persister without the lease does not pull: it is a
//! standby, and asks for the lease again every [`STANDBY_POLL`].
//!
//! The queue's own pin (NATS) keeps the order at a takeover: the new holder's pulls are
//! pinned only once the old holder has not pulled for the pin's timeout, by when whatever
//! it held is due for redelivery, first. The lease is what stops the old holder, should it
//! still be alive (paused, cut off), from storing what it held behind the new one's work.

use std::time::{Duration, Instant};

use parlor_core::ports::Lease;

use crate::InboundLease;

/// The inbound queue has one partition so far.
const PARTITION: u32 = 0;
/// How often a standby asks for the lease.
pub(super) const STANDBY_POLL: Duration = Duration::from_millis(200);

pub(super) struct Hold {
    config: InboundLease,
    owner: String,
    lease: Option<Lease>,
    /// When the lease was last taken or renewed (asked at), on this process's clock.
    renewed_at: Option<Instant>,
}

impl Hold {
    pub(super) fn new(config: InboundLease) -> Self {
        let owner = format!(
            "persister-{}-{}",
            std::process::id(),
            parlor_core::ids::NodeId::new()
        );
        Self {
            config,
            owner,
            lease: None,
            renewed_at: None,
        }
    }

    /// The lease, taken or renewed if a quarter of its time has passed; `None` while
    /// another persister holds it or the store cannot say: do not pull then.
    pub(super) async fn current(&mut self) -> Option<Lease> {
        let ttl = self.config.ttl;
        if let (Some(lease), Some(at)) = (&self.lease, self.renewed_at)
            && at.elapsed() < ttl / 4
        {
            return Some(lease.clone());
        }
        let asked_at = Instant::now();
        let leases = &self.config.leases;
        let answer = match &self.lease {
            Some(lease) => leases
                .renew(lease, ttl)
                .await
                .map(|renewed| renewed.then(|| lease.clone())),
            None => leases.acquire(PARTITION, &self.owner, ttl).await,
        };
        match answer {
            Ok(Some(lease)) => {
                if self.lease.is_none() {
                    tracing::info!(epoch = lease.epoch, owner = %self.owner, "this persister holds the inbound queue");
                }
                self.lease = Some(lease);
                self.renewed_at = Some(asked_at);
            }
            Ok(None) => self.lose("the lease lapsed or passed to another persister"),
            Err(error) => {
                tracing::warn!(%error, "cannot renew the inbound queue's lease");
                // The store decides in the end (it fences); locally the lease is given up
                // before it can have lapsed there.
                if self.renewed_at.is_some_and(|at| at.elapsed() >= ttl / 2) {
                    self.lose("the lease could not be renewed");
                }
            }
        }
        self.lease.clone()
    }

    /// Stops holding the lease (the store fenced a batch, or it lapsed): standby from now.
    pub(super) fn lose(&mut self, why: &str) {
        if let Some(lease) = self.lease.take() {
            tracing::warn!(
                epoch = lease.epoch,
                why,
                "this persister no longer holds the inbound queue"
            );
        }
        self.renewed_at = None;
    }

    /// Gives the lease up (a clean stop), so that a standby takes over at once.
    pub(super) async fn release(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Err(error) = self.config.leases.release(&lease).await {
            tracing::warn!(%error, "cannot release the inbound queue's lease; it lapses");
        }
    }
}
