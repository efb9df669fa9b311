//! The cluster backend set: NATS JetStream for the queues, the connection registry, presence
//! and the relay between nodes; PostgreSQL for the store. Any number of `parlor gateway` and
//! `parlor persister` processes share them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use parlor_core::blobs::BlobStore;
use parlor_core::partitions::Partitioned;
use parlor_core::ports::Queue;
use parlor_core::{BackendError, BackendErrorKind, NodeId};
use parlor_nats::queue::{JsQueue, JsQueueOptions};
use parlor_nats::registry::NatsRegistry;
use parlor_nats::relay::NatsRelay;
use parlor_postgres::PgStore;
use parlor_server::{Deps, InboundLease};

/// How long a crashed or cut-off persister holds its partitions of the inbound queue: its
/// pins, leases and membership lapse after this, and the others take over (within 0.7 s
/// more: one membership poll and one standby poll), under the 6 s asked for. Longer than
/// the queues' visibility timeout and the server's `ack_wait` (3 s and 4 s), so what it
/// held is due again 1 s before the pin passes (a live handle restarts a clock only while
/// its pin is sure for an `ack_wait`: see `parlor_nats::queue`).
const TAKEOVER_AFTER: Duration = Duration::from_secs(5);
/// How long an entry handed to a consumer stays its own before it is handed out again.
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(3);

use crate::embedded::QueueName;

/// Where the cluster's shared services are. Flags or environment only.
#[derive(Args, Clone, Debug)]
pub struct ClusterSettings {
    /// The NATS server (JetStream enabled, `sync_interval: always` for durability), or the
    /// servers of a NATS cluster, comma-separated: the process connects to one that answers
    /// and moves to another when it goes away.
    #[arg(long, env = "PARLOR_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Copies of every stream and bucket this creates (the queues' streams and the registry's
    /// bucket): 1 on a single server; 3 (or 5) on a NATS cluster of at least that many
    /// servers, where a publish is acknowledged once a majority has it on disk, so that one
    /// (or two) servers may be lost. An odd number, since a majority of an even one tolerates
    /// no more losses than one replica fewer. Streams and buckets that exist keep theirs.
    #[arg(long, env = "PARLOR_NATS_REPLICAS", default_value_t = 1, value_parser = replicas)]
    pub nats_replicas: usize,
    /// The PostgreSQL database; the schema is migrated at start.
    #[arg(
        long,
        env = "PARLOR_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/parlor"
    )]
    pub postgres_url: String,
    /// Partitions of the inbound and notification queues, for a cluster being created: the
    /// persisters share them, one persister storing and delivering each at a time. Recorded
    /// in the database by the first process; later processes use the recorded count, and one
    /// given another count refuses to start (a conversation must stay in one partition;
    /// `parlor partitions --set` changes it). Default for a new cluster: 8.
    #[arg(long, env = "PARLOR_PARTITIONS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub partitions: Option<u32>,
    /// Database connections per process.
    #[arg(long, env = "PARLOR_POSTGRES_POOL", default_value_t = 8)]
    pub postgres_pool: usize,
    /// Keeps several Parlor clusters on one NATS apart: it prefixes stream, bucket and
    /// subject names. Lower-case letters, digits and '-'.
    #[arg(long, env = "PARLOR_NAMESPACE", default_value = "parlor")]
    pub namespace: String,
}

/// The inbound queue's partitions in a cluster whose database recorded none yet.
const PARTITIONS_DEFAULT: u32 = 8;

pub struct Cluster {
    pub store: Arc<PgStore>,
    /// The inbound queue's partitions, by number.
    pub inbound: Vec<Arc<JsQueue>>,
    /// All of them as one queue: where gateways append, and what operators see.
    inbound_whole: Arc<Partitioned>,
    /// The notification queue's partitions, by number: as many as the inbound queue's, with
    /// conversations placed by the same rule.
    pub notifications: Vec<Arc<JsQueue>>,
    notifications_whole: Arc<Partitioned>,
    registry: Arc<NatsRegistry>,
    relay: Arc<NatsRelay>,
}

