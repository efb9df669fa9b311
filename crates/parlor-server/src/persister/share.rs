//! How the persisters of a cluster share the inbound queue's partitions: each renews its
//! membership of one group in the store every [`MEMBERSHIP_POLL`], reads the live members
//! back, and takes its share of them ([`parlor_core::partitions::assign`]): every member
//! computes the same division from the same list. One task per partition stores what that
//! partition holds while its lease is this persister's (`hold.rs`), delivers the partition's
//! notifications meanwhile (`notifier::deliver_partition`), and hands both over at a batch's
//! end once the partition is another's share.
//!
//! Bounds: a persister that joins is seen by the others within one poll and takes its share
//! as each holder ends its batch in progress; one that stops cleanly leaves the group and
//! hands its partitions over at once; one that dies is dropped from the group once its
//! membership lapses (`InboundLease::ttl`), when its leases lapse too, and the others take
//! its partitions within one poll and one [`hold::STANDBY_POLL`] of that.

use std::sync::Arc;
use std::time::Duration;

use parlor_core::BackendError;
use parlor_core::partitions::assign;
use tokio::sync::watch;

use super::hold::{self, Hold};
use crate::config::ConsumerConfig;
use crate::metrics as m;
use crate::{Deps, InboundLease, Shutdown};

/// The group the persisters share the inbound queue in.
const GROUP: &str = "inbound-persisters";
/// How often a persister renews its membership and reads the others'.
pub(super) const MEMBERSHIP_POLL: Duration = Duration::from_millis(500);

/// Runs one task per partition until `shutdown`; the first failure (a poisoned queue) ends
/// it, and the process with it.
pub(super) async fn run(
    deps: Deps,
    config: ConsumerConfig,
    shutdown: Shutdown,
    sharing: InboundLease,
) -> Result<(), BackendError> {
    let owner = format!(
        "persister-{}-{}",
        std::process::id(),
        parlor_core::ids::NodeId::new()
    );
    let count = sharing.partitions.len() as u32;
    let (share_tx, share_rx) = watch::channel(Vec::new());
    let membership = tokio::spawn(keep_membership(
        sharing.clone(),
        owner.clone(),
        count,
        share_tx,
        shutdown.clone(),
    ));
    let mut partitions = tokio::task::JoinSet::new();
    assert_eq!(
        sharing.partitions.len(),
        sharing.notifications.len(),
        "the inbound and notification queues have as many partitions"
    );
    let queues = sharing.partitions.iter().zip(&sharing.notifications);
    for (partition, (inbound, notifications)) in queues.enumerate() {
        let deps = Deps {
            inbound: Arc::clone(inbound),
            notifications: Arc::clone(notifications),
            ..deps.clone()
        };
        let hold = Hold::new(
            sharing.clone(),
            partition as u32,
            owner.clone(),
            share_rx.clone(),
        );
        partitions.spawn(super::run_partition(
            deps,
            config.clone(),
            shutdown.clone(),
            Some(hold),
        ));
    }
    let mut outcome = Ok(());
    while let Some(ended) = partitions.join_next().await {
        let ended = ended.unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()));
        if let Err(error) = ended {
            outcome = Err(error);
            break;
        }
    }
    membership.abort();
    // On a clean stop the membership task left already, at once.
    if !shutdown.is_fired()
        && let Err(error) = sharing.leases.leave_group(GROUP, &owner).await
    {
        tracing::warn!(%error, "cannot leave the persisters' group; the membership lapses");
    }
    outcome
}

/// Renews the membership and publishes this persister's share, until `shutdown`: then it
/// leaves the group at once, so that the others see their new share while this one hands
/// its partitions over.
async fn keep_membership(
    sharing: InboundLease,
    owner: String,
    count: u32,
    share: watch::Sender<Vec<u32>>,
    shutdown: Shutdown,
) {
    loop {
        if shutdown.is_fired() {
            if let Err(error) = sharing.leases.leave_group(GROUP, &owner).await {
                tracing::warn!(%error, "cannot leave the persisters' group; the membership lapses");
            }
            return;
        }
        match sharing
            .leases
            .group_members(GROUP, &owner, sharing.ttl)
            .await
        {
            Ok(members) => {
                let mine = assign(count, &members, &owner);
                metrics::gauge!(m::PERSISTERS_LIVE).set(members.len() as f64);
                share.send_if_modified(|share| {
                    if *share == mine {
                        return false;
                    }
                    tracing::info!(
                        members = members.len(),
                        share = ?mine,
                        "the persisters' share of the inbound queue changed"
                    );
                    *share = mine;
                    true
                });
            }
            // Leases that cannot be renewed are given up by each partition's hold.
            Err(error) => tracing::warn!(%error, "cannot renew this persister's membership"),
        }
        tokio::select! {
            _ = tokio::time::sleep(MEMBERSHIP_POLL) => {}
            _ = shutdown.clone().wait() => {}
        }
    }
}

/// Standby for one partition: waits until it is this persister's share and its lease is
/// taken; false when `shutdown` came first.
pub(super) async fn wait_for_lease(hold: &mut Hold, shutdown: &Shutdown) -> bool {
    loop {
        if shutdown.is_fired() {
            return false;
        }
        if hold.current().await.is_some() {
            return true;
        }
        let poll = if hold.is_share() {
            // Another holds it still: it hands over at its batch's end, or its lease lapses.
            tokio::time::sleep(hold::STANDBY_POLL)
        } else {
            tokio::time::sleep(Duration::from_secs(3600))
        };
        tokio::select! {
            _ = poll => {}
            _ = hold.share_changed() => {}
            _ = shutdown.clone().wait() => {}
        }
    }
}
