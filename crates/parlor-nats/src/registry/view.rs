//! One process's picture of the registry bucket: pure state, no IO, so the rules for
//! liveness and for who announces a presence change can be read (and tested) in one place.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use parlor_core::ports::ConnectionInfo;
use parlor_core::{ConnectionId, NodeId, UserId};

/// A connection of a node that never heartbeated counts as live this long after it was
/// written: a gateway that crashes before its first heartbeat must not leave ghosts.
pub(super) const UNLEASED_GRACE_MS: u64 = 30_000;

/// How long a local register or unregister waits for its echo from the watch before the
/// view stops overlaying it (the echo is normally milliseconds away).
const LOCAL_PENDING_MAX: Duration = Duration::from_secs(60);

/// How long a dead node without connections is remembered, so that a late event about it
/// does not bring it back through the unleased grace.
const DEAD_NODE_KEPT: Duration = Duration::from_secs(2 * 3600);

/// How often leftover connections of a dead node are purged again.
const DEAD_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// One key of the registry bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Key {
    Connection(ConnectionInfo),
    Node(NodeId),
}

impl Key {
    pub(super) fn parse(key: &str) -> Option<Key> {
        let mut parts = key.split('.');
        let key = match (parts.next()?, parts.next()?) {
            ("node", node) => Key::Node(node.parse().ok()?),
            ("conn", user) => Key::Connection(ConnectionInfo {
                user: user.parse().ok()?,
                node: parts.next()?.parse().ok()?,
                id: parts.next()?.parse().ok()?,
            }),
            _ => return None,
        };
        parts.next().is_none().then_some(key)
    }

    pub(super) fn render(&self) -> String {
        match self {
            Key::Connection(c) => format!("conn.{}.{}.{}", c.user, c.node, c.id),
            Key::Node(node) => format!("node.{node}"),
        }
    }
}

/// What the watch reported for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// A node's lease, renewed until `until_ms` (unix ms).
    Lease { until_ms: u64 },
    /// A connection was written.
    Put,
    /// The key was deleted or purged.
    Gone,
}

#[derive(Clone, Copy, Debug)]
enum Lease {
    /// Live until `until_ms`. `revision` is the bucket revision of the node's key, `None`
    /// when the lease is implied by connections of a node that never heartbeated.
    Until {
        until_ms: u64,
        revision: Option<u64>,
    },
    /// The node's key was purged: it was declared dead (or shut down).
    Dead {
        since: Instant,
        swept_at: Option<Instant>,
    },
}

/// A node found expired that someone must claim: its key's revision for the
/// compare-and-purge, and the users it took offline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Claim {
    pub node: NodeId,
    pub revision: u64,
    pub users: Vec<UserId>,
}

#[derive(Default)]
pub(super) struct View {
    /// What the bucket holds, applied only from the watch and so in the stream's order: the
    /// same order in every process, which is what makes presence decisions agree.
    connections: HashMap<ConnectionId, ConnectionInfo>,
    by_user: HashMap<UserId, HashSet<ConnectionId>>,
    leases: HashMap<NodeId, Lease>,
    /// Registered by this process, echo not seen yet: lookups see them at once.
    added: HashMap<ConnectionId, (ConnectionInfo, Instant)>,
    /// Unregistered by this process, echo not seen yet: lookups stop seeing them at once.
    removed: HashMap<ConnectionId, Instant>,
    /// Expired nodes waiting to be claimed, with the users they took offline.
    expired: HashMap<NodeId, Claim>,
}

impl View {
    fn live(&self, node: NodeId, now_ms: u64) -> bool {
        match self.leases.get(&node) {
            Some(Lease::Until { until_ms, .. }) => *until_ms > now_ms,
            Some(Lease::Dead { .. }) => false,
            // Only for connections registered here whose echo has not arrived yet.
            None => true,
        }
    }

    /// The nodes whose lease runs (heartbeated, or implied by their connections), in order.
    pub(super) fn live_nodes(&self, now_ms: u64) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = (self.leases.keys().copied())
            .filter(|node| self.live(*node, now_ms))
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// Whether the bucket says `node` was declared dead (its lease key purged).
    pub(super) fn is_dead(&self, node: NodeId) -> bool {
        matches!(self.leases.get(&node), Some(Lease::Dead { .. }))
    }

