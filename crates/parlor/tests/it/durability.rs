//! Nothing acknowledged is lost: `kill -9` in the middle of a burst, restart on the same
//! data directory, and every `accepted` message is stored exactly once with gap-free `seq`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Http, Server, Ws};

const SENDERS: usize = 3;
const MESSAGES_PER_SENDER_MAX: usize = 20_000;
const ACCEPTED_BEFORE_KILL: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_survives_kill_9_exactly_once_in_order() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(data.path(), &[], &[]);
    let http = server.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;

    let accepted: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let ws = Ws::connect(&server.address, &alice).await;
        let (mut sink, mut stream) = ws.stream.split();
        let conversation = conversation.clone();
        // Sends until the server dies.
        tasks.push(tokio::spawn(async move {
            for i in 0..MESSAGES_PER_SENDER_MAX {
                let frame = json!({"type": "send", "conversation_id": conversation,
                    "client_msg_id": format!("s{sender}-{i}"), "body": format!("message {i} from sender {sender}")});
                if sink.send(Message::Text(frame.to_string().into())).await.is_err() {
                    return i;
                }
            }
            MESSAGES_PER_SENDER_MAX
        }));
        let accepted = Arc::clone(&accepted);
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(text) = message {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["type"] == "accepted" {
                        let id = frame["client_msg_id"].as_str().unwrap().to_string();
                        accepted.lock().unwrap().insert(id);
                    }
                }
            }
            0
        }));
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while accepted.lock().unwrap().len() < ACCEPTED_BEFORE_KILL {
        assert!(
            tokio::time::Instant::now() < deadline,
            "too few messages accepted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill(); // SIGKILL: no drain, no flush
    let mut sent = 0;
    for task in tasks {
        sent += task.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        sent > accepted.len(),
        "the kill must land mid-burst: {sent} sent, {} accepted",
        accepted.len()
    );

    let server = Server::start(data.path(), &[], &[]);
    let http = server.http();
    let history = history_containing(&http, &bob, &conversation, &accepted).await;

    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=history.len() as u64).collect::<Vec<_>>(),
        "seq is gap-free from 1"
    );
    let mut stored: HashMap<String, u64> = HashMap::new();
    for message in &history {
        let id = message["client_msg_id"].as_str().unwrap().to_string();
        assert!(
            stored
                .insert(id.clone(), message["seq"].as_u64().unwrap())
                .is_none(),
            "{id} stored twice"
        );
    }
    for id in &accepted {
        assert!(stored.contains_key(id), "accepted message {id} was lost");
    }
    // Each connection's messages keep their send order.
    for sender in 0..SENDERS {
        let mut order: Vec<(u64, usize)> = stored
            .iter()
            .filter_map(|(id, seq)| {
                let (s, i) = id.strip_prefix('s')?.split_once('-')?;
                (s.parse::<usize>().ok()? == sender).then(|| (*seq, i.parse().unwrap()))
            })
            .collect();
        order.sort();
        assert!(
            order.windows(2).all(|w| w[0].1 < w[1].1),
            "sender {sender} out of order"
        );
    }

    // The search index was written in the same transactions: every stored message is found
    // (a sample of them, by their exact words: a space after the last), and nothing is found
    // twice.
    for message in history.iter().step_by((history.len() / 25).max(1)) {
        let body = format!("{} ", message["body"].as_str().unwrap()).replace(' ', "%20");
        let path = format!("/api/v1/search?q={body}&conversation_id={conversation}&limit=50");
        let answer = http.get(&path, &bob).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let seqs: Vec<u64> = answer.json()["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|hit| hit["seq"].as_u64().unwrap())
            .collect();
        assert!(
            seqs.contains(&message["seq"].as_u64().unwrap()),
            "{body}: {seqs:?}"
        );
        assert!(
            seqs.len() == seqs.iter().collect::<HashSet<_>>().len(),
            "found twice: {seqs:?}"
        );
    }

    // Resending every message (the client's retry after reconnecting) stores nothing twice.
    let mut ws = Ws::connect(&server.address, &alice).await;
    let resent: Vec<&String> = accepted.iter().take(50).collect();
    for id in &resent {
        ws.send_message(&conversation, id, "resent").await;
        assert_eq!(ws.next_of("accepted").await["client_msg_id"], json!(id));
    }
    ws.send_message(&conversation, "after-restart", "new").await;
    ws.next_of("accepted").await;
    let after = history_containing(
        &http,
        &bob,
        &conversation,
        &HashSet::from(["after-restart".to_string()]),
    )
    .await;
    assert_eq!(after.len(), history.len() + 1, "resends stored nothing new");
    assert_eq!(after.last().unwrap()["body"], "new");
    assert!(
        after.iter().all(|m| m["body"] != "resent"),
        "a resend never replaces the original"
    );
}

/// Polls history until it holds every id in `wanted` (the persister catches up after a
/// restart), then returns it.
async fn history_containing(
    http: &Http,
    token: &str,
    conversation: &str,
    wanted: &HashSet<String>,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let history = http.history(token, conversation).await;
        let ids: HashSet<&str> = history
            .iter()
            .filter_map(|m| m["client_msg_id"].as_str())
            .collect();
        if wanted.iter().all(|id| ids.contains(id.as_str())) {
            return history;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history still misses {} accepted messages",
            wanted
                .iter()
                .filter(|id| !ids.contains(id.as_str()))
                .count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
