//! The connection registry and presence on one JetStream key-value bucket, with a local
//! view in every process so that `locate` and `online` cost no round trip.
//!
//! Keys: `conn.<user>.<node>.<connection>` (empty value) per live connection, and
//! `node.<node>` (lease end, unix ms as decimal text) per gateway, written by `heartbeat`.
//! Removed keys are purged with a TTL on the marker, so the bucket holds live entries plus
//! an hour of markers, however many gateways crash. Lease ends are compared with the local
//! clock: nodes' clocks must agree to well under the lease (NTP does).
//!
//! Every process follows the bucket with a watch (current values, then changes in stream
//! order) into a `View`. A node whose lease has passed counts as gone at once. Presence
//! changes are derived from the watch, and each is announced by exactly one node:
//! - a change caused by a connection's put or purge is announced by the node that owns the
//!   connection, when the event comes back through the watch; every process sees the same
//!   order, so of two racing last disconnects only the later one sees the user go offline;
//! - users taken offline by a lapsed lease are announced by the live node that wins the
//!   compare-and-purge of the dead node's key (guarded by the revision it saw, so a node
//!   that heartbeated meanwhile is not declared dead); the winner then purges the dead
//!   node's connections. Any gateway may try, about once a second, so users go offline
//!   within lease + ~1 s of a crash.

mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use parlor_core::ports::{ConnectionInfo, Presence, PresenceChange, Registry};
use parlor_core::{BackendError, NodeId, UserId};
use time::OffsetDateTime;
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;

use view::{Claim, Event, Key, View};

/// How many presence changes a slow subscriber may fall behind before its stream ends.
const CHANGES_BUFFERED_MAX: usize = 4096;
/// How long purge markers stay: longer than any watch is expected to be disconnected, since
/// a watch that resumes after its markers are gone misses those removals.
const MARKER_TTL: Duration = Duration::from_secs(3600);
/// How often expired leases are looked for: bounds the delay of an offline change.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long `open` waits for the first snapshot of the bucket to advance: it waits as long as
/// entries keep coming, since the bucket holds an entry per live connection of the whole
/// cluster plus an hour of purge markers (147,612 after 95,000 connections and their
/// reconnects, which a loaded machine read in more than 10 s).
const SNAPSHOT_STALL_MAX: Duration = Duration::from_secs(10);
/// The snapshot's progress is announced every this many entries.
const SNAPSHOT_PROGRESS_EVERY: u64 = 1024;
/// A process's writes of connection keys (puts and purges) in flight at once. The bucket's
/// stream takes its writes one at a time, each synced to disk, so more in flight only queue
/// there, behind which every other process's writes then wait: a gateway stopping with
/// 19,500 connections sent 19,500 purges at once, and no gateway could register a
/// connection for 40 s (BENCHMARKS.md, "Many connections"). As many as a gateway's
/// handshakes in flight (`handshakes_concurrent_max`), so that registering never waits for
/// registering. Lease writes do not wait here.
const CONNECTION_WRITES_CONCURRENT_MAX: usize = 64;

/// The registry and presence of one process (gateway or not) of a NATS cluster.
pub struct NatsRegistry {
    shared: Arc<Shared>,
    tasks: Vec<AbortHandle>,
}

struct Shared {
    kv: kv::Store,
    /// The node this process runs (it announces the changes it is responsible for).
    node: NodeId,
    view: Mutex<View>,
    changes: broadcast::Sender<PresenceChange>,
    own: Mutex<Own>,
    /// Permits for writes of connection keys (`CONNECTION_WRITES_CONCURRENT_MAX`).
    connection_writes: tokio::sync::Semaphore,
}

/// What this process wrote itself, to repair the bucket after a lapse.
#[derive(Default)]
struct Own {
    /// Live connections registered here, written again when our lease had lapsed (the
    /// other nodes may have purged them as a dead node's).
    connections: HashMap<parlor_core::ConnectionId, ConnectionInfo>,
    /// Unregistrations whose purge failed; retried on every heartbeat.
    unpurged: Vec<ConnectionInfo>,
    /// Until when our last successful heartbeat keeps us live; only a live node claims.
    lease_until: Option<Instant>,
}

impl NatsRegistry {
    /// The gateways whose lease runs, as this process's view of the bucket has them (complete
    /// once `open` returns): what an operation that needs every gateway stopped checks
    /// (`parlor partitions --set`).
    pub fn live_gateways(&self) -> Vec<NodeId> {
        self.shared.view().live_nodes(now_ms())
    }

