//! Reaping dead nodes: once a second, every process reads the leases; a live one claims a
//! passed lease with a conditional write (the lease as it saw it) that turns the item into
//! a tombstone naming it, and the winner clears the dead node's connections, announcing
//! the users it took offline. A tombstone left uncleared (its claimant died too) is cleared
//! by any live node after `ORPHAN_AFTER`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::AttributeValue;
use futures::StreamExt;
use futures::stream;
use parlor_core::{BackendError, NodeId, UserId};
use tokio::task::JoinSet;

use super::tables::{
    self, CLEARED, DEAD_AT, LEASE_UNTIL, NODE_ID, NODE_ITEM_KEPT, NodeRecord, REAPER, SK, TTL,
    USER_ID, n, now_ms, ttl_after, unavailable,
};
use super::{EXPIRY_CHECK_INTERVAL, ORPHAN_AFTER, REMOVALS_CONCURRENT_MAX, Shared, s};

impl Shared {
    /// Once a second: reads the leases, claims passed ones and clears tombstones.
    pub(super) async fn expire_leases(self: Arc<Self>) {
        let mut interval = tokio::time::interval(EXPIRY_CHECK_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Clearing a big node takes a while: it runs beside the lease reads, once per node
        // at a time, and stops with this task (a JoinSet aborts what it holds when dropped).
        let mut clearing: JoinSet<NodeId> = JoinSet::new();
        let mut in_flight: HashSet<NodeId> = HashSet::new();
        loop {
            interval.tick().await;
            while let Some(done) = clearing.try_join_next() {
                if let Ok(node) = done {
                    in_flight.remove(&node);
                }
            }
            let mut clear = |node: NodeId| {
                if in_flight.insert(node) {
                    let shared = Arc::clone(&self);
                    clearing.spawn(async move {
                        shared.clear(node).await;
                        node
                    });
                }
            };
            let records = match self.refresh_leases().await {
                Ok(records) => records,
                Err(error) => {
                    tracing::warn!(%error, "registry: cannot read the leases");
                    continue;
                }
            };
            // Only a node with a live lease of its own claims: a process cut off from
            // DynamoDB, or not heartbeating (a test's dying node), must not declare others
            // dead.
            let may_claim = self
                .own()
                .lease_until
                .is_some_and(|until| until > Instant::now());
            if !may_claim {
                continue;
            }
            let now = now_ms();
            for record in records {
                if record.node == self.node {
                    continue;
                }
                if record.dead_at_ms.is_none() && !record.live(now) {
                    if self.claim(&record).await {
                        clear(record.node);
                    }
                } else if let Some(dead_at) = record.dead_at_ms
                    && !record.cleared
                    && (record.reaper == Some(self.node)
                        || dead_at + ORPHAN_AFTER.as_millis() as u64 <= now)
                {
                    clear(record.node);
                }
            }
        }
    }

    /// Tries to turn a passed lease into a tombstone; `true` if this node won (and must
    /// clear the dead node).
    async fn claim(&self, record: &NodeRecord) -> bool {
        let now = now_ms();
        let mut update = self
            .client
            .update_item()
            .table_name(&self.tables.nodes)
            .key(NODE_ID, s(record.node.to_string()))
            .update_expression("SET #dead = :now, #reaper = :me, #ttl = :ttl REMOVE #lease")
            .expression_attribute_names("#dead", DEAD_AT)
            .expression_attribute_names("#reaper", REAPER)
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_names("#lease", LEASE_UNTIL)
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":me", s(self.node.to_string()))
            .expression_attribute_values(":ttl", ttl_after(now, NODE_ITEM_KEPT));
        // Guarded by the lease as we saw it: a node that heartbeated meanwhile is not dead.
        update = match record.lease_until_ms {
            Some(seen) => update
                .condition_expression("#lease = :seen AND attribute_not_exists(#dead)")
                .expression_attribute_values(":seen", n(seen)),
            None => update.condition_expression(
                "attribute_not_exists(#lease) AND attribute_not_exists(#dead)",
            ),
        };
        match update.send().await {
            Ok(_) => {
                tracing::info!(node = %record.node, "registry: node lease expired; clearing its connections");
                self.leases().reaped(record.node, false);
                true
            }
            Err(error) if error.code() == Some("ConditionalCheckFailedException") => {
                tracing::debug!(node = %record.node, "registry: claim not won");
                false
            }
            Err(error) => {
                tracing::warn!(error = %DisplayErrorContext(&error), node = %record.node, "registry: cannot claim a passed lease");
                false
            }
        }
    }

    /// Removes a reaped node's connections, announcing the users it took offline, then
    /// marks its tombstone cleared. A failure leaves it for the next try.
    async fn clear(&self, node: NodeId) {
        let connections = match self.connections_of(node).await {
            Ok(connections) => connections,
            Err(error) => {
                tracing::warn!(%error, %node, "registry: cannot list a dead node's connections");
                return;
            }
        };
        let failed = stream::iter(connections)
            .map(|(user, me)| async move {
                match self.remove_connection(user, &me).await {
                    Ok(offline) => {
                        if offline {
                            self.publish(user, false);
                        }
                        false
                    }
                    Err(error) => {
                        tracing::debug!(%error, "registry: cannot remove a dead node's connection");
                        true
                    }
                }
            })
            .buffer_unordered(REMOVALS_CONCURRENT_MAX)
            .filter(|failed| futures::future::ready(*failed))
            .count()
            .await;
        if failed > 0 {
            tracing::warn!(failed, %node, "registry: cannot remove a dead node's connections; retrying");
            return;
        }
        let cleared = self
            .client
            .update_item()
            .table_name(&self.tables.nodes)
            .key(NODE_ID, s(node.to_string()))
            .update_expression("SET #cleared = :true")
            .condition_expression("attribute_exists(#dead)")
            .expression_attribute_names("#cleared", CLEARED)
            .expression_attribute_names("#dead", DEAD_AT)
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .send()
            .await;
        if cleared.is_ok() {
            self.leases().reaped(node, true);
        }
        if let Err(error) = cleared
            && error.code() != Some("ConditionalCheckFailedException")
        {
            tracing::warn!(error = %DisplayErrorContext(&error), %node, "registry: cannot mark a dead node cleared");
        }
    }

    /// A node's connection items, from the index (eventually consistent: a connection
    /// written in the last moment before a node died may be missed, leaving a stale
    /// element that liveness filters out).
    async fn connections_of(&self, node: NodeId) -> Result<Vec<(UserId, String)>, BackendError> {
        let mut found = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.tables.connections)
                .index_name(tables::BY_NODE)
                .key_condition_expression("#node = :node")
                .expression_attribute_names("#node", NODE_ID)
                .expression_attribute_values(":node", s(node.to_string()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| unavailable("cannot list a node's connections", e))?;
            for item in page.items() {
                let user = tables::string(item, USER_ID).and_then(|u| u.parse().ok());
                if let (Some(user), Some(sk)) = (user, tables::string(item, SK)) {
                    found.push((user, sk.to_owned()));
                }
            }
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(found),
            }
        }
    }
}