    /// Online as the bucket says, ignoring this process's not-yet-echoed writes.
    fn online_in_bucket(&self, user: UserId, now_ms: u64) -> bool {
        self.by_user.get(&user).is_some_and(|ids| {
            ids.iter()
                .any(|id| self.live(self.connections[id].node, now_ms))
        })
    }

    /// Applies one watch event. Returns `Some(online)` when the user's presence changed
    /// and this node (`me`) is the one that must announce it: the node that owns the
    /// connection whose put or removal caused it. Every process applies events in the same
    /// order, so exactly one node announces even when two nodes race.
    pub(super) fn apply(
        &mut self,
        key: Key,
        event: Event,
        revision: u64,
        created_ms: u64,
        now_ms: u64,
        me: NodeId,
    ) -> Option<(UserId, bool)> {
        match (key, event) {
            (Key::Node(node), Event::Lease { until_ms }) => {
                let revision = Some(revision);
                self.leases
                    .insert(node, Lease::Until { until_ms, revision });
                self.expired.remove(&node);
                None
            }
            (Key::Node(node), _) => {
                let since = Instant::now();
                self.leases.insert(
                    node,
                    Lease::Dead {
                        since,
                        swept_at: None,
                    },
                );
                self.expired.remove(&node);
                None
            }
            (Key::Connection(connection), Event::Put) => {
                self.added.remove(&connection.id);
                let implied = created_ms + UNLEASED_GRACE_MS;
                match self.leases.get_mut(&connection.node) {
                    None => {
                        self.leases.insert(
                            connection.node,
                            Lease::Until {
                                until_ms: implied,
                                revision: None,
                            },
                        );
                    }
                    Some(Lease::Until {
                        until_ms,
                        revision: None,
                    }) => *until_ms = (*until_ms).max(implied),
                    Some(_) => {}
                }
                let before = self.online_in_bucket(connection.user, now_ms);
                self.connections.insert(connection.id, connection);
                self.by_user
                    .entry(connection.user)
                    .or_default()
                    .insert(connection.id);
                let after = self.online_in_bucket(connection.user, now_ms);
                (!before && after && connection.node == me).then_some((connection.user, true))
            }
            (Key::Connection(connection), _) => {
                self.removed.remove(&connection.id);
                self.added.remove(&connection.id);
                let before = self.online_in_bucket(connection.user, now_ms);
                self.forget(connection);
                let after = self.online_in_bucket(connection.user, now_ms);
                (before && !after && connection.node == me).then_some((connection.user, false))
            }
        }
    }

    fn forget(&mut self, connection: ConnectionInfo) {
        self.connections.remove(&connection.id);
        if let Some(ids) = self.by_user.get_mut(&connection.user) {
            ids.remove(&connection.id);
            if ids.is_empty() {
                self.by_user.remove(&connection.user);
            }
        }
    }

    /// Takes the bucket state of `fresh` (a view built from a new watch's snapshot),
    /// keeping this process's pending writes. Returns the changes this node must announce:
    /// users whose presence differs and who have a connection of `me` among the difference.
    pub(super) fn replace_bucket_state(
        &mut self,
        fresh: View,
        now_ms: u64,
        me: NodeId,
    ) -> Vec<(UserId, bool)> {
        let mut users: HashSet<UserId> = self.by_user.keys().copied().collect();
        users.extend(fresh.by_user.keys().copied());
        let mut changes = Vec::new();
        for user in users {
            let before = self.online_in_bucket(user, now_ms);
            let after = fresh.online_in_bucket(user, now_ms);
            let ours = |view: &View| {
                view.by_user
                    .get(&user)
                    .is_some_and(|ids| ids.iter().any(|id| view.connections[id].node == me))
            };
            if before != after && (ours(self) || ours(&fresh)) {
                changes.push((user, after));
            }
        }
        self.added
            .retain(|id, _| !fresh.connections.contains_key(id));
        self.removed
            .retain(|id, _| fresh.connections.contains_key(id));
        self.connections = fresh.connections;
        self.by_user = fresh.by_user;
        self.leases = fresh.leases;
        self.expired.clear();
        changes
    }