    /// Opens (creating it if needed, from any number of processes at once) the bucket
    /// `<bucket_prefix>_registry` and waits until the local view holds its current state.
    /// `replicas` is the bucket's (1 for a single server, 3 or 5 in a NATS cluster); a bucket
    /// that exists already keeps its own.
    pub async fn open(
        client: async_nats::Client,
        bucket_prefix: &str,
        node: NodeId,
        replicas: usize,
    ) -> Result<Arc<NatsRegistry>, BackendError> {
        let jetstream = jetstream::new(client);
        let bucket = format!("{bucket_prefix}_registry");
        let config = kv::Config {
            bucket: bucket.clone(),
            description: "parlor: live connections and gateway leases".into(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            limit_markers: Some(MARKER_TTL),
            num_replicas: replicas,
            ..Default::default()
        };
        let kv = match jetstream.create_key_value(config).await {
            Ok(kv) => kv,
            // Another process created it with a different configuration (an older
            // version, say): use it as it is.
            Err(create_error) => jetstream.get_key_value(&bucket).await.map_err(|_| {
                unavailable(&format!("cannot create bucket {bucket}"), create_error)
            })?,
        };
        let shared = Arc::new(Shared {
            kv,
            node,
            view: Mutex::new(View::default()),
            changes: broadcast::channel(CHANGES_BUFFERED_MAX).0,
            own: Mutex::new(Own::default()),
            connection_writes: tokio::sync::Semaphore::new(CONNECTION_WRITES_CONCURRENT_MAX),
        });
        let (loaded_sender, loaded) = watch::channel(Snapshot::default());
        let follow = tokio::spawn(Arc::clone(&shared).follow(loaded_sender));
        let expire = tokio::spawn(Arc::clone(&shared).expire_leases());
        let registry = Arc::new(NatsRegistry {
            shared,
            tasks: vec![follow.abort_handle(), expire.abort_handle()],
        });
        match wait_for_snapshot(loaded, SNAPSHOT_STALL_MAX).await {
            Ok(()) => Ok(registry),
            Err(entries) => Err(BackendError::unavailable(format!(
                "cannot read bucket {bucket}: {entries} entries read, then none for {SNAPSHOT_STALL_MAX:?}"
            ))),
        }
    }
}

/// How far the first read of the bucket got.
#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    entries: u64,
    done: bool,
}

/// Waits until the snapshot is done, as long as it never stalls for `stall_max`; else the
/// entries read so far.
async fn wait_for_snapshot(
    mut snapshot: watch::Receiver<Snapshot>,
    stall_max: Duration,
) -> Result<(), u64> {
    loop {
        let now = *snapshot.borrow_and_update();
        if now.done {
            return Ok(());
        }
        match tokio::time::timeout(stall_max, snapshot.changed()).await {
            Ok(Ok(())) => {}
            _ => return Err(now.entries),
        }
    }
}

impl Drop for NatsRegistry {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Shared {
    fn publish(&self, changes: impl IntoIterator<Item = (UserId, bool)>) {
        for (user, online) in changes {
            // No subscriber is not an error: nobody needs to hear about it.
            let _ = self.changes.send(PresenceChange {
                user,
                online,
                at: OffsetDateTime::now_utc(),
            });
        }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().expect("registry view lock")
    }

    fn own(&self) -> std::sync::MutexGuard<'_, Own> {
        self.own.lock().expect("registry own lock")
    }

