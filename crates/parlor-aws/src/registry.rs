//! The connection registry and presence on two DynamoDB tables (their schema: `tables`).
//!
//! - Per user, one presence item holds the string set of the user's connections as
//!   `{node}/{connection}`; `locate` and `online` read these items (BatchGetItem, strongly
//!   consistent) and keep the elements whose node is live. Per connection, one item more,
//!   indexed by node (`by_node`), so that a dead node's connections can be found, and with a
//!   TTL, so that the table never fills with the dead.
//! - Presence is decided by the one write that crosses the boundary: `register` adds its
//!   element with `ADD` and reads the set as it was before (`UPDATED_OLD`); if no other
//!   element counted, this node announces the user online. `unregister` (or the reaper)
//!   removes its element with `DELETE`; the one write that saw the element and no other
//!   that counts announces offline. DynamoDB serializes writes to one item, so two racing
//!   first connections (or last disconnects) are announced once. An element counts until
//!   whoever removes it has decided (`leases` says which), so a lapsed node's users are
//!   announced by its reaper, not twice.
//! - Each node's lease is an item of the nodes table, renewed by `heartbeat`. Every process
//!   reads the whole table once a second (it holds one item per gateway) into `Leases`;
//!   lease ends are compared with the local clock, so nodes' clocks must agree to well under
//!   the lease (NTP does). A live node that finds a lease passed claims it with a
//!   conditional write (`lease_until` as it saw it), turning the item into a tombstone;
//!   only the winner then removes the dead node's connections and announces its users
//!   offline. Its relay queue is deleted by the relay (`crate::relay`), which reads the
//!   tombstones. A claimant that dies midway leaves the tombstone uncleared, and any live
//!   node finishes the work after `ORPHAN_AFTER` (the removals are idempotent and announce
//!   only what they remove).
//!
//! TTL is lazy (up to two days late on AWS; DynamoDB Local accepts the setting, and the
//! tests check only that it is set), so nothing relies on it: it only sweeps what no one
//! reads.

mod leases;
mod reaper;
pub(crate) mod tables;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, ReturnValue};
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use parlor_core::ports::{ConnectionInfo, Presence, PresenceChange, Registry};
use parlor_core::{BackendError, ConnectionId, NodeId, UserId};
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use leases::Leases;
use tables::{
    CLEARED, CONNECTION_ITEM_KEPT, CONNS, DEAD_AT, LEASE_UNTIL, NODE_ID, NODE_ITEM_KEPT,
    NodeRecord, PRESENCE_SK, REAPER, SK, TTL, Tables, USER_ID, n, now_ms, ttl_after, unavailable,
};

/// How many presence changes a slow subscriber may fall behind before its stream ends.
const CHANGES_BUFFERED_MAX: usize = 4096;
/// How often the nodes table is read and passed leases claimed: bounds the delay of the
/// offline change after a crash (lease + about this).
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A tombstone whose claimant has not cleared it within this is cleared by any live node.
const ORPHAN_AFTER: Duration = Duration::from_secs(30);
/// Removals of a dead node's connections in flight at once.
const REMOVALS_CONCURRENT_MAX: usize = 32;
/// Keys per BatchGetItem (DynamoDB's limit).
const BATCH_GET_MAX: usize = 100;
/// BatchGetItems of one lookup in flight at once (a 10,000-member group is 100 of them).
const BATCH_GETS_CONCURRENT_MAX: usize = 8;
/// Heartbeats that write this node's connections again after it was declared dead: two,
/// because a claimant still clearing may remove them once more after the first.
const REWRITES_AFTER_REVIVAL: u8 = 2;

/// The registry and presence of one process on DynamoDB. Its background task (reading the
/// leases, reaping dead nodes) stops when the handle is dropped.
pub struct DynamoRegistry {
    shared: Arc<Shared>,
    tasks: Vec<AbortHandle>,
}

