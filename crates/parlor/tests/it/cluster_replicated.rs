//! Cluster tests on a replicated NATS, as `scripts/cluster` runs it: three nats-server nodes,
//! streams and buckets with three replicas, 2 gateways and 3 persisters. The node that leads
//! the stream of the inbound partition the burst goes to is killed (`kill -9`) or cut off by a network partition in the middle
//! of a burst, and comes back later: every accepted message is stored once, in each sender's
//! order.

use std::time::Duration;

use parlor_core::ids::ConversationId;
use parlor_core::partitions::partition_of;
use serde_json::json;
use tokio::time::Instant;

use crate::cluster::{Cluster, shared_postgres};
use crate::cluster_chaos::{assert_stored_exactly_once, burst_through_chaos};
use crate::nats_cluster::{NatsCluster, Netns, Placement};

/// Connections sending at once, messages each, and how many are accepted before the fault.
const SENDERS: usize = 2;
const COUNT: usize = 1500;
const TRIGGER: usize = 400;
/// How long the node is gone: longer than an election, so that the others carry on without
/// it and it has to catch up when it is back.
const ABSENCE: Duration = Duration::from_secs(8);

/// The inbound queue's partitions (the cluster's default).
const PARTITIONS: u32 = 8;

/// Alice, Bob and their conversation, which the bursts go to.
struct Chat {
    alice: String,
    bob: String,
    conversation: String,
}

async fn chat(cluster: &Cluster) -> Chat {
    let http = cluster.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    Chat {
        alice,
        bob,
        conversation,
    }
}

/// The stream of the inbound partition that holds `chat`'s conversation, as `JsQueue`
/// names it: the one whose leader the fault must hit.
fn inbound_stream(cluster: &Cluster, chat: &Chat) -> String {
    let id = ConversationId(chat.conversation.parse().expect("a conversation id"));
    let queue = format!("{}-inbound", cluster.namespace);
    let name = match partition_of(id, PARTITIONS) {
        0 => queue,
        partition => format!("{queue}-p{partition}"),
    };
    format!("PARLOR_{}", name.to_ascii_uppercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_streams_nats_leader_killed_mid_burst_loses_nothing_and_keeps_send_order() {
    let mut nats = NatsCluster::start().await;
    let cluster = Cluster::start_sized(&nats.urls(), &shared_postgres(), 3, 3).await;
    let chat = chat(&cluster).await;
    let stream = inbound_stream(&cluster, &chat);
    let leader = nats.stream_leader(&stream, None).await;
    let (trigger, triggered) = tokio::sync::oneshot::channel::<()>();
    let chaos = async {
        triggered.await.expect("the burst reached its trigger");
        nats.kill(leader);
        let killed = Instant::now();
        nats.stream_leader(&stream, Some(leader)).await;
        let elected = killed.elapsed();
        tokio::time::sleep(ABSENCE.saturating_sub(killed.elapsed())).await;
        nats.restart(leader).await;
        (elected, killed.elapsed())
    };
    let (accepted, (elected, back)) = burst_and(&cluster, &chat, trigger, chaos).await;
    eprintln!(
        "NATS node {leader} killed: a new inbound leader after {elected:?}, \
         the node back and current after {back:?}"
    );
    assert_eq!(accepted.len(), SENDERS * COUNT);
    assert_stored_exactly_once(&cluster.http(), &chat.bob, &chat.conversation, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_streams_nats_leader_cut_off_mid_burst_loses_nothing_and_keeps_send_order() {
    // Declared first, dropped last: the node in it is killed before it goes.
    let netns = Netns::create();
    let outside = || Placement {
        host: netns.outside.clone(),
        netns: None,
    };
    let inside = Placement {
        host: netns.inside.clone(),
        netns: Some(netns.name.clone()),
    };
    let mut nats = NatsCluster::start_on([outside(), outside(), inside]).await;
    let cluster = Cluster::start_sized(&nats.urls(), &shared_postgres(), 3, 3).await;
    let chat = chat(&cluster).await;
    let stream = inbound_stream(&cluster, &chat);
    let cut_off = 2;
    lead(&nats, &stream, cut_off).await;
    let (trigger, triggered) = tokio::sync::oneshot::channel::<()>();
    let chaos = async {
        triggered.await.expect("the burst reached its trigger");
        netns.isolate();
        let isolated = Instant::now();
        nats.stream_leader(&stream, Some(cut_off)).await;
        let elected = isolated.elapsed();
        tokio::time::sleep(ABSENCE.saturating_sub(isolated.elapsed())).await;
        netns.heal();
        let healed = Instant::now();
        nats.wait_until_ready(cut_off).await;
        (elected, healed.elapsed())
    };
    let (accepted, (elected, caught_up)) = burst_and(&cluster, &chat, trigger, chaos).await;
    eprintln!(
        "NATS node {cut_off} cut off: a new inbound leader after {elected:?}; \
         healthy again {caught_up:?} after the partition healed"
    );
    assert_eq!(accepted.len(), SENDERS * COUNT);
    assert_stored_exactly_once(&cluster.http(), &chat.bob, &chat.conversation, &accepted).await;
    nats.kill(cut_off);
}

/// Alice's burst to Bob through the cluster, with `chaos` run beside it once `trigger` fires;
/// returns the ids accepted and what `chaos` returned.
async fn burst_and<T>(
    cluster: &Cluster,
    chat: &Chat,
    trigger: tokio::sync::oneshot::Sender<()>,
    chaos: impl Future<Output = T>,
) -> (std::collections::HashSet<String>, T) {
    let burst = burst_through_chaos(
        &cluster.address,
        &chat.alice,
        &chat.conversation,
        SENDERS,
        COUNT,
        TRIGGER,
        move || {
            let _ = trigger.send(());
        },
    );
    let started = Instant::now();
    let (accepted, chaos) = tokio::join!(burst, chaos);
    eprintln!("{} accepted in {:?}", accepted.len(), started.elapsed());
    (accepted, chaos)
}

/// Moves the leadership of `stream` to node `to` (a leader stepdown that prefers it).
async fn lead(nats: &NatsCluster, stream: &str, to: usize) {
    let client = async_nats::connect(nats.urls().split(',').next().unwrap())
        .await
        .expect("connect to NATS");
    let deadline = Instant::now() + Duration::from_secs(30);
    while nats.stream_leader(stream, None).await != to {
        assert!(Instant::now() < deadline, "node {to} never led {stream}");
        let request = json!({"placement": {"preferred": nats.nodes[to].name}});
        let _ = client
            .request(
                format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
                request.to_string().into(),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
