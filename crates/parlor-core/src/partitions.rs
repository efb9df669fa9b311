//! A queue cut into partitions by conversation, so that several consumers drain it at once
//! while each conversation's entries stay in one partition, in order.
//!
//! [`partition_of`] is the one rule that places a conversation; it is part of the durable
//! format (a build that placed conversations differently would split one across two
//! partitions while entries of it are queued), so a test pins it. [`assign`] says which
//! partitions each of a group of consumers should hold. [`Partitioned`] is a [`Queue`] over
//! the partitions' queues: appends go to each entry's partition, and operators (dead letters,
//! depth) see the whole; consumers that share the work take one partition each
//! ([`Partitioned::parts`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::BackendError;
use crate::ids::ConversationId;
use crate::ports::{DeadLetter, DeadLetterSelection, Delivery, DeliveryId, Queue, QueueDepth};

/// The most partitions a queue may have: a delivery or dead-letter id of the whole carries
/// its partition in its top bits.
pub const PARTITIONS_MAX: u32 = 1024;
/// Bits of an id left to the partition's own queue.
const INNER_BITS: u32 = 48;
const INNER_MASK: u64 = (1 << INNER_BITS) - 1;
/// How often a receive on the whole looks at every partition again while it waits.
const RECEIVE_POLL: Duration = Duration::from_millis(25);

/// The partition of `conversation` among `count`: FNV-1a (64 bits) of its 16 bytes, modulo
/// `count`. Stable across builds: a test pins it.
pub fn partition_of(conversation: ConversationId, count: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in conversation.0.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(count.max(1))) as u32
}

/// The partitions `me` should hold among `members` (every live consumer of the group, `me`
/// included), out of `count`: with the members sorted, partition `p` goes to member
/// `p mod members`. Every member computes the same answer from the same list, each holds
/// `count / members` or one more, and nobody holds anything while `me` is not listed.
pub fn assign(count: u32, members: &[String], me: &str) -> Vec<u32> {
    let mut members: Vec<&str> = members.iter().map(String::as_str).collect();
    members.sort_unstable();
    members.dedup();
    let Some(index) = members.iter().position(|member| *member == me) else {
        return Vec::new();
    };
    (0..count)
        .filter(|partition| *partition as usize % members.len() == index)
        .collect()
}

/// A [`Queue`] over its partitions' queues (see the module's documentation).
pub struct Partitioned {
    parts: Vec<Arc<dyn Queue>>,
    /// Where the next receive on the whole starts looking, so that no partition starves.
    next: AtomicUsize,
}

impl Partitioned {
    /// `parts[p]` holds partition `p`. Panics if there are none or more than
    /// [`PARTITIONS_MAX`].
    pub fn new(parts: Vec<Arc<dyn Queue>>) -> Self {
        assert!(
            !parts.is_empty() && parts.len() <= PARTITIONS_MAX as usize,
            "1 to {PARTITIONS_MAX} partitions"
        );
        Partitioned {
            parts,
            next: AtomicUsize::new(0),
        }
    }

    /// Each partition's queue, by partition: a consumer that holds partition `p` receives
    /// from `parts()[p]`.
    pub fn parts(&self) -> &[Arc<dyn Queue>] {
        &self.parts
    }

    pub fn count(&self) -> u32 {
        self.parts.len() as u32
    }

    fn single(&self) -> Option<&dyn Queue> {
        match self.parts.as_slice() {
            [only] => Some(only.as_ref()),
            _ => None,
        }
    }

    /// The partition and the partition's own id inside an id of the whole.
    fn split(&self, id: u64) -> Result<(usize, u64), BackendError> {
        let partition = (id >> INNER_BITS) as usize;
        match self.parts.get(partition) {
            Some(_) => Ok((partition, id & INNER_MASK)),
            None => Err(BackendError::rejected(format!(
                "id {id} names partition {partition}, of {}",
                self.parts.len()
            ))),
        }
    }
}