    /// Keeps the view in step with the bucket, forever; a broken watch is reopened and the
    /// view rebuilt from its snapshot.
    async fn follow(self: Arc<Self>, loaded: watch::Sender<Snapshot>) {
        loop {
            if let Err(error) = self.follow_once(&loaded).await {
                tracing::warn!(%error, "registry watch failed; reopening it");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn follow_once(&self, loaded: &watch::Sender<Snapshot>) -> Result<(), BackendError> {
        let mut watch = self
            .kv
            .watch_with_history(">")
            .await
            .map_err(|e| unavailable("cannot watch the registry", e))?;
        let mut fresh = View::default();
        // The snapshot ends with the entry that was current when the watch began; an empty
        // bucket sends none, which only the stream's message count tells.
        let mut snapshot_done = self.bucket_is_empty().await?;
        let mut entries = 0;
        while !snapshot_done {
            match tokio::time::timeout(Duration::from_secs(1), watch.next()).await {
                Ok(Some(entry)) => {
                    let entry = entry.map_err(|e| unavailable("registry watch", e))?;
                    snapshot_done = entry.seen_current;
                    apply(&mut fresh, &entry, self.node);
                    entries += 1;
                    if entries % SNAPSHOT_PROGRESS_EVERY == 0 {
                        loaded.send_modify(|snapshot| snapshot.entries = entries);
                    }
                }
                Ok(None) => return Err(BackendError::unavailable("registry watch ended")),
                Err(_) => snapshot_done = self.bucket_is_empty().await?,
            }
        }
        let changes = self.view().replace_bucket_state(fresh, now_ms(), self.node);
        self.publish(changes);
        loaded.send_replace(Snapshot {
            entries,
            done: true,
        });
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| unavailable("registry watch", e))?;
            let change = apply(&mut self.view(), &entry, self.node);
            self.publish(change);
        }
        Err(BackendError::unavailable("registry watch ended"))
    }

    async fn bucket_is_empty(&self) -> Result<bool, BackendError> {
        let info = self
            .kv
            .stream
            .get_info()
            .await
            .map_err(|e| unavailable("cannot read the registry's stream info", e))?;
        Ok(info.state.messages == 0)
    }

    /// Once a second: claims nodes whose lease ran out, and purges leftovers of dead ones.
    async fn expire_leases(self: Arc<Self>) {
        let mut interval = tokio::time::interval(EXPIRY_CHECK_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            // Only a node with a live lease of its own claims: a persister, or a gateway cut
            // off from NATS, must not declare others dead.
            let live = self
                .own()
                .lease_until
                .is_some_and(|until| until > Instant::now());
            let (claims, leftovers) = {
                let mut view = self.view();
                (view.expire(now_ms(), self.node, live), view.leftovers(live))
            };
            for claim in claims {
                self.claim(claim).await;
            }
            self.purge_all(leftovers).await;
        }
    }

    async fn claim(&self, claim: Claim) {
        let key = Key::Node(claim.node).render();
        // Only one claimant's compare-and-purge succeeds; a failed one is retried next
        // second while the node still looks expired (the watch soon says it is dead, or
        // that it heartbeated after all).
        if let Err(error) = self
            .kv
            .purge_expect_revision_with_ttl(&key, claim.revision, MARKER_TTL)
            .await
        {
            tracing::debug!(%error, node = %claim.node, "registry: claim not won");
            return;
        }
        tracing::info!(node = %claim.node, users = claim.users.len(), "registry: node lease expired; its connections are gone");
        let (offline, connections) = {
            let view = self.view();
            (
                view.still_offline(&claim.users, now_ms()),
                view.connections_of(claim.node),
            )
        };
        self.publish(offline.into_iter().map(|user| (user, false)));
        self.purge_all(connections).await;
    }

    async fn purge_all(&self, connections: Vec<ConnectionInfo>) {
        let failed = stream::iter(connections)
            .map(|connection| self.purge(connection))
            .buffer_unordered(CONNECTION_WRITES_CONCURRENT_MAX)
            .filter_map(|result| async move { result.err() })
            .count()
            .await;
        if failed > 0 {
            tracing::warn!(
                failed,
                "registry: cannot purge a dead node's connections; retrying later"
            );
        }
    }

    async fn purge(&self, connection: ConnectionInfo) -> Result<(), BackendError> {
        let _permit = self.connection_writes.acquire().await;
        self.kv
            .purge_with_ttl(Key::Connection(connection).render(), MARKER_TTL)
            .await
            .map_err(|e| unavailable("cannot unregister a connection", e))
    }
}

/// Applies one watch entry to `view`; returns the change this node must announce, if any.
fn apply(view: &mut View, entry: &kv::Entry, me: NodeId) -> Option<(UserId, bool)> {
    let Some(key) = Key::parse(&entry.key) else {
        tracing::warn!(key = entry.key, "registry: ignoring a foreign key");
        return None;
    };
    let event = match (entry.operation, key) {
        (kv::Operation::Delete | kv::Operation::Purge, _) => Event::Gone,
        (kv::Operation::Put, Key::Connection(_)) => Event::Put,
        (kv::Operation::Put, Key::Node(_)) => {
            let until_ms = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|text| text.parse().ok());
            let Some(until_ms) = until_ms else {
                tracing::warn!(key = entry.key, "registry: ignoring an unreadable lease");
                return None;
            };
            Event::Lease { until_ms }
        }
    };
    let created_ms = (entry.created.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    view.apply(key, event, entry.revision, created_ms, now_ms(), me)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn unavailable(what: &str, error: impl std::error::Error + Send + Sync + 'static) -> BackendError {
    BackendError::unavailable(format!("{what}: {error}")).with_source(error)
}

#[async_trait]
impl Registry for NatsRegistry {
    async fn register(&self, connection: ConnectionInfo) -> Result<(), BackendError> {
        let shared = &self.shared;
        let permit = shared.connection_writes.acquire().await;
        shared
            .kv
            .put(Key::Connection(connection).render(), Default::default())
            .await
            .map_err(|e| unavailable("cannot register a connection", e))?;
        drop(permit);
        shared.view().register_here(connection);
        if connection.node == shared.node {
            shared.own().connections.insert(connection.id, connection);
        }
        Ok(())
    }

    async fn unregister(&self, connection: ConnectionInfo) -> Result<(), BackendError> {
        let shared = &self.shared;
        shared.own().connections.remove(&connection.id);
        shared.view().unregister_here(connection);
        let result = shared.purge(connection).await;
        if result.is_err() {
            // Left in the bucket, it would keep the user online while this node lives.
            shared.own().unpurged.push(connection);
        }
        result
    }

    async fn retire(&self, node: NodeId) -> Result<(), BackendError> {
        self.shared
            .kv
            .purge_with_ttl(Key::Node(node).render(), MARKER_TTL)
            .await
            .map_err(|e| unavailable("cannot end this node's lease", e))
    }

    async fn heartbeat(&self, node: NodeId, lease: Duration) -> Result<(), BackendError> {
        let shared = &self.shared;
        let started = Instant::now();
        // Declared dead while we lived (a pause, a partition, clocks apart): our connections
        // were purged as a dead node's, so they are written again below.
        let declared_dead = shared.view().is_dead(node);
        let until_ms = now_ms() + lease.as_millis() as u64;
        shared
            .kv
            .put(Key::Node(node).render(), until_ms.to_string().into())
            .await
            .map_err(|e| unavailable("cannot renew the lease", e))?;
        if node != shared.node {
            return Ok(());
        }
        let (lapsed, connections, unpurged) = {
            let mut own = shared.own();
            let lapsed = declared_dead || own.lease_until.is_none_or(|until| until <= started);
            own.lease_until = Some(started + lease);
            let connections: Vec<ConnectionInfo> = if lapsed {
                own.connections.values().copied().collect()
            } else {
                Vec::new()
            };
            (lapsed, connections, std::mem::take(&mut own.unpurged))
        };
        if lapsed && !connections.is_empty() {
            tracing::info!(
                connections = connections.len(),
                "registry: this node's lease had lapsed; writing its connections again"
            );
        }
        for connection in connections {
            self.register(connection).await?;
        }
        for (index, connection) in unpurged.iter().enumerate() {
            if let Err(error) = shared.purge(*connection).await {
                shared.own().unpurged.extend_from_slice(&unpurged[index..]);
                return Err(error);
            }
        }
        Ok(())
    }

    async fn locate(&self, users: &[UserId]) -> Result<Vec<(NodeId, Vec<UserId>)>, BackendError> {
        let located = self.shared.view().nodes_of(users, now_ms());
        let mut by_node: HashMap<NodeId, Vec<UserId>> = HashMap::new();
        for (user, nodes) in located {
            for node in nodes {
                by_node.entry(node).or_default().push(user);
            }
        }
        Ok(by_node.into_iter().collect())
    }
}

#[async_trait]
impl Presence for NatsRegistry {
    async fn online(&self, users: &[UserId]) -> Result<Vec<UserId>, BackendError> {
        let located = self.shared.view().nodes_of(users, now_ms());
        Ok(located.into_iter().map(|(user, _)| user).collect())
    }

    async fn changes(&self) -> Result<BoxStream<'static, PresenceChange>, BackendError> {
        let receiver = self.shared.changes.subscribe();
        Ok(Box::pin(stream::unfold(
            receiver,
            |mut receiver| async move {
                // A lagging subscriber's stream ends (see the trait): it resubscribes and
                // re-reads the state instead of silently missing changes.
                let change = receiver.recv().await.ok()?;
                Some((change, receiver))
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn open_waits_for_a_long_snapshot_while_it_advances() {
        let (sender, receiver) = watch::channel(Snapshot::default());
        tokio::spawn(async move {
            // 30 s in all, never more than 1 s without progress.
            for entries in 1..=30 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                sender.send_replace(Snapshot {
                    entries,
                    done: entries == 30,
                });
            }
            std::future::pending::<()>().await;
        });
        let started = tokio::time::Instant::now();
        assert_eq!(
            wait_for_snapshot(receiver, Duration::from_secs(10)).await,
            Ok(())
        );
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn open_gives_up_when_the_snapshot_stalls() {
        let (sender, receiver) = watch::channel(Snapshot::default());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            sender.send_replace(Snapshot {
                entries: 1024,
                done: false,
            });
            std::future::pending::<()>().await;
        });
        let started = tokio::time::Instant::now();
        assert_eq!(
            wait_for_snapshot(receiver, Duration::from_secs(10)).await,
            Err(1024)
        );
        assert_eq!(started.elapsed(), Duration::from_secs(13));
    }
}