impl Cluster {
    /// Connects to NATS and PostgreSQL, creating streams, buckets and tables as needed;
    /// `node` is this process's identity in the connection registry.
    pub async fn connect(
        settings: &ClusterSettings,
        node: NodeId,
        attempts_max: u32,
    ) -> anyhow::Result<Cluster> {
        let namespace = valid_namespace(settings)?;
        let client = parlor_nats::client::connect(&settings.nats_url).await?;
        let store = PgStore::connect(&settings.postgres_url, settings.postgres_pool)
            .await
            .context("cannot open the PostgreSQL store")?;
        let options = queue_options(settings, attempts_max);
        let (inbound_name, notifications_name, prefix) = (
            queue_name(namespace, QueueName::Inbound),
            queue_name(namespace, QueueName::Notifications),
            namespace.replace('-', "_"),
        );
        let partitions = store
            .queue_partitions(
                &inbound_name,
                settings.partitions.unwrap_or(PARTITIONS_DEFAULT),
            )
            .await
            .context("cannot read the inbound queue's partitions")?;
        if let Some(asked) = settings.partitions
            && asked != partitions
        {
            anyhow::bail!(
                "the inbound queue has {partitions} partitions, recorded when the cluster was \
                 created; this process was given --partitions {asked}: give it {partitions}, \
                 or none"
            );
        }
        // All at once: on a NATS cluster each new stream waits for its replicas to elect a
        // leader, a second or more each, and one after the other they kept a new cluster of
        // 8 partitions from starting within a minute. The notification queue has as many
        // partitions: the holder of inbound partition `p` delivers notification partition `p`.
        let opening = [
            (&inbound_name, "inbound"),
            (&notifications_name, "notification"),
        ]
        .into_iter()
        .flat_map(|(queue, what)| (0..partitions).map(move |partition| (queue, what, partition)))
        .map(|(queue, what, partition)| {
            let (client, options) = (client.clone(), options.clone());
            let name = partition_name(queue, partition);
            async move {
                retrying(&format!("the {what} queue"), || {
                    JsQueue::open(client.clone(), &name, options.clone())
                })
                .await
                .with_context(|| format!("cannot open the {what} queue's partition {partition}"))
            }
        });
        let mut inbound = futures::future::try_join_all(opening).await?;
        let notifications = inbound.split_off(partitions as usize);
        let whole = |queues: &[Arc<JsQueue>]| {
            Arc::new(Partitioned::new(
                queues
                    .iter()
                    .map(|queue| queue.clone() as Arc<dyn Queue>)
                    .collect(),
            ))
        };
        let (inbound_whole, notifications_whole) = (whole(&inbound), whole(&notifications));
        let registry = retrying("the connection registry", || {
            NatsRegistry::open(client.clone(), &prefix, node, settings.nats_replicas)
        })
        .await
        .context("cannot open the connection registry")?;
        let relay = Arc::new(NatsRelay::new(client, namespace));
        Ok(Cluster {
            store: Arc::new(store),
            inbound,
            inbound_whole,
            notifications,
            notifications_whole,
            registry,
            relay,
        })
    }

    /// The ports of the roles, with `blobs` for the bytes of files.
    pub fn deps(&self, blobs: Arc<dyn BlobStore>) -> Deps {
        Deps {
            store: self.store.clone(),
            inbound: self.inbound_whole.clone(),
            notifications: self.notifications_whole.clone(),
            registry: self.registry.clone(),
            presence: self.registry.clone(),
            relay: self.relay.clone(),
            search: Some(self.store.clone()),
            blobs,
            // Lapses as the queue's pin does: a standby takes over in both at about the same time.
            inbound_lease: Some(InboundLease {
                leases: self.store.clone(),
                ttl: TAKEOVER_AFTER,
                partitions: self.inbound_whole.parts().to_vec(),
                notifications: self.notifications_whole.parts().to_vec(),
            }),
        }
    }

    pub fn queue(&self, name: QueueName) -> Arc<dyn Queue> {
        match name {
            QueueName::Inbound => self.inbound_whole.clone(),
            QueueName::Notifications => self.notifications_whole.clone(),
        }
    }

    /// Every queue this process consumes, for a clean stop's hand-over.
    pub fn consumed_queues(&self) -> impl Iterator<Item = &Arc<JsQueue>> {
        self.inbound.iter().chain(&self.notifications)
    }
}

fn valid_namespace(settings: &ClusterSettings) -> anyhow::Result<&str> {
    let namespace = settings.namespace.as_str();
    let valid = !namespace.is_empty()
        && namespace
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        anyhow::bail!("the namespace must be lower-case letters, digits and '-'");
    }
    Ok(namespace)
}

fn queue_options(settings: &ClusterSettings, attempts_max: u32) -> JsQueueOptions {
    // One active consumer per queue, the others on standby: with competing persisters a
    // later batch could be stored before an earlier one, and a connection's messages would
    // lose their send order. A standby takes over within `takeover_after` of a crash; by
    // then what the dead one held is past its visibility timeout, and JetStream hands
    // redeliveries out before newer entries, so the order survives the crash too.
    JsQueueOptions {
        attempts_max,
        exclusive: true,
        visibility_timeout: VISIBILITY_TIMEOUT,
        takeover_after: TAKEOVER_AFTER,
        replicas: settings.nats_replicas,
        ..JsQueueOptions::default()
    }
}

/// The partitions the cluster's database records (`parlor partitions`).
pub async fn recorded_partitions(settings: &ClusterSettings) -> anyhow::Result<Option<u32>> {
    let inbound_name = queue_name(valid_namespace(settings)?, QueueName::Inbound);
    let store = PgStore::connect(&settings.postgres_url, 1)
        .await
        .context("cannot open the PostgreSQL store")?;
    Ok(store.recorded_partitions(&inbound_name).await?)
}