struct Shared {
    client: Client,
    tables: Tables,
    /// The node this process runs: it announces the changes its writes cause.
    node: NodeId,
    leases: Mutex<Leases>,
    changes: broadcast::Sender<PresenceChange>,
    own: Mutex<Own>,
}

/// What this process wrote itself, to repair the tables after it was declared dead.
#[derive(Default)]
struct Own {
    connections: HashMap<ConnectionId, ConnectionInfo>,
    /// Until when our last successful heartbeat keeps us live; only a live node claims.
    lease_until: Option<Instant>,
    /// Heartbeats left that write our connections again.
    rewrites: u8,
}

impl DynamoRegistry {
    /// Opens the registry of tables `{prefix}connections` and `{prefix}nodes`, creating them
    /// first with `create_tables` (from any number of processes at once; production has
    /// the CloudFormation template create them).
    pub async fn open(
        client: Client,
        prefix: &str,
        node: NodeId,
        create_tables: bool,
    ) -> Result<DynamoRegistry, BackendError> {
        let tables = Tables::new(prefix);
        if create_tables {
            tables.create(&client).await?;
        }
        let shared = Arc::new(Shared {
            client,
            tables,
            node,
            leases: Mutex::new(Leases::default()),
            changes: broadcast::channel(CHANGES_BUFFERED_MAX).0,
            own: Mutex::new(Own::default()),
        });
        // The first read of the leases before answering: a fresh process knows who is live.
        shared.refresh_leases().await?;
        let expire = tokio::spawn(Arc::clone(&shared).expire_leases());
        Ok(DynamoRegistry {
            shared,
            tasks: vec![expire.abort_handle()],
        })
    }

    /// Deletes both tables (tests; an operator's teardown).
    pub async fn delete_tables(&self) -> Result<(), BackendError> {
        self.shared.tables.delete(&self.shared.client).await
    }
}

