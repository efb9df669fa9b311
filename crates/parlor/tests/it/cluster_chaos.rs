//! Cluster fault tests: `kill -9` of a gateway or of the persister storing a burst, in the
//! middle of it, on three NATS nodes and three persisters.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use parlor_testkit::client::send_frame;
use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::{Cluster, shared_postgres};
use crate::cluster_takeover::active;
use crate::harness::{Http, Ws};
use crate::nats_cluster::NatsCluster;

/// Sends `count` messages on as many connections as `senders`, reconnecting through the
/// balancer whenever a connection breaks or a send is refused (`unavailable` while a backend
/// fails over) and resending what was not yet accepted, in order, until every one is
/// accepted. Calls `chaos` once `trigger` are accepted.
pub async fn burst_through_chaos(
    address: &str,
    token: &str,
    conversation: &str,
    senders: usize,
    count: usize,
    trigger: usize,
    chaos: impl FnOnce(),
) -> HashSet<String> {
    let accepted: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for sender in 0..senders {
        let (address, token, conversation) = (
            address.to_string(),
            token.to_string(),
            conversation.to_string(),
        );
        let accepted = Arc::clone(&accepted);
        tasks.push(tokio::spawn(async move {
            let mut next = 0;
            // Why the last connection ended, printed with the next: a failure's story.
            let mut ended = String::from("first connection");
            let mut connection = 0;
            while next < count {
                let Ok(ws) = Ws::try_connect(&address, &token, None).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let (mut sink, mut stream) = ws.stream.split();
                // Resend from the first message not yet accepted.
                next = (0..count)
                    .find(|i| !accepted.lock().unwrap().contains(&format!("s{sender}-{i}")))
                    .unwrap_or(count);
                let start = next;
                connection += 1;
                if connection > 1 {
                    eprintln!(
                        "s{sender}: connection {connection} sends from {start}; the last {ended}"
                    );
                }
                ended = String::from("ended without an error");
                let writer = {
                    let conversation = conversation.clone();
                    tokio::spawn(async move {
                        for i in start..count {
                            let frame = send_frame(
                                &conversation,
                                &format!("s{sender}-{i}"),
                                &format!("{sender}/{i}"),
                            );
                            if sink
                                .send(Message::Text(frame.to_string().into()))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            if i % 64 == 63 {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    })
                };
                while let Some(Ok(message)) = stream.next().await {
                    if let Message::Close(close) = &message {
                        ended = format!("was closed: {close:?}");
                    }
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["type"] == "accepted" {
                        let id = frame["client_msg_id"].as_str().unwrap().to_string();
                        let mut accepted = accepted.lock().unwrap();
                        accepted.insert(id);
                        if (0..count).all(|i| accepted.contains(&format!("s{sender}-{i}"))) {
                            next = count;
                            break;
                        }
                    } else if frame["type"] == "error" && frame["client_msg_id"].is_string() {
                        ended = format!("was refused: {frame}");
                        // Refused, not lost: sent again, with what follows it, after a pause.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                }
                writer.abort();
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted.lock().unwrap().len() < trigger {
        assert!(Instant::now() < deadline, "too few messages accepted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    chaos();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("every message accepted in the end")
            .unwrap();
    }
    accepted.lock().unwrap().clone()
}

/// A user of each name, each in a direct conversation with `receiver`: (conversation,
/// sender's token) per name. A sender of its own per conversation, since `client_msg_id` is
/// unique per sender and the bursts name theirs alike.
pub async fn senders_to(http: &Http, receiver: &str, names: &[&str]) -> Vec<(String, String)> {
    let mut conversations = Vec::new();
    for name in names {
        let (_, sender) = http.register(name).await;
        conversations.push((http.direct(&sender, receiver).await, sender));
    }
    conversations
}

/// Every accepted message stored exactly once, `seq` gap-free, each sender's order kept.
pub async fn assert_stored_exactly_once(
    http: &Http,
    token: &str,
    conversation: &str,
    accepted: &HashSet<String>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let history = loop {
        let history = http.history(token, conversation).await;
        if history.len() >= accepted.len() || Instant::now() > deadline {
            break history;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=history.len() as u64).collect::<Vec<_>>(),
        "gap-free"
    );
    let mut stored: HashMap<String, u64> = HashMap::new();
    for message in &history {
        let id = message["client_msg_id"].as_str().unwrap().to_string();
        let seq = message["seq"].as_u64().unwrap();
        assert!(
            stored.insert(id.clone(), seq).is_none(),
            "{id} stored twice"
        );
    }
    let stored_ids: HashSet<String> = stored.keys().cloned().collect();
    assert_eq!(
        &stored_ids, accepted,
        "stored = accepted, nothing lost, nothing extra"
    );
    let mut by_sender: HashMap<&str, Vec<(u64, usize)>> = HashMap::new();
    for (id, seq) in &stored {
        let (sender, index) = id.split_once('-').unwrap();
        by_sender
            .entry(sender)
            .or_default()
            .push((*seq, index.parse().unwrap()));
    }
    for (sender, mut order) in by_sender {
        order.sort();
        let swapped: Vec<_> = order
            .windows(2)
            .filter(|w| w[0].1 > w[1].1)
            .take(5)
            .collect();
        assert!(
            swapped.is_empty(),
            "{sender}'s messages out of send order: (seq, index) {swapped:?}"
        );
    }
}

/// The cluster the fault tests run on, as `scripts/cluster up` runs it: three NATS nodes
/// with streams of three replicas, 2 gateways and 3 persisters. Returned with the NATS
/// cluster, which must outlive it.
async fn three_by_three() -> (NatsCluster, Cluster) {
    let nats = NatsCluster::start().await;
    let cluster = Cluster::start_sized(&nats.urls(), &shared_postgres(), 3, 3).await;
    (nats, cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_burst_loses_nothing_its_clients_reconnect_through_haproxy() {
    let (_nats, mut cluster) = three_by_three().await;
    let http = cluster.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let gateway = &mut cluster.gateways[0];
    // Two connections: HAProxy balances by least connections, so one lands on each gateway.
    let accepted = burst_through_chaos(
        &cluster.address,
        &alice,
        &conversation,
        2,
        1500,
        400,
        || gateway.kill(),
    )
    .await;
    assert_eq!(accepted.len(), 3000);
    assert_stored_exactly_once(&http, &bob, &conversation, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_persister_storing_a_burst_killed_mid_burst_loses_nothing_and_stores_nothing_twice() {
    let (_nats, mut cluster) = three_by_three().await;
    let http = cluster.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    // The holder of the conversation's partition: killing another would change nothing.
    let storing = active(&cluster, &alice, &conversation).await;
    let persister = &mut cluster.persisters[storing];
    let mut accepted = burst_through_chaos(
        &cluster.address,
        &alice,
        &conversation,
        2,
        1500,
        400,
        || persister.kill(),
    )
    .await;
    assert_eq!(accepted.len(), 3000);
    accepted.insert("s9-0".to_string());
    assert_stored_exactly_once(&http, &bob, &conversation, &accepted).await;
}
