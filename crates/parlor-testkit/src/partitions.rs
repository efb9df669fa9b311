//! The queue contract with partitions: a backend's queues as the partitions of one
//! [`Partitioned`] queue. [`Partitions`] turns a backend's [`QueueFactory`] into one whose
//! queues are `PARTS` partitions each, so that the whole [`queue_contract!`](crate::queue_contract)
//! runs on them; [`partitioned_queue_contract!`](crate::partitioned_queue_contract) adds the
//! checks of what partitions add: each conversation in one partition, in order, and the
//! whole queue's ids reaching the right partition.
//!
//! ```ignore
//! async fn factory() -> parlor_testkit::partitions::Partitions<MyFactory> { … }
//! parlor_testkit::queue_contract!(factory);
//! parlor_testkit::partitioned_queue_contract!(factory);
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parlor_core::ConversationId;
use parlor_core::partitions::{Partitioned, partition_of};
use parlor_core::ports::{DeadLetterSelection, Delivery, Queue};

use crate::queue::{QueueFactory, QueueOptions, SLACK, options, receive_n};

/// Partitions of every queue [`Partitions`] opens.
pub const PARTS: u32 = 3;

/// A factory whose queue `name` is the partitioned whole of the inner factory's queues
/// `name-p0`, `name-p1`, …
pub struct Partitions<F> {
    inner: F,
    /// The partitions of each open whole, to close them after it.
    open: Mutex<HashMap<String, Vec<Arc<dyn Queue>>>>,
}

impl<F: QueueFactory> Partitions<F> {
    pub fn new(inner: F) -> Self {
        Partitions {
            inner,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The whole and its partitions, by number.
    pub async fn open_parts(
        &self,
        name: &str,
        options: QueueOptions,
    ) -> (Arc<Partitioned>, Vec<Arc<dyn Queue>>) {
        let mut parts = Vec::new();
        for partition in 0..PARTS {
            let part_name = format!("{name}-p{partition}");
            parts.push(self.inner.open(&part_name, options).await);
        }
        self.open
            .lock()
            .expect("factory lock")
            .entry(name.to_string())
            .or_default()
            .extend(parts.iter().cloned());
        (Arc::new(Partitioned::new(parts.clone())), parts)
    }
}

impl<F: QueueFactory> QueueFactory for Partitions<F> {
    fn open<'a>(&'a self, name: &'a str, options: QueueOptions) -> BoxFuture<'a, Arc<dyn Queue>> {
        Box::pin(async move { self.open_parts(name, options).await.0 as Arc<dyn Queue> })
    }

    fn close<'a>(&'a self, name: &'a str, queue: Arc<dyn Queue>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            drop(queue);
            let parts = self
                .open
                .lock()
                .expect("factory lock")
                .remove(name)
                .unwrap_or_default();
            // Several opens of one name hold the same partitions: each is closed once, with
            // the last handle on it.
            let mut by_name: BTreeMap<String, Vec<Arc<dyn Queue>>> = BTreeMap::new();
            for (index, part) in parts.into_iter().enumerate() {
                let part_name = format!("{name}-p{}", index as u32 % PARTS);
                by_name.entry(part_name).or_default().push(part);
            }
            for (part_name, mut handles) in by_name {
                let last = handles.pop().expect("a handle");
                drop(handles);
                self.inner.close(&part_name, last).await;
            }
        })
    }

    fn cleanup(&self) -> BoxFuture<'_, ()> {
        self.inner.cleanup()
    }
}

/// One `#[tokio::test]` per check of what partitions add, for `$factory`: a path to an
/// `async fn() -> Partitions<_>`.
#[macro_export]
macro_rules! partitioned_queue_contract {
    ($factory:path) => {
        $crate::partitioned_queue_contract!(@checks $factory;
            each_conversation_is_in_one_partition_in_append_order,
            the_whole_settles_entries_of_every_partition,
            a_receive_on_the_whole_wakes_up_for_any_partition,
        );
    };
    (@checks $factory:path; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let factory = $factory().await;
                $crate::queue::guarded(&factory, $crate::partitions::$check(&factory)).await;
            }
        )*
    };
}

/// Conversations enough that every partition has some.
fn conversations() -> Vec<ConversationId> {
    let conversations: Vec<ConversationId> = (0..24).map(|_| ConversationId::new()).collect();
    let used: BTreeSet<u32> = conversations
        .iter()
        .map(|conversation| partition_of(*conversation, PARTS))
        .collect();
    assert_eq!(
        used.len(),
        PARTS as usize,
        "24 conversations cover 3 partitions"
    );
    conversations
}

/// `c{conversation index}-{n}`.
fn keyed(conversations: &[ConversationId], round: usize) -> Vec<(ConversationId, Vec<u8>)> {
    conversations
        .iter()
        .enumerate()
        .map(|(index, conversation)| (*conversation, format!("c{index}-{round}").into_bytes()))
        .collect()
}

fn payload(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.payload).into_owned()
}

/// The conversation index of `c{index}-{round}`.
fn conversation_index(payload: &str) -> usize {
    payload[1..payload.find('-').expect("a dash")]
        .parse()
        .expect("an index")
}

