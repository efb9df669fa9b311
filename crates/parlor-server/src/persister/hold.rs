//! A persister's hold on one partition of the inbound queue where several persisters run
//! (the cluster): a lease in the store ([`Leases`]), taken only while the partition is this
//! persister's share (see `share.rs`) and before it pulls anything, renewed every quarter of
//! its time to live between batches, and checked by the store in every batch's transaction
//! (`Store::append_events_fenced`). Without the lease a persister does not pull that
//! partition: it asks again every [`STANDBY_POLL`].
//!
//! The queue's own pin (NATS) keeps the order at a takeover: the new holder's pulls are
//! pinned only once the old holder has handed the partition over, or has not pulled for the
//! pin's timeout, by when whatever it held is due for redelivery, first. The lease is what
//! stops the old holder, should it still be alive (paused, cut off), from storing what it
//! held behind the new one's work.

use std::time::{Duration, Instant};

use parlor_core::ports::Lease;
use tokio::sync::watch;

use crate::InboundLease;

/// How often a persister asks for a partition that is its share and that another holds.
pub(super) const STANDBY_POLL: Duration = Duration::from_millis(200);

pub(super) struct Hold {
    config: InboundLease,
    partition: u32,
    owner: String,
    /// This persister's share of the partitions, as the live members divide them.
    share: watch::Receiver<Vec<u32>>,
    lease: Option<Lease>,
    /// When the lease was last taken or renewed (asked at), on this process's clock.
    renewed_at: Option<Instant>,
}

impl Hold {
    pub(super) fn new(
        config: InboundLease,
        partition: u32,
        owner: String,
        share: watch::Receiver<Vec<u32>>,
    ) -> Self {
        Self {
            config,
            partition,
            owner,
            share,
            lease: None,
            renewed_at: None,
        }
    }

    /// Whether this partition is this persister's share now.
    pub(super) fn is_share(&self) -> bool {
        self.share.borrow().contains(&self.partition)
    }

    /// Waits until the share changes (or forever, once the sharing stopped).
    pub(super) async fn share_changed(&mut self) {
        if self.share.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The lease, taken (if this partition is this persister's share) or renewed if a
    /// quarter of its time has passed; `None` while another persister holds it, it is not
    /// this persister's share, or the store cannot say: do not pull then.
    pub(super) async fn current(&mut self) -> Option<Lease> {
        let ttl = self.config.ttl;
        if let (Some(lease), Some(at)) = (&self.lease, self.renewed_at)
            && at.elapsed() < ttl / 4
        {
            return Some(lease.clone());
        }
        if self.lease.is_none() && !self.is_share() {
            return None;
        }
        let asked_at = Instant::now();
        let leases = &self.config.leases;
        let answer = match &self.lease {
            Some(lease) => leases
                .renew(lease, ttl)
                .await
                .map(|renewed| renewed.then(|| lease.clone())),
            None => leases.acquire(self.partition, &self.owner, ttl).await,
        };
        match answer {
            Ok(Some(lease)) => {
                if self.lease.is_none() {
                    tracing::info!(
                        partition = self.partition,
                        epoch = lease.epoch,
                        owner = %self.owner,
                        "this persister holds a partition of the inbound queue"
                    );
                }
                self.lease = Some(lease);
                self.renewed_at = Some(asked_at);
            }
            Ok(None) => self.lose("the lease lapsed or passed to another persister"),
            Err(error) => {
                tracing::warn!(%error, partition = self.partition, "cannot renew a partition's lease");
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
                partition = self.partition,
                epoch = lease.epoch,
                why,
                "this persister no longer holds a partition of the inbound queue"
            );
        }
        self.renewed_at = None;
    }

    /// Gives the lease up (a clean stop, or the partition is another's share now), so that
    /// the next holder takes over at once.
    pub(super) async fn release(&mut self) {
        self.renewed_at = None;
        let Some(lease) = self.lease.take() else {
            return;
        };
        match self.config.leases.release(&lease).await {
            Ok(()) => tracing::info!(
                partition = self.partition,
                epoch = lease.epoch,
                "this persister handed a partition of the inbound queue over"
            ),
            Err(error) => {
                tracing::warn!(%error, partition = self.partition, "cannot release a partition's lease; it lapses")
            }
        }
    }
}