    pub(super) fn register_here(&mut self, connection: ConnectionInfo) {
        if !self.connections.contains_key(&connection.id) {
            self.added
                .insert(connection.id, (connection, Instant::now()));
        }
    }

    pub(super) fn unregister_here(&mut self, connection: ConnectionInfo) {
        self.added.remove(&connection.id);
        self.removed.insert(connection.id, Instant::now());
    }

    /// The live nodes holding each of `users` (deduplicated), this process's pending writes
    /// included.
    pub(super) fn nodes_of(&self, users: &[UserId], now_ms: u64) -> Vec<(UserId, Vec<NodeId>)> {
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        for user in users {
            if !seen.insert(*user) {
                continue;
            }
            let in_bucket = self
                .by_user
                .get(user)
                .into_iter()
                .flatten()
                .filter(|id| !self.removed.contains_key(id))
                .map(|id| self.connections[id].node);
            let pending = self
                .added
                .values()
                .filter(|(c, _)| c.user == *user && !self.removed.contains_key(&c.id))
                .map(|(c, _)| c.node);
            let mut nodes: Vec<NodeId> = in_bucket
                .chain(pending)
                .filter(|node| self.live(*node, now_ms))
                .collect();
            nodes.sort_unstable();
            nodes.dedup();
            if !nodes.is_empty() {
                found.push((*user, nodes));
            }
        }
        found
    }

    /// Notes nodes whose lease ran out and returns the claims to try (when `may_claim`):
    /// the users each took offline are fixed when the expiry is first noticed, so a user
    /// who disconnects elsewhere afterwards is announced by that node alone.
    pub(super) fn expire(&mut self, now_ms: u64, me: NodeId, may_claim: bool) -> Vec<Claim> {
        let newly: Vec<(NodeId, u64)> = self
            .leases
            .iter()
            .filter_map(|(node, lease)| match lease {
                Lease::Until { until_ms, revision } if *until_ms <= now_ms => {
                    Some((*node, revision.unwrap_or(0)))
                }
                _ => None,
            })
            .filter(|(node, _)| !self.expired.contains_key(node))
            .collect();
        for (node, revision) in newly {
            let mut users: Vec<UserId> = self
                .connections
                .values()
                .filter(|c| c.node == node)
                .map(|c| c.user)
                .filter(|user| !self.online_in_bucket(*user, now_ms))
                .collect();
            users.sort_unstable();
            users.dedup();
            let claim = Claim {
                node,
                revision,
                users,
            };
            self.expired.insert(node, claim);
        }
        if !may_claim {
            return Vec::new();
        }
        self.expired
            .values()
            .filter(|claim| claim.node != me)
            .cloned()
            .collect()
    }

    /// After a won claim: the users still offline (one may have come back meanwhile).
    pub(super) fn still_offline(&self, users: &[UserId], now_ms: u64) -> Vec<UserId> {
        users
            .iter()
            .copied()
            .filter(|user| self.nodes_of(&[*user], now_ms).is_empty())
            .collect()
    }

    /// Connections of `node` as the bucket holds them.
    pub(super) fn connections_of(&self, node: NodeId) -> Vec<ConnectionInfo> {
        self.connections
            .values()
            .filter(|c| c.node == node)
            .copied()
            .collect()
    }