/// Keyed appends put each conversation's entries in its partition only, in the order they
/// were appended, across appends; a partition holds nothing of another's conversations.
pub async fn each_conversation_is_in_one_partition_in_append_order(
    factory: &Partitions<impl QueueFactory>,
) {
    let (whole, parts) = factory.open_parts("q", options()).await;
    let conversations = conversations();
    for round in 0..3 {
        whole
            .append_keyed(keyed(&conversations, round))
            .await
            .expect("append");
    }
    let mut seen = 0;
    for (partition, part) in parts.iter().enumerate() {
        let expected: Vec<usize> = (0..conversations.len())
            .filter(|index| partition_of(conversations[*index], PARTS) as usize == partition)
            .collect();
        let got = receive_n(part.as_ref(), expected.len() * 3).await;
        let mut rounds: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for delivery in &got {
            let payload = payload(delivery);
            rounds
                .entry(conversation_index(&payload))
                .or_default()
                .push(payload);
        }
        assert_eq!(
            rounds.keys().copied().collect::<Vec<_>>(),
            expected,
            "partition {partition}"
        );
        for (index, payloads) in rounds {
            let in_order: Vec<String> = (0..3).map(|round| format!("c{index}-{round}")).collect();
            assert_eq!(payloads, in_order, "partition {partition}");
        }
        part.ack(&got.iter().map(|d| d.id).collect::<Vec<_>>())
            .await
            .expect("ack");
        seen += got.len();
    }
    assert_eq!(seen, conversations.len() * 3);
    assert_eq!(whole.depth().await.expect("depth").pending, 0);
}

/// Through the whole: every partition's entries are received with distinct ids, and an ack,
/// a retry, a dead letter, a redrive and a purge by those ids reach the right partition; a
/// redriven entry goes back to its own partition.
pub async fn the_whole_settles_entries_of_every_partition(factory: &Partitions<impl QueueFactory>) {
    let (whole, parts) = factory.open_parts("q", options()).await;
    let conversations = conversations();
    whole
        .append_keyed(keyed(&conversations, 0))
        .await
        .expect("append");
    let got = receive_n(whole.as_ref(), conversations.len()).await;
    let ids: BTreeSet<_> = got.iter().map(|d| d.id).collect();
    assert_eq!(ids.len(), got.len(), "ids are distinct across partitions");

    // One entry of each partition is dead-lettered, one retried, the rest acknowledged.
    let mut dead_of = BTreeMap::new();
    let mut retried = None;
    let mut acked = Vec::new();
    for delivery in &got {
        let payload = payload(delivery);
        let partition = partition_of(conversations[conversation_index(&payload)], PARTS);
        if let std::collections::btree_map::Entry::Vacant(slot) = dead_of.entry(partition) {
            whole
                .dead_letter(delivery.id, &payload)
                .await
                .expect("dead_letter");
            slot.insert(payload);
        } else if retried.is_none() && partition == PARTS - 1 {
            whole
                .retry_later(delivery.id, Duration::from_millis(100))
                .await
                .expect("retry_later");
            retried = Some(payload);
        } else {
            acked.push(delivery.id);
        }
    }
    whole.ack(&acked).await.expect("ack");
    let retried = retried.expect("the last partition has two conversations");
    let again = receive_n(whole.as_ref(), 1).await;
    assert_eq!(payload(&again[0]), retried);
    assert_eq!(again[0].attempts, 2);
    whole.ack(&[again[0].id]).await.expect("ack");

    let dead = whole.dead_letters(10).await.expect("dead_letters");
    let mut dead_payloads: Vec<String> = dead
        .iter()
        .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
        .collect();
    dead_payloads.sort();
    let mut expected: Vec<String> = dead_of.values().cloned().collect();
    expected.sort();
    assert_eq!(dead_payloads, expected);
    let dead_ids: BTreeSet<u64> = dead.iter().map(|d| d.id).collect();
    assert_eq!(
        dead_ids.len(),
        dead.len(),
        "dead-letter ids are distinct across partitions"
    );
    assert_eq!(whole.depth().await.expect("depth").dead, PARTS as u64);

    // Redrive the last partition's letter: it comes back there, and only there.
    let last = dead
        .iter()
        .find(|d| String::from_utf8_lossy(&d.payload) == dead_of[&(PARTS - 1)])
        .expect("the last partition's letter");
    let moved = whole
        .redrive(DeadLetterSelection::Ids(vec![last.id]))
        .await
        .expect("redrive");
    assert_eq!(moved, 1);
    let back = receive_n(parts[(PARTS - 1) as usize].as_ref(), 1).await;
    assert_eq!(payload(&back[0]), dead_of[&(PARTS - 1)]);
    parts[(PARTS - 1) as usize]
        .ack(&[back[0].id])
        .await
        .expect("ack");

    let purged = whole.purge(DeadLetterSelection::All).await.expect("purge");
    assert_eq!(purged, (PARTS - 1) as usize);
    let depth = whole.depth().await.expect("depth");
    assert_eq!((depth.pending, depth.dead), (0, 0));
}

/// A receive on the whole that waits is woken by an entry in any partition, not only the
/// one it waits on.
pub async fn a_receive_on_the_whole_wakes_up_for_any_partition(
    factory: &Partitions<impl QueueFactory>,
) {
    let (whole, _parts) = factory.open_parts("q", options()).await;
    let conversations = conversations();
    for partition in 0..PARTS {
        let conversation = *conversations
            .iter()
            .find(|conversation| partition_of(**conversation, PARTS) == partition)
            .expect("a conversation of the partition");
        let appender = {
            let whole = whole.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                whole
                    .append_keyed(vec![(conversation, format!("p{partition}").into_bytes())])
                    .await
                    .expect("append");
            })
        };
        let started = Instant::now();
        let got = whole.receive(10, SLACK).await.expect("receive");
        assert_eq!(
            got.iter().map(payload).collect::<Vec<_>>(),
            [format!("p{partition}")]
        );
        assert!(
            started.elapsed() < SLACK / 2,
            "after {:?}",
            started.elapsed()
        );
        whole.ack(&[got[0].id]).await.expect("ack");
        appender.await.expect("appender");
    }
}
