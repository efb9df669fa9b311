//! Cluster outage tests: NATS or PostgreSQL stopped for 10 s under load. Each test runs a
//! server of its own (stopping the shared ones would break the tests that run beside it),
//! from the programs that scripts/services installs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use parlor_testkit::client::send_frame;
use parlor_testkit::process::{NatsServer, PostgresServer};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::Cluster;
use crate::cluster_chaos::assert_stored_exactly_once;
use crate::harness::Ws;

const OUTAGE: Duration = Duration::from_secs(10);

/// What a sender saw: ids accepted, and each `error` frame with when it came.
#[derive(Default)]
struct Sent {
    accepted: HashSet<String>,
    accepted_at: Vec<Instant>,
    errors: Vec<(Instant, String)>,
}

/// Sends `count` messages one at a time, as a user types them: each waits for its answer,
/// and one that fails (an `error` frame, a broken connection) is sent again with the same
/// id after a pause, before the next one, as the web client does. Paced at about 100/s.
fn send_steadily(
    address: &str,
    token: &str,
    conversation: &str,
    count: usize,
    sent: Arc<Mutex<Sent>>,
) -> tokio::task::JoinHandle<()> {
    let (address, token, conversation) = (
        address.to_string(),
        token.to_string(),
        conversation.to_string(),
    );
    tokio::spawn(async move {
        let mut next = 0;
        while next < count {
            let Ok(ws) = Ws::try_connect(&address, &token, None).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let (mut sink, mut stream) = ws.stream.split();
            while next < count {
                let id = format!("s0-{next}");
                let frame = send_frame(&conversation, &id, &format!("message {next}"));
                if sink
                    .send(Message::Text(frame.to_string().into()))
                    .await
                    .is_err()
                {
                    break;
                }
                let answer = loop {
                    let frame = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
                    let Ok(Some(Ok(Message::Text(text)))) = frame else {
                        match frame {
                            Ok(Some(Ok(_))) => continue,
                            _ => break None,
                        }
                    };
                    let frame: Value = serde_json::from_str(&text).expect("JSON");
                    if frame["type"] == "accepted" && frame["client_msg_id"] == json!(id) {
                        break Some(Ok(()));
                    }
                    if frame["type"] == "error" {
                        break Some(Err(frame["code"].as_str().unwrap_or("").to_string()));
                    }
                };
                match answer {
                    Some(Ok(())) => {
                        {
                            let mut sent = sent.lock().unwrap();
                            sent.accepted.insert(id);
                            sent.accepted_at.push(Instant::now());
                        }
                        next += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Some(Err(code)) => {
                        sent.lock().unwrap().errors.push((Instant::now(), code));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    // The connection broke: connect again and send the same one.
                    None => break,
                }
            }
        }
    })
}

async fn wait_until_accepted(sent: &Arc<Mutex<Sent>>, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent.lock().unwrap().accepted.len() < count {
        assert!(Instant::now() < deadline, "too few messages accepted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_for_10_s_under_load_senders_are_refused_nothing_accepted_is_lost() {
    let mut nats = NatsServer::start().await;
    let postgres_url = std::env::var("PARLOR_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let cluster = Cluster::start_on(&nats.url, &postgres_url).await;
    let http = cluster.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let sent = Arc::new(Mutex::new(Sent::default()));
    let count = 1500;
    let sender = send_steadily(&cluster.address, &alice, &conversation, count, sent.clone());
    wait_until_accepted(&sent, 300).await;

    nats.stop();
    let stopped = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    let restarted = Instant::now();
    nats.run().await;

    tokio::time::timeout(Duration::from_secs(120), sender)
        .await
        .expect("every message accepted once NATS is back")
        .unwrap();
    let sent = Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap();
    assert_eq!(sent.accepted.len(), count);
    let refused: Vec<&String> = sent
        .errors
        .iter()
        .filter(|(at, _)| *at > stopped && *at < restarted + Duration::from_secs(5))
        .map(|(_, code)| code)
        .collect();
    assert!(
        !refused.is_empty(),
        "senders were told nothing while NATS was down"
    );
    assert!(
        refused.iter().all(|code| *code == "unavailable"),
        "{refused:?}"
    );
    // Nothing is accepted while the queue cannot take it (a second's grace for answers to
    // sends that were acknowledged just before the stop).
    let accepted_while_down = sent
        .accepted_at
        .iter()
        .filter(|at| **at > stopped + Duration::from_secs(1) && **at < restarted)
        .count();
    assert_eq!(accepted_while_down, 0, "accepted while NATS was down");
    assert_stored_exactly_once(&http, &bob, &conversation, &sent.accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_10_s_under_load_loses_nothing_and_resumes_in_order() {
    let mut postgres = PostgresServer::start().await;
    let nats_url =
        std::env::var("PARLOR_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4223".into());
    let cluster = Cluster::start_on(&nats_url, &postgres.admin_url).await;
    let http = cluster.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let sent = Arc::new(Mutex::new(Sent::default()));
    let count = 1500;
    let sender = send_steadily(&cluster.address, &alice, &conversation, count, sent.clone());
    wait_until_accepted(&sent, 300).await;

    postgres.stop();
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // What needs the database answers with a clear error meanwhile.
    let history = http
        .get(
            &format!("/api/v1/conversations/{conversation}/messages"),
            &bob,
        )
        .await;
    assert_eq!(
        (history.status, history.code()),
        (503, "unavailable".to_string())
    );
    tokio::time::sleep(OUTAGE - Duration::from_secs(2)).await;
    let restarted = Instant::now();
    postgres.run().await;

    tokio::time::timeout(Duration::from_secs(120), sender)
        .await
        .expect("every message accepted")
        .unwrap();
    let sent = Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap();
    assert_eq!(sent.accepted.len(), count);
    // The inbound queue takes sends while the database is down: they are durable there,
    // and stored once it is back.
    let accepted_while_down = sent
        .accepted_at
        .iter()
        .filter(|at| **at > stopped && **at < restarted)
        .count();
    assert!(
        accepted_while_down > 100,
        "only {accepted_while_down} accepted while PostgreSQL was down"
    );
    assert_stored_exactly_once(&http, &bob, &conversation, &sent.accepted).await;
}