impl Drop for DynamoRegistry {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A connection's element in its user's set, and its item's sort key.
fn element(connection: &ConnectionInfo) -> String {
    format!("{}/{}", connection.node, connection.id)
}

fn node_of(element: &str) -> Option<NodeId> {
    element.split_once('/')?.0.parse().ok()
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn string_set(item: Option<&HashMap<String, AttributeValue>>) -> Vec<String> {
    match item.and_then(|item| item.get(CONNS)) {
        Some(AttributeValue::Ss(elements)) => elements.clone(),
        _ => Vec::new(),
    }
}

impl Shared {
    fn publish(&self, user: UserId, online: bool) {
        // No subscriber is not an error: nobody needs to hear about it.
        let _ = self.changes.send(PresenceChange {
            user,
            online,
            at: OffsetDateTime::now_utc(),
        });
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().expect("registry leases lock")
    }

    fn own(&self) -> std::sync::MutexGuard<'_, Own> {
        self.own.lock().expect("registry own lock")
    }

    async fn refresh_leases(&self) -> Result<Vec<NodeRecord>, BackendError> {
        let started = Instant::now();
        let records = tables::scan_nodes(&self.client, &self.tables.nodes).await?;
        self.leases().replace(&records, started);
        Ok(records)
    }

    /// Reads (consistently) the items of those of `nodes` this process does not know yet.
    async fn learn(&self, nodes: &[NodeId]) -> Result<(), BackendError> {
        let unknown: Vec<NodeId> = {
            let leases = self.leases();
            let unique: HashSet<NodeId> = nodes.iter().copied().collect();
            unique.into_iter().filter(|n| !leases.knows(*n)).collect()
        };
        let read = futures::future::join_all(
            unknown
                .iter()
                .map(|node| tables::read_node(&self.client, &self.tables.nodes, *node)),
        )
        .await;
        let mut leases = self.leases();
        for (node, record) in unknown.into_iter().zip(read) {
            leases.learn(node, record?.as_ref());
        }
        Ok(())
    }

    /// Whether any of `elements` counts for presence changes (see `leases`).
    async fn any_counts(&self, elements: &[&String]) -> Result<bool, BackendError> {
        let nodes: Vec<NodeId> = elements.iter().filter_map(|e| node_of(e)).collect();
        self.learn(&nodes).await?;
        let leases = self.leases();
        Ok(nodes.iter().any(|node| leases.counts(*node)))
    }

    /// Writes `connection`'s items; returns whether it brought its user online.
    async fn write_connection(&self, connection: ConnectionInfo) -> Result<bool, BackendError> {
        let me = element(&connection);
        let item = self
            .client
            .put_item()
            .table_name(&self.tables.connections)
            .item(USER_ID, s(connection.user.to_string()))
            .item(SK, s(me.clone()))
            .item(NODE_ID, s(connection.node.to_string()))
            .item(TTL, ttl_after(now_ms(), CONNECTION_ITEM_KEPT))
            .send();
        let presence = self
            .client
            .update_item()
            .table_name(&self.tables.connections)
            .key(USER_ID, s(connection.user.to_string()))
            .key(SK, s(PRESENCE_SK))
            .update_expression("ADD #conns :me")
            .expression_attribute_names("#conns", CONNS)
            .expression_attribute_values(":me", AttributeValue::Ss(vec![me.clone()]))
            .return_values(ReturnValue::UpdatedOld)
            .send();
        let (item, presence) = futures::join!(item, presence);
        item.map_err(|e| unavailable("cannot register a connection", e))?;
        let before = presence.map_err(|e| unavailable("cannot register a connection", e))?;
        let before = string_set(before.attributes());
        // Our own element may be there already when the SDK retried a write that had
        // succeeded: it does not count as another connection.
        let others: Vec<&String> = before.iter().filter(|e| **e != me).collect();
        let online = !self.any_counts(&others).await?;
        self.drop_stale(connection.user, &others).await;
        Ok(online)
    }

    /// Removes elements of reaped nodes that their reaper missed (written in a node's last
    /// moment, or whose connection item had expired), so a set never fills with the dead.
    /// Announces nothing: the caller's own change decided presence with them counted out.
    async fn drop_stale(&self, user: UserId, elements: &[&String]) {
        let stale: Vec<String> = {
            let leases = self.leases();
            elements
                .iter()
                .filter(|e| node_of(e).is_some_and(|node| leases.stale(node)))
                .map(|e| (*e).clone())
                .collect()
        };
        if stale.is_empty() {
            return;
        }
        let removed = self
            .client
            .update_item()
            .table_name(&self.tables.connections)
            .key(USER_ID, s(user.to_string()))
            .key(SK, s(PRESENCE_SK))
            .update_expression("DELETE #conns :stale")
            .expression_attribute_names("#conns", CONNS)
            .expression_attribute_values(":stale", AttributeValue::Ss(stale))
            .send()
            .await;
        if let Err(error) = removed {
            tracing::debug!(error = %DisplayErrorContext(&error), "registry: cannot drop stale connections");
        }
    }

    /// Removes the items of the connection whose element is `me`; returns whether it took
    /// its user offline.
    async fn remove_connection(&self, user: UserId, me: &str) -> Result<bool, BackendError> {
        let before = self
            .client
            .update_item()
            .table_name(&self.tables.connections)
            .key(USER_ID, s(user.to_string()))
            .key(SK, s(PRESENCE_SK))
            .update_expression("DELETE #conns :me")
            .expression_attribute_names("#conns", CONNS)
            .expression_attribute_values(":me", AttributeValue::Ss(vec![me.to_owned()]))
            .return_values(ReturnValue::UpdatedOld)
            .send()
            .await
            .map_err(|e| unavailable("cannot unregister a connection", e))?;
        let before = string_set(before.attributes());
        // The set decides presence; the connection's own item only serves the reaper, and
        // one left behind expires (or is removed if this node dies).
        if let Err(error) = self
            .client
            .delete_item()
            .table_name(&self.tables.connections)
            .key(USER_ID, s(user.to_string()))
            .key(SK, s(me))
            .send()
            .await
        {
            tracing::warn!(error = %DisplayErrorContext(&error), "registry: cannot delete a connection's item");
        }
        if !before.iter().any(|e| e == me) {
            // Removed by someone else (the reaper, or an earlier attempt): they announced.
            return Ok(false);
        }
        let others: Vec<&String> = before.iter().filter(|e| *e != me).collect();
        if others.is_empty() {
            // The set is gone with its last element; drop the item too, unless a new
            // connection came meanwhile.
            let deleted = self
                .client
                .delete_item()
                .table_name(&self.tables.connections)
                .key(USER_ID, s(user.to_string()))
                .key(SK, s(PRESENCE_SK))
                .condition_expression("attribute_not_exists(#conns)")
                .expression_attribute_names("#conns", CONNS)
                .send()
                .await;
            if let Err(error) = deleted
                && error.code() != Some("ConditionalCheckFailedException")
            {
                tracing::debug!(error = %DisplayErrorContext(&error), "registry: cannot drop an empty presence item");
            }
            return Ok(true);
        }
        let offline = !self.any_counts(&others).await?;
        self.drop_stale(user, &others).await;
        Ok(offline)
    }

    /// The presence sets of `users` (deduplicated), read consistently.
    async fn presence_of(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(UserId, Vec<String>)>, BackendError> {
        let mut unique: Vec<UserId> = Vec::with_capacity(users.len());
        let mut seen = HashSet::new();
        for user in users {
            if seen.insert(*user) {
                unique.push(*user);
            }
        }
        let batches: Vec<Vec<(UserId, Vec<String>)>> =
            stream::iter(unique.chunks(BATCH_GET_MAX).map(<[UserId]>::to_vec))
                .map(|chunk| async move { self.presence_batch(&chunk).await })
                .buffer_unordered(BATCH_GETS_CONCURRENT_MAX)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
        Ok(batches.into_iter().flatten().collect())
    }

    /// One BatchGetItem of up to 100 presence items, with its unprocessed keys retried.
    async fn presence_batch(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(UserId, Vec<String>)>, BackendError> {
        let keys: Vec<HashMap<String, AttributeValue>> = users
            .iter()
            .map(|user| {
                HashMap::from([
                    (USER_ID.to_owned(), s(user.to_string())),
                    (SK.to_owned(), s(PRESENCE_SK)),
                ])
            })
            .collect();
        let mut request = Some(
            KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(true)
                .build()
                .expect("keys and attributes"),
        );
        let mut found = Vec::new();
        let mut backoff = Duration::from_millis(10);
        while let Some(keys) = request.take() {
            let answer = self
                .client
                .batch_get_item()
                .request_items(&self.tables.connections, keys)
                .send()
                .await
                .map_err(|e| unavailable("cannot read presence", e))?;
            for item in answer
                .responses()
                .and_then(|r| r.get(&self.tables.connections))
                .into_iter()
                .flatten()
            {
                let user = tables::string(item, USER_ID).and_then(|u| u.parse().ok());
                if let Some(user) = user {
                    found.push((user, string_set(Some(item))));
                }
            }
            // Throttled keys come back unprocessed: ask again, a little later.
            request = answer
                .unprocessed_keys()
                .and_then(|u| u.get(&self.tables.connections))
                .filter(|k| !k.keys().is_empty())
                .cloned();
            if request.is_some() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
        Ok(found)
    }

    /// The live nodes of each of `users` that has one.
    async fn nodes_of(&self, users: &[UserId]) -> Result<Vec<(UserId, Vec<NodeId>)>, BackendError> {
        let sets = self.presence_of(users).await?;
        let nodes: Vec<NodeId> = sets
            .iter()
            .flat_map(|(_, set)| set.iter().filter_map(|e| node_of(e)))
            .collect();
        self.learn(&nodes).await?;
        let now = now_ms();
        let leases = self.leases();
        Ok(sets
            .into_iter()
            .filter_map(|(user, set)| {
                let mut nodes: Vec<NodeId> = set
                    .iter()
                    .filter_map(|e| node_of(e))
                    .filter(|node| leases.live(*node, now))
                    .collect();
                nodes.sort_unstable();
                nodes.dedup();
                (!nodes.is_empty()).then_some((user, nodes))
            })
            .collect())
    }
}

#[async_trait]
impl Registry for DynamoRegistry {
    async fn register(&self, connection: ConnectionInfo) -> Result<(), BackendError> {
        let shared = &self.shared;
        if connection.node == shared.node {
            shared.own().connections.insert(connection.id, connection);
        }
        if shared.write_connection(connection).await? {
            shared.publish(connection.user, true);
        }
        Ok(())
    }

    async fn unregister(&self, connection: ConnectionInfo) -> Result<(), BackendError> {
        let shared = &self.shared;
        shared.own().connections.remove(&connection.id);
        if shared
            .remove_connection(connection.user, &element(&connection))
            .await?
        {
            shared.publish(connection.user, false);
        }
        Ok(())
    }

    async fn heartbeat(&self, node: NodeId, lease: Duration) -> Result<(), BackendError> {
        let shared = &self.shared;
        let started = Instant::now();
        let until_ms = now_ms() + lease.as_millis() as u64;
        let before = shared
            .client
            .update_item()
            .table_name(&shared.tables.nodes)
            .key(NODE_ID, s(node.to_string()))
            .update_expression("SET #lease = :until, #ttl = :ttl REMOVE #dead, #reaper, #cleared")
            .expression_attribute_names("#lease", LEASE_UNTIL)
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_names("#dead", DEAD_AT)
            .expression_attribute_names("#reaper", REAPER)
            .expression_attribute_names("#cleared", CLEARED)
            .expression_attribute_values(":until", n(until_ms))
            .expression_attribute_values(":ttl", ttl_after(until_ms, NODE_ITEM_KEPT))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| unavailable("cannot renew the lease", e))?;
        shared.leases().renewed(node, until_ms);
        if node != shared.node {
            return Ok(());
        }
        let before = before.attributes();
        let connections: Vec<ConnectionInfo> = {
            let mut own = shared.own();
            // Reaped while we lived (a pause, a partition, clocks apart), or our item is
            // gone altogether: our connections were removed as a dead node's.
            let reaped = before.is_some_and(|item| item.contains_key(DEAD_AT))
                || (own.lease_until.is_some() && before.is_none_or(|item| item.is_empty()));
            if reaped {
                own.rewrites = REWRITES_AFTER_REVIVAL;
            }
            own.lease_until = Some(started + lease);
            if own.rewrites > 0 {
                own.rewrites -= 1;
                own.connections.values().copied().collect()
            } else {
                Vec::new()
            }
        };
        if !connections.is_empty() {
            tracing::info!(
                connections = connections.len(),
                "registry: this node was declared dead; writing its connections again"
            );
        }
        for connection in connections {
            if shared.write_connection(connection).await? {
                shared.publish(connection.user, true);
            }
        }
        Ok(())
    }

    async fn locate(&self, users: &[UserId]) -> Result<Vec<(NodeId, Vec<UserId>)>, BackendError> {
        let located = self.shared.nodes_of(users).await?;
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
impl Presence for DynamoRegistry {
    async fn online(&self, users: &[UserId]) -> Result<Vec<UserId>, BackendError> {
        let located = self.shared.nodes_of(users).await?;
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

    #[test]
    fn an_element_names_its_node() {
        let connection = ConnectionInfo {
            id: ConnectionId::new(),
            user: UserId::new(),
            node: NodeId::new(),
        };
        assert_eq!(node_of(&element(&connection)), Some(connection.node));
        assert_eq!(node_of("garbage"), None);
    }
}