/// An id of the whole: the partition in the top bits, the partition's own id below.
fn joined(partition: usize, inner: u64) -> Result<u64, BackendError> {
    if inner > INNER_MASK {
        return Err(BackendError::poisoned(format!(
            "id {inner} of partition {partition} does not fit in {INNER_BITS} bits"
        )));
    }
    Ok(((partition as u64) << INNER_BITS) | inner)
}

/// A partition's deliveries with ids of the whole.
fn tagged(partition: usize, deliveries: Vec<Delivery>) -> Result<Vec<Delivery>, BackendError> {
    deliveries
        .into_iter()
        .map(|mut delivery| {
            delivery.id = DeliveryId(joined(partition, delivery.id.0)?);
            Ok(delivery)
        })
        .collect()
}

#[async_trait]
impl Queue for Partitioned {
    /// Entries without a conversation all go to partition 0, in order.
    async fn append(&self, entries: Vec<Vec<u8>>) -> Result<(), BackendError> {
        self.parts[0].append(entries).await
    }

    /// Each entry to its conversation's partition, in order within each; the partitions'
    /// appends run at once. `Ok` only when every one is durable; after an error some
    /// partitions may hold their entries (a sender that tries again is deduplicated by the
    /// store), so the error is the first one met.
    async fn append_keyed(
        &self,
        entries: Vec<(ConversationId, Vec<u8>)>,
    ) -> Result<(), BackendError> {
        if let Some(only) = self.single() {
            return only.append_keyed(entries).await;
        }
        let mut by_partition: BTreeMap<u32, Vec<(ConversationId, Vec<u8>)>> = BTreeMap::new();
        for (conversation, entry) in entries {
            by_partition
                .entry(partition_of(conversation, self.count()))
                .or_default()
                .push((conversation, entry));
        }
        let appends = by_partition
            .into_iter()
            .map(|(partition, entries)| self.parts[partition as usize].append_keyed(entries));
        futures::future::join_all(appends)
            .await
            .into_iter()
            .collect()
    }

    /// From the partitions in turn, each asked without waiting; while all are empty, waits
    /// on one of them for up to 25 ms and looks at all again, until `wait` has passed. For
    /// operators and tests: consumers that share the work receive from one partition each.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BackendError> {
        if let Some(only) = self.single() {
            return only.receive(max, wait).await;
        }
        let give_up = Instant::now() + wait;
        loop {
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let mut got = Vec::new();
            for offset in 0..self.parts.len() {
                if got.len() >= max {
                    break;
                }
                let partition = (start + offset) % self.parts.len();
                let part = &self.parts[partition];
                let deliveries = part.receive(max - got.len(), Duration::ZERO).await?;
                got.extend(tagged(partition, deliveries)?);
            }
            let left = give_up.saturating_duration_since(Instant::now());
            if !got.is_empty() || left.is_zero() {
                return Ok(got);
            }
            // This crate has no timer: the partition's own receive does the waiting.
            let partition = start % self.parts.len();
            let waited = self.parts[partition]
                .receive(max, left.min(RECEIVE_POLL))
                .await?;
            if !waited.is_empty() {
                return tagged(partition, waited);
            }
        }
    }

    async fn receive_held(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        let mut got = Vec::new();
        for (partition, part) in self.parts.iter().enumerate() {
            if got.len() >= max {
                break;
            }
            got.extend(tagged(
                partition,
                part.receive_held(max - got.len()).await?,
            )?);
        }
        Ok(got)
    }

    async fn ack(&self, ids: &[DeliveryId]) -> Result<(), BackendError> {
        if let Some(only) = self.single() {
            return only.ack(ids).await;
        }
        let mut by_partition: BTreeMap<usize, Vec<DeliveryId>> = BTreeMap::new();
        for id in ids {
            let (partition, inner) = self.split(id.0)?;
            by_partition
                .entry(partition)
                .or_default()
                .push(DeliveryId(inner));
        }
        for (partition, ids) in by_partition {
            self.parts[partition].ack(&ids).await?;
        }
        Ok(())
    }

    async fn retry_later(&self, id: DeliveryId, delay: Duration) -> Result<(), BackendError> {
        let (partition, inner) = self.split(id.0)?;
        self.parts[partition]
            .retry_later(DeliveryId(inner), delay)
            .await
    }

    async fn dead_letter(&self, id: DeliveryId, reason: &str) -> Result<(), BackendError> {
        let (partition, inner) = self.split(id.0)?;
        self.parts[partition]
            .dead_letter(DeliveryId(inner), reason)
            .await
    }

    /// The oldest of every partition's, merged by when they failed.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        let mut all = Vec::new();
        for (partition, part) in self.parts.iter().enumerate() {
            for mut letter in part.dead_letters(limit).await? {
                letter.id = joined(partition, letter.id)?;
                all.push(letter);
            }
        }
        all.sort_by_key(|letter| (letter.failed_at, letter.id));
        all.truncate(limit);
        Ok(all)
    }

    /// Each back to its own partition.
    async fn redrive(&self, selection: DeadLetterSelection) -> Result<usize, BackendError> {
        let mut moved = 0;
        for (partition, selection) in self.by_partition(selection)? {
            moved += self.parts[partition].redrive(selection).await?;
        }
        Ok(moved)
    }

    async fn purge(&self, selection: DeadLetterSelection) -> Result<usize, BackendError> {
        let mut purged = 0;
        for (partition, selection) in self.by_partition(selection)? {
            purged += self.parts[partition].purge(selection).await?;
        }
        Ok(purged)
    }

    /// The sum of the partitions'.
    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        let mut total = QueueDepth::default();
        for part in &self.parts {
            let depth = part.depth().await?;
            total.pending += depth.pending;
            total.in_flight += depth.in_flight;
            total.dead += depth.dead;
        }
        Ok(total)
    }

    async fn hand_over(&self) -> Result<(), BackendError> {
        for part in &self.parts {
            part.hand_over().await?;
        }
        Ok(())
    }
}