/// `parlor partitions --set N`: gives the inbound and notification queues `to` partitions;
/// the count they had. A conversation's entries must all be in one partition, and a changed
/// count places conversations anew, so the change is made only while nothing can be in
/// between: no persister holds a membership or a lease, no gateway a registry lease, and
/// every partition is empty (everything accepted is stored and delivered) with no dead
/// letters (they would be redriven into the partition of the old count). Each refusal says
/// what to do. Partitions past a smaller count keep their (empty) streams.
pub async fn change_partitions(settings: &ClusterSettings, to: u32) -> anyhow::Result<u32> {
    let namespace = valid_namespace(settings)?;
    let (inbound_name, notifications_name, prefix) = (
        queue_name(namespace, QueueName::Inbound),
        queue_name(namespace, QueueName::Notifications),
        namespace.replace('-', "_"),
    );
    let store = PgStore::connect(&settings.postgres_url, 1)
        .await
        .context("cannot open the PostgreSQL store")?;
    let Some(from) = store.recorded_partitions(&inbound_name).await? else {
        anyhow::bail!(
            "this database records no partitions: a new cluster takes --partitions {to} when \
             its first process starts"
        );
    };
    if from == to {
        return Ok(from);
    }
    let holders = store.live_lease_holders().await?;
    if !holders.is_empty() {
        anyhow::bail!(
            "{} persister(s) still run ({}): stop every persister and gateway first",
            holders.len(),
            holders.join(", ")
        );
    }
    let client = parlor_nats::client::connect(&settings.nats_url).await?;
    let registry = NatsRegistry::open(
        client.clone(),
        &prefix,
        NodeId::new(),
        settings.nats_replicas,
    )
    .await
    .context("cannot open the connection registry")?;
    let gateways = registry.live_gateways();
    if !gateways.is_empty() {
        anyhow::bail!(
            "{} gateway(s) still run: stop every gateway and persister first",
            gateways.len()
        );
    }
    let options = queue_options(settings, JsQueueOptions::default().attempts_max);
    for (queue, what) in [
        (&inbound_name, "inbound"),
        (&notifications_name, "notification"),
    ] {
        for partition in 0..from {
            let name = partition_name(queue, partition);
            let depth = JsQueue::open(client.clone(), &name, options.clone())
                .await?
                .depth()
                .await?;
            if depth.pending > 0 {
                anyhow::bail!(
                    "the {what} queue's partition {partition} ({name}) holds entries not yet \
                     stored or delivered: start the persisters to finish them, stop them, and \
                     try again"
                );
            }
            if depth.dead > 0 {
                anyhow::bail!(
                    "the {what} queue's partition {partition} ({name}) holds {} dead letters: \
                     redrive them (`parlor dlq redrive --cluster`) and let the persisters store \
                     them, or purge them, first",
                    depth.dead
                );
            }
        }
    }
    if !store.change_partitions(&inbound_name, from, to).await? {
        anyhow::bail!("the partitions changed while this ran: look again");
    }
    Ok(from)
}

/// How long opening a stream or bucket is tried again while NATS answers `unavailable`: a
/// NATS cluster that has just started, or lost a node, elects leaders for a few seconds.
const OPEN_RETRY_FOR: Duration = Duration::from_secs(60);

async fn retrying<T, F, Fut>(what: &str, mut open: F) -> Result<T, BackendError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BackendError>>,
{
    let deadline = tokio::time::Instant::now() + OPEN_RETRY_FOR;
    loop {
        match open().await {
            Err(error)
                if error.kind == BackendErrorKind::Unavailable
                    && tokio::time::Instant::now() < deadline =>
            {
                tracing::warn!(%error, "cannot open {what} yet; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            result => return result,
        }
    }
}

/// `--nats-replicas`: 1, 3 or 5.
fn replicas(value: &str) -> Result<usize, String> {
    match value.parse() {
        Ok(replicas @ (1 | 3 | 5)) => Ok(replicas),
        _ => Err("1, 3 or 5 (an odd number, at most JetStream's 5)".into()),
    }
}

/// Partition 0 keeps the queue's own name (`parlor-inbound`), as before partitions were;
/// the others are `parlor-inbound-p1`, `parlor-inbound-p2`, … (and `parlor-notifications-p1`, …)
fn partition_name(queue: &str, partition: u32) -> String {
    match partition {
        0 => queue.to_string(),
        _ => format!("{queue}-p{partition}"),
    }
}

/// `parlor-inbound`, `parlor-notifications`, …
fn queue_name(namespace: &str, queue: QueueName) -> String {
    let queue = match queue {
        QueueName::Inbound => "inbound",
        QueueName::Notifications => "notifications",
    };
    format!("{namespace}-{queue}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_1_3_or_5() {
        let parsed: Vec<_> = ["1", "3", "5"].iter().map(|v| replicas(v)).collect();
        assert_eq!(parsed, [Ok(1), Ok(3), Ok(5)]);
        for refused in ["0", "2", "4", "7", "three", ""] {
            assert!(replicas(refused).is_err(), "{refused:?}");
        }
    }
}
