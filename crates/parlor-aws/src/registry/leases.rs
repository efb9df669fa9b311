//! What one process knows of the nodes' leases: pure state, no IO. Filled by a scan of the
//! nodes table once a second and by consistent reads of nodes it has not seen yet.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parlor_core::NodeId;

use super::tables::NodeRecord;

/// How long a node found missing is remembered as dead before it is read again: a stale
/// element of a node long gone costs one read per this period, not one per lookup.
const MISSING_KEPT: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Live until `until_ms` (unix ms), unless reaped meanwhile.
    Until(u64),
    /// Reaped: its item is a tombstone.
    Reaped,
    /// No item at all (gone, or not written yet).
    Dead,
}

#[derive(Default)]
pub(super) struct Leases {
    nodes: HashMap<NodeId, (State, Instant)>,
}

impl Leases {
    /// `Some(live)` if the node is known, `None` if it must be read.
    pub(super) fn live(&self, node: NodeId, now_ms: u64) -> Option<bool> {
        self.nodes.get(&node).map(|(state, _)| match state {
            State::Until(until_ms) => *until_ms > now_ms,
            State::Reaped | State::Dead => false,
        })
    }

    /// Whether the node is known to be reaped (its connections are cleared or being
    /// cleared, so an element of it left in a set is stale).
    pub(super) fn reaped(&self, node: NodeId) -> bool {
        matches!(self.nodes.get(&node), Some((State::Reaped, _)))
    }

    /// Records one node's item as read (or its absence).
    pub(super) fn learn(&mut self, node: NodeId, record: Option<&NodeRecord>) {
        let state = match record {
            Some(record) if record.dead_at_ms.is_some() => State::Reaped,
            Some(record) => State::Until(record.lease_until_ms.unwrap_or(0)),
            None => State::Dead,
        };
        self.nodes.insert(node, (state, Instant::now()));
    }

    /// Records this process's own lease write.
    pub(super) fn renewed(&mut self, node: NodeId, until_ms: u64) {
        self.nodes
            .insert(node, (State::Until(until_ms), Instant::now()));
    }

    /// Takes a whole scan that began at `started`: a node missing from it is dead, unless
    /// it was learned about after the scan began (its item may be newer than the scan).
    pub(super) fn replace(&mut self, records: &[NodeRecord], started: Instant) {
        for (state, seen) in self.nodes.values_mut() {
            if *seen < started && !matches!(state, State::Dead) {
                *state = State::Dead;
                *seen = started;
            }
        }
        for record in records {
            let newer = self
                .nodes
                .get(&record.node)
                .is_some_and(|(_, seen)| *seen > started);
            if !newer {
                self.learn(record.node, Some(record));
            }
        }
        self.nodes
            .retain(|_, (state, seen)| *state != State::Dead || seen.elapsed() < MISSING_KEPT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(node: NodeId, lease_until_ms: Option<u64>, dead_at_ms: Option<u64>) -> NodeRecord {
        NodeRecord {
            node,
            lease_until_ms,
            dead_at_ms,
            reaper: None,
            cleared: false,
            queue_url: None,
        }
    }

    #[test]
    fn a_lease_lives_until_it_passes_or_the_node_is_reaped() {
        let (a, b, c) = (NodeId::new(), NodeId::new(), NodeId::new());
        let mut leases = Leases::default();
        assert_eq!(leases.live(a, 0), None);
        leases.replace(
            &[record(a, Some(2_000), None), record(b, None, Some(1_000))],
            Instant::now(),
        );
        assert_eq!(leases.live(a, 1_000), Some(true));
        assert_eq!(leases.live(a, 2_000), Some(false));
        assert_eq!(leases.live(b, 0), Some(false));
        assert!(leases.reaped(b) && !leases.reaped(a));
        assert_eq!(leases.live(c, 0), None);
        leases.learn(c, None);
        assert_eq!(leases.live(c, 0), Some(false));
        assert!(!leases.reaped(c));
    }

    #[test]
    fn a_scan_forgets_nodes_it_misses_but_not_newer_ones() {
        let (old, new) = (NodeId::new(), NodeId::new());
        let mut leases = Leases::default();
        leases.renewed(old, u64::MAX);
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        leases.renewed(new, u64::MAX);
        leases.replace(&[], started);
        assert_eq!(leases.live(old, 0), Some(false));
        assert_eq!(leases.live(new, 0), Some(true));
    }
}