impl Partitioned {
    /// A selection of the whole as one per partition it touches.
    fn by_partition(
        &self,
        selection: DeadLetterSelection,
    ) -> Result<Vec<(usize, DeadLetterSelection)>, BackendError> {
        match selection {
            DeadLetterSelection::All => Ok((0..self.parts.len())
                .map(|partition| (partition, DeadLetterSelection::All))
                .collect()),
            DeadLetterSelection::Ids(ids) => {
                let mut by_partition: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
                for id in ids {
                    let (partition, inner) = self.split(id)?;
                    by_partition.entry(partition).or_default().push(inner);
                }
                Ok(by_partition
                    .into_iter()
                    .map(|(partition, ids)| (partition, DeadLetterSelection::Ids(ids)))
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn the_partition_of_a_conversation_is_pinned() {
        let conversation =
            ConversationId(Uuid::parse_str("0193a1c2-7b3e-7c41-9a0e-5d2f8c6b4e10").expect("uuid"));
        // Changing these numbers splits queued conversations across partitions. Computed
        // apart from this code (FNV-1a 64 of the UUID's bytes, in Python).
        assert_eq!(partition_of(conversation, 1), 0);
        assert_eq!(partition_of(conversation, 8), 3);
        assert_eq!(partition_of(conversation, 32), 11);
        assert_eq!(partition_of(conversation, 1000), 179);
    }

    #[test]
    fn conversations_spread_over_the_partitions() {
        let mut counts = [0u32; 8];
        for _ in 0..8000 {
            counts[partition_of(ConversationId::new(), 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|count| (800..1200).contains(count)),
            "{counts:?}"
        );
    }

    #[test]
    fn every_partition_has_one_member_and_the_shares_differ_by_one_at_most() {
        let members: Vec<String> = ["c", "a", "b"].map(String::from).to_vec();
        let shares: Vec<Vec<u32>> = ["a", "b", "c"]
            .iter()
            .map(|me| assign(8, &members, me))
            .collect();
        assert_eq!(shares, [vec![0, 3, 6], vec![1, 4, 7], vec![2, 5]]);
        assert_eq!(assign(8, &members, "d"), Vec::<u32>::new());
        assert_eq!(assign(3, &["a".to_string()], "a"), [0, 1, 2]);
    }
}