    /// Connections left on dead nodes (a register that raced the sweep), due for another
    /// purge; marks them swept now. Also forgets stale local overlays and long-dead nodes.
    pub(super) fn leftovers(&mut self, may_sweep: bool) -> Vec<ConnectionInfo> {
        let now = Instant::now();
        self.added
            .retain(|_, (_, at)| now.duration_since(*at) < LOCAL_PENDING_MAX);
        self.removed
            .retain(|_, at| now.duration_since(*at) < LOCAL_PENDING_MAX);
        let holding: HashSet<NodeId> = self.connections.values().map(|c| c.node).collect();
        self.leases.retain(|node, lease| match lease {
            Lease::Dead { since, .. } => {
                holding.contains(node) || now.duration_since(*since) < DEAD_NODE_KEPT
            }
            Lease::Until { .. } => true,
        });
        if !may_sweep {
            return Vec::new();
        }
        let mut due = Vec::new();
        for (node, lease) in &mut self.leases {
            if let Lease::Dead { since, swept_at } = lease
                && holding.contains(node)
                && now.duration_since(*since) >= DEAD_SWEEP_INTERVAL
                && swept_at.is_none_or(|at| now.duration_since(at) >= DEAD_SWEEP_INTERVAL)
            {
                *swept_at = Some(now);
                due.push(*node);
            }
        }
        due.into_iter()
            .flat_map(|node| self.connections_of(node))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(user: UserId, node: NodeId) -> ConnectionInfo {
        ConnectionInfo {
            id: ConnectionId::new(),
            user,
            node,
        }
    }

    #[test]
    fn keys_round_trip_and_reject_garbage() {
        let c = connection(UserId::new(), NodeId::new());
        assert_eq!(
            Key::parse(&Key::Connection(c).render()),
            Some(Key::Connection(c))
        );
        let node = NodeId::new();
        assert_eq!(Key::parse(&Key::Node(node).render()), Some(Key::Node(node)));
        assert_eq!(Key::parse("conn.x.y.z"), None);
        assert_eq!(Key::parse(&format!("node.{node}.extra")), None);
        assert_eq!(Key::parse("other"), None);
    }

    #[test]
    fn racing_last_disconnects_are_announced_once_by_the_later_one() {
        let (a, b, alice) = (NodeId::new(), NodeId::new(), UserId::new());
        let (on_a, on_b) = (connection(alice, a), connection(alice, b));
        let lease = Event::Lease {
            until_ms: u64::MAX / 2,
        };
        let mut views = [View::default(), View::default()];
        let events = [
            (Key::Node(a), lease),
            (Key::Node(b), lease),
            (Key::Connection(on_a), Event::Put),
            (Key::Connection(on_b), Event::Put),
            (Key::Connection(on_b), Event::Gone),
            (Key::Connection(on_a), Event::Gone),
        ];
        let mut announced = Vec::new();
        for (view, me) in views.iter_mut().zip([a, b]) {
            for (revision, (key, event)) in events.iter().enumerate() {
                if let Some(change) = view.apply(*key, *event, revision as u64, 0, 1_000, me) {
                    announced.push((me, change));
                }
            }
        }
        assert_eq!(announced, vec![(a, (alice, true)), (a, (alice, false))]);
    }

    #[test]
    fn an_expired_node_is_claimed_with_the_users_it_took_offline() {
        let (me, dead, alice, bob) = (NodeId::new(), NodeId::new(), UserId::new(), UserId::new());
        let mut view = View::default();
        view.apply(
            Key::Node(me),
            Event::Lease { until_ms: 10_000 },
            1,
            0,
            0,
            me,
        );
        view.apply(
            Key::Node(dead),
            Event::Lease { until_ms: 2_000 },
            2,
            0,
            0,
            me,
        );
        view.apply(
            Key::Connection(connection(alice, dead)),
            Event::Put,
            3,
            0,
            0,
            me,
        );
        view.apply(
            Key::Connection(connection(bob, dead)),
            Event::Put,
            4,
            0,
            0,
            me,
        );
        view.apply(
            Key::Connection(connection(bob, me)),
            Event::Put,
            5,
            0,
            0,
            me,
        );
        assert_eq!(view.expire(1_000, me, true), vec![]);
        let claims = view.expire(3_000, me, true);
        assert_eq!(
            claims,
            vec![Claim {
                node: dead,
                revision: 2,
                users: vec![alice]
            }]
        );
        assert_eq!(view.nodes_of(&[alice, bob], 3_000), vec![(bob, vec![me])]);
        view.apply(Key::Node(dead), Event::Gone, 6, 0, 3_000, me);
        assert_eq!(view.expire(3_000, me, true), vec![]);
    }
}
