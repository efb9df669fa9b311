//! Connections and presence in memory, for a single process. The lease logic is real all the
//! same: a node that stops heartbeating loses its connections, as in the cluster backends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::{self, BoxStream};
use parlor_core::ports::{ConnectionInfo, Presence, PresenceChange, Registry};
use parlor_core::{BackendError, ConnectionId, NodeId, UserId};
use time::OffsetDateTime;
use tokio::sync::broadcast;

/// How many presence changes a slow subscriber may fall behind before its stream ends.
const CHANGES_BUFFERED_MAX: usize = 4096;

/// The connection registry and presence of one process.
pub struct MemoryRegistry {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<PresenceChange>,
}

#[derive(Default)]
struct Inner {
    connections: HashMap<UserId, HashMap<ConnectionId, NodeId>>,
    leases: HashMap<NodeId, Instant>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            changes: broadcast::channel(CHANGES_BUFFERED_MAX).0,
        }
    }

    fn publish(&self, user: UserId, online: bool) {
        // No subscriber is not an error: nobody needs to hear about it.
        let _ = self.changes.send(PresenceChange {
            user,
            online,
            at: OffsetDateTime::now_utc(),
        });
    }

    /// Drops every connection of nodes whose lease ran out; returns users now offline.
    fn expire_leases(inner: &mut Inner, now: Instant) -> Vec<UserId> {
        let expired: Vec<NodeId> = inner
            .leases
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(node, _)| *node)
            .collect();
        if expired.is_empty() {
            return Vec::new();
        }
        for node in &expired {
            inner.leases.remove(node);
        }
        let mut offline = Vec::new();
        inner.connections.retain(|user, connections| {
            connections.retain(|_, node| !expired.contains(node));
            if connections.is_empty() {
                offline.push(*user);
                false
            } else {
                true
            }
        });
        offline
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, connection: ConnectionInfo) -> Result<(), BackendError> {
        let came_online = {
            let mut inner = self.inner.lock().expect("registry lock");
            let connections = inner.connections.entry(connection.user).or_default();
            connections.insert(connection.id, connection.node);
            connections.len() == 1
        };
        if came_online {
            self.publish(connection.user, true);
        }
        Ok(())
    }

    async fn unregister(&self, connection: ConnectionInfo) -> Result<(), BackendError> {
        let went_offline = {
            let mut inner = self.inner.lock().expect("registry lock");
            match inner.connections.get_mut(&connection.user) {
                Some(connections) => {
                    let removed = connections.remove(&connection.id).is_some();
                    let empty = connections.is_empty();
                    if empty {
                        inner.connections.remove(&connection.user);
                    }
                    removed && empty
                }
                None => false,
            }
        };
        if went_offline {
            self.publish(connection.user, false);
        }
        Ok(())
    }

    async fn heartbeat(&self, node: NodeId, lease: Duration) -> Result<(), BackendError> {
        let now = Instant::now();
        let offline = {
            let mut inner = self.inner.lock().expect("registry lock");
            inner.leases.insert(node, now + lease);
            Self::expire_leases(&mut inner, now)
        };
        for user in offline {
            self.publish(user, false);
        }
        Ok(())
    }

    async fn locate(&self, users: &[UserId]) -> Result<Vec<(NodeId, Vec<UserId>)>, BackendError> {
        let inner = self.inner.lock().expect("registry lock");
        let mut by_node: HashMap<NodeId, Vec<UserId>> = HashMap::new();
        for user in users {
            if let Some(connections) = inner.connections.get(user) {
                let mut nodes: Vec<NodeId> = connections.values().copied().collect();
                nodes.sort_unstable();
                nodes.dedup();
                for node in nodes {
                    by_node.entry(node).or_default().push(*user);
                }
            }
        }
        Ok(by_node.into_iter().collect())
    }
}

#[async_trait]
impl Presence for MemoryRegistry {
    async fn online(&self, users: &[UserId]) -> Result<Vec<UserId>, BackendError> {
        let inner = self.inner.lock().expect("registry lock");
        Ok(users
            .iter()
            .filter(|user| inner.connections.contains_key(user))
            .copied()
            .collect())
    }

    async fn changes(&self) -> Result<BoxStream<'static, PresenceChange>, BackendError> {
        let receiver = self.changes.subscribe();
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
    use futures::StreamExt;

    fn connection(user: UserId, node: NodeId) -> ConnectionInfo {
        ConnectionInfo {
            id: ConnectionId::new(),
            user,
            node,
        }
    }

    #[tokio::test]
    async fn a_user_is_online_while_any_connection_lives() {
        let registry = MemoryRegistry::new();
        let mut changes = registry.changes().await.unwrap();
        let (alice, node) = (UserId::new(), NodeId::new());
        let (phone, laptop) = (connection(alice, node), connection(alice, node));
        registry.register(phone).await.unwrap();
        registry.register(laptop).await.unwrap();
        assert_eq!(registry.online(&[alice]).await.unwrap(), vec![alice]);
        registry.unregister(phone).await.unwrap();
        assert_eq!(registry.online(&[alice]).await.unwrap(), vec![alice]);
        registry.unregister(laptop).await.unwrap();
        assert!(registry.online(&[alice]).await.unwrap().is_empty());

        let first = changes.next().await.unwrap();
        let second = changes.next().await.unwrap();
        assert_eq!((first.user, first.online), (alice, true));
        assert_eq!((second.user, second.online), (alice, false));
    }

    #[tokio::test]
    async fn a_node_whose_lease_expires_takes_its_users_offline() {
        let registry = MemoryRegistry::new();
        let (dead_node, live_node) = (NodeId::new(), NodeId::new());
        let (alice, bob) = (UserId::new(), UserId::new());
        registry
            .heartbeat(dead_node, Duration::from_millis(10))
            .await
            .unwrap();
        registry
            .register(connection(alice, dead_node))
            .await
            .unwrap();
        registry.register(connection(bob, live_node)).await.unwrap();
        let mut changes = registry.changes().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        registry
            .heartbeat(live_node, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(registry.online(&[alice, bob]).await.unwrap(), vec![bob]);
        let change = changes.next().await.unwrap();
        assert_eq!((change.user, change.online), (alice, false));
    }

    #[tokio::test]
    async fn locate_groups_users_by_node() {
        let registry = MemoryRegistry::new();
        let (a, b) = (NodeId::new(), NodeId::new());
        let (alice, bob, carol) = (UserId::new(), UserId::new(), UserId::new());
        registry.register(connection(alice, a)).await.unwrap();
        registry.register(connection(alice, b)).await.unwrap();
        registry.register(connection(bob, b)).await.unwrap();
        let mut located = registry.locate(&[alice, bob, carol]).await.unwrap();
        located.sort();
        let mut expected = vec![(a, vec![alice]), (b, vec![alice, bob])];
        expected.sort();
        assert_eq!(located, expected);
    }
}
