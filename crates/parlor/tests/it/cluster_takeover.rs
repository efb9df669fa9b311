//! Who consumes a partition of the inbound queue: one persister at a time, through a lease
//! in PostgreSQL (fencing its batches) and the queue's pin. A persister paused past its lease in the middle
//! of a burst stores nothing of what it held when it wakes, and a cleanly stopped one hands
//! the queue over at once.

use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::cluster_chaos::{assert_stored_exactly_once, burst_through_chaos};
use crate::harness::{Server, Ws};

/// A persister's counter or gauge `name` (0 if it has none yet).
pub async fn counter(persister: &Server, name: &str) -> u64 {
    let response = persister.http().raw("GET", "/metrics", &[], b"").await;
    String::from_utf8_lossy(&response.body)
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

/// Which persister stores: the one whose stored counter moved after one message.
pub async fn active(cluster: &Cluster, token: &str, conversation: &str) -> usize {
    let mut ws = Ws::connect(&cluster.address, token).await;
    // Named as the bursts name theirs: sender "s9", first message.
    ws.send_message(conversation, "s9-0", "first").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (index, persister) in cluster.persisters.iter().enumerate() {
            if counter(persister, "parlor_messages_stored_total").await > 0 {
                return index;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no persister stored the first message"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persister_paused_past_its_lease_stores_nothing_it_held_when_it_wakes() {
    let cluster = Cluster::start().await;
    let http = cluster.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let paused = active(&cluster, &alice, &conversation).await;
    let mut all = burst_through_chaos(
        &cluster.address,
        &alice,
        &conversation,
        2,
        1500,
        400,
        || cluster.persisters[paused].pause(),
    )
    .await;
    all.insert("s9-0".to_string());
    // The other one takes over (lease and pin lapse 5 s after the pause) and stores it all,
    // what the paused one held included: it comes back from the queue.
    assert_stored_exactly_once(&http, &bob, &conversation, &all).await;
    let (asleep, awake) = (&cluster.persisters[paused], &cluster.persisters[1 - paused]);
    assert!(counter(awake, "parlor_messages_stored_total").await > 0);

    asleep.resume();
    // Awake, it finds its lease gone: a batch it held is fenced (had it been stored, every
    // entry of it would be a duplicate of the other's), or it sees so before storing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fenced = counter(asleep, "parlor_batches_fenced_total").await;
    let duplicates = counter(asleep, "parlor_messages_duplicate_total").await;
    let stored = counter(asleep, "parlor_messages_stored_total").await;
    eprintln!("the paused persister stored {stored}; batches fenced when it woke: {fenced}");
    assert_eq!(duplicates, 0, "it stored what it held, behind the other");
    assert_stored_exactly_once(&http, &bob, &conversation, &all).await;

    // It rejoins the persisters and may be given its share back, by a hand-over: whatever it
    // stores from now on is new, never a duplicate of what the other stored.
    let mut ws = Ws::connect(&cluster.address, &alice).await;
    ws.send_message(&conversation, "s9-1", "after").await;
    all.insert("s9-1".to_string());
    assert_stored_exactly_once(&http, &bob, &conversation, &all).await;
    assert_eq!(counter(asleep, "parlor_messages_duplicate_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persister_stopped_cleanly_hands_the_queue_over_at_once() {
    let mut cluster = Cluster::start().await;
    let http = cluster.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let stopped = active(&cluster, &alice, &conversation).await;
    assert!(cluster.persisters[stopped].terminate().success());
    let stopped_at = Instant::now();
    let mut ws = Ws::connect(&cluster.address, &alice).await;
    ws.send_message(&conversation, "second", "second").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.history(&bob, &conversation).await.len() < 2 {
        assert!(Instant::now() < deadline, "the standby never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = stopped_at.elapsed();
    eprintln!("stored by the standby {took:?} after the active persister stopped");
    // At once: well before the 5 s after which a crashed one's lease and pin lapse.
    assert!(took < Duration::from_secs(3), "{took:?}");
}
