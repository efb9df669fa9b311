//! What one process knows of the nodes' leases: pure state, no IO. Filled by a scan of the
//! nodes table once a second and by consistent reads of nodes it has not seen yet.
//!
//! Two questions are asked of it. *Live?* decides `locate` and `online`: a node whose
//! lease has passed is gone at once. *Does its element count?* decides presence changes:
//! an element counts until the node that removes it has decided about it, so a node whose
//! lease has passed, or that is reaped but not cleared yet, still counts (its reaper will
//! remove the element and announce, or not, then). Otherwise a user connecting elsewhere in
//! that window would be announced online twice, with no offline between.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parlor_core::NodeId;

use super::tables::NodeRecord;

/// How long a node found missing is remembered before it is read again: a stale element of
/// a node long gone costs one read per this period, not one per lookup.
const MISSING_KEPT: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Leased until `until_ms` (unix ms), unless reaped meanwhile.
    Until(u64),
    /// Reaped: its item is a tombstone; `cleared` once its connections are removed.
    Reaped { cleared: bool },
    /// No item at all: gone long ago (its tombstone expired), or never written.
    Missing,
}

#[derive(Default)]
pub(super) struct Leases {
    nodes: HashMap<NodeId, (State, Instant)>,
}

impl Leases {
    /// Whether the node is known (else it must be read first).
    pub(super) fn knows(&self, node: NodeId) -> bool {
        self.nodes.contains_key(&node)
    }

    /// Whether the node is live at `now_ms`; an unknown node is not.
    pub(super) fn live(&self, node: NodeId, now_ms: u64) -> bool {
        matches!(self.nodes.get(&node), Some((State::Until(until_ms), _)) if *until_ms > now_ms)
    }

    /// Whether an element of the node counts for presence changes (see the module doc).
    pub(super) fn counts(&self, node: NodeId) -> bool {
        matches!(
            self.nodes.get(&node),
            Some((State::Until(_) | State::Reaped { cleared: false }, _))
        )
    }

    /// Whether an element of the node is stale: its reaper is done, so whatever is left
    /// of it was missed and nobody will remove it.
    pub(super) fn stale(&self, node: NodeId) -> bool {
        matches!(
            self.nodes.get(&node),
            Some((State::Reaped { cleared: true }, _))
        )
    }

    /// Records one node's item as read (or its absence).
    pub(super) fn learn(&mut self, node: NodeId, record: Option<&NodeRecord>) {
        let state = match record {
            Some(record) if record.dead_at_ms.is_some() => State::Reaped {
                cleared: record.cleared,
            },
            Some(record) => State::Until(record.lease_until_ms.unwrap_or(0)),
            None => State::Missing,
        };
        self.nodes.insert(node, (state, Instant::now()));
    }

    /// Records this process's own lease write.
    pub(super) fn renewed(&mut self, node: NodeId, until_ms: u64) {
        self.nodes
            .insert(node, (State::Until(until_ms), Instant::now()));
    }

    /// Records this process's claim of a dead node, and later its clearing.
    pub(super) fn reaped(&mut self, node: NodeId, cleared: bool) {
        self.nodes
            .insert(node, (State::Reaped { cleared }, Instant::now()));
    }

    /// Takes a whole scan that began at `started`: a node missing from it is missing,
    /// unless it was learned about after the scan began (its item may be newer).
    pub(super) fn replace(&mut self, records: &[NodeRecord], started: Instant) {
        for (state, seen) in self.nodes.values_mut() {
            if *seen < started && *state != State::Missing {
                *state = State::Missing;
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
            .retain(|_, (state, seen)| *state != State::Missing || seen.elapsed() < MISSING_KEPT);
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
    fn a_lapsed_or_uncleared_node_is_not_live_but_still_counts() {
        let (leased, reaped, cleared, missing) =
            (NodeId::new(), NodeId::new(), NodeId::new(), NodeId::new());
        let mut leases = Leases::default();
        let mut done = record(cleared, None, Some(500));
        done.cleared = true;
        leases.replace(
            &[
                record(leased, Some(2_000), None),
                record(reaped, None, Some(1_000)),
                done,
            ],
            Instant::now(),
        );
        leases.learn(missing, None);
        assert!(leases.live(leased, 1_000) && leases.counts(leased));
        assert!(!leases.live(leased, 2_000) && leases.counts(leased));
        assert!(!leases.live(reaped, 0) && leases.counts(reaped) && !leases.stale(reaped));
        assert!(!leases.live(cleared, 0) && !leases.counts(cleared) && leases.stale(cleared));
        assert!(!leases.live(missing, 0) && !leases.counts(missing) && !leases.stale(missing));
        assert!(!leases.knows(NodeId::new()));
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
        assert!(!leases.live(old, 0) && leases.knows(old));
        assert!(leases.live(new, 0));
    }
}
