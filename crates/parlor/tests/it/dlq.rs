//! `parlor dlq list|redrive|purge` on dead letters of the inbound queue: a redriven message is
//! stored after the others, a purged one never. (How entries get there — retries, reasons —
//! is the persister's, tested in process in `crates/parlor-server/tests/roles`.)

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use parlor_core::BackendError;
use parlor_core::events::Change;
use parlor_core::ports::Queue;
use parlor_core::queue::InboundEntry;
use parlor_embedded::{WalQueue, WalQueueOptions};
use parlor_server::config::ConsumerConfig;
use parlor_server::consumer::{Attempt, Settle, settle};
use serde_json::Value;
use time::OffsetDateTime;

use crate::harness::{BIN, Server, Ws};

fn parlor(args: &[&str], data_dir: &std::path::Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("PARLOR_LOG", "warn")
        .output()
        .expect("run parlor")
}

fn dead_letters(data_dir: &std::path::Path) -> Vec<Value> {
    let output = parlor(&["dlq", "list"], data_dir);
    assert!(
        output.status.success(),
        "dlq list: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Dead-letters `messages` of `sender` in `conversation` straight in the data directory's
/// inbound queue (the server stopped), as the persister does after three failed deliveries:
/// each is delivered three times, then dead-lettered with the reason the consumer policy gives.
/// Why and when the persister dead-letters is tested in parlor-server's role tests.
async fn dead_letter_directly(data_dir: &Path, conversation: &str, sender: &str, bodies: &[&str]) {
    let queue = WalQueue::open(
        &data_dir.join("queues").join("inbound"),
        "inbound",
        WalQueueOptions::default(),
    )
    .expect("open the inbound queue");
    let entries = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            InboundEntry {
                conversation_id: conversation.parse().unwrap(),
                sender_id: sender.parse().unwrap(),
                client_msg_id: format!("poison-{i}"),
                accepted_at: OffsetDateTime::now_utc(),
                change: Change::Message {
                    body: body.to_string(),
                    reply_to_seq: None,
                    files: Vec::new(),
                },
            }
            .encode()
        })
        .collect();
    queue.append(entries).await.unwrap();
    let config = ConsumerConfig {
        attempts_max: 3,
        ..ConsumerConfig::default()
    };
    let error = BackendError::unavailable("injected fault: the store failed");
    let mut dead = 0;
    while dead < bodies.len() {
        for delivery in queue.receive(16, Duration::ZERO).await.unwrap() {
            if !InboundEntry::decode(&delivery.payload)
                .unwrap()
                .client_msg_id
                .starts_with("poison-")
            {
                // Stored before the server stopped, and not yet acknowledged durably.
                queue.ack(&[delivery.id]).await.unwrap();
                continue;
            }
            let attempt = Attempt {
                delivery: delivery.id,
                attempts: delivery.attempts,
                alone: true,
                backend_down: false,
                can_wait: true,
            };
            match settle(&error, &attempt, &config) {
                Settle::RetryAfter(_) => queue.retry_later(delivery.id, Duration::ZERO).await,
                Settle::DeadLetter(reason) => {
                    dead += 1;
                    queue.dead_letter(delivery.id, &reason).await
                }
                other => panic!("unexpected {other:?}"),
            }
            .unwrap();
        }
    }
    queue.commit_cursor().await.unwrap();
    queue.close();
}

#[tokio::test]
async fn dead_letters_are_listed_then_redriven_or_purged_with_the_cli() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(data.path(), &[], &[]);
    let http = server.http();
    let (alice_id, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let mut ws = Ws::connect(&server.address, &alice).await;
    ws.send_message(&conversation, "m1", "hello").await;
    assert_eq!(ws.next_of("accepted").await["client_msg_id"], "m1");
    http.wait_for_history(&bob, &conversation, 1).await;
    assert!(server.terminate().success(), "SIGTERM exits cleanly");

    dead_letter_directly(
        data.path(),
        &conversation,
        &alice_id,
        &["POISON one", "POISON two"],
    )
    .await;

    let mut server = Server::start(data.path(), &[], &[]);
    let http = server.http();
    let mut ws = Ws::connect(&server.address, &alice).await;
    ws.send_message(&conversation, "m4", "world").await;
    assert_eq!(ws.next_of("accepted").await["client_msg_id"], "m4");
    http.wait_for_history(&bob, &conversation, 2).await;
    let bodies: Vec<Value> = http
        .history(&bob, &conversation)
        .await
        .iter()
        .map(|m| m["body"].clone())
        .collect();
    assert_eq!(bodies, ["hello", "world"]);

    // The queues belong to the running server: the CLI says so and changes nothing.
    let refused = parlor(&["dlq", "list"], data.path());
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in use by another parlor process"));

    assert!(server.terminate().success(), "SIGTERM exits cleanly");
    let letters = dead_letters(data.path());
    assert_eq!(letters.len(), 2, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter["attempts"], 3);
        assert!(
            letter["reason"]
                .as_str()
                .unwrap()
                .contains("injected fault"),
            "{letter}"
        );
    }
    let id_of = |body: &str| {
        letters
            .iter()
            .find(|l| l["entry"]["change"]["body"] == body)
            .unwrap()["id"]
            .as_u64()
            .unwrap()
            .to_string()
    };
    let (one, two) = (id_of("POISON one"), id_of("POISON two"));

    let redrive = parlor(&["dlq", "redrive", "--id", &one], data.path());
    assert_eq!(
        String::from_utf8_lossy(&redrive.stdout).trim(),
        "redriven: 1"
    );
    let purge = parlor(&["dlq", "purge", "--id", &two], data.path());
    assert_eq!(String::from_utf8_lossy(&purge.stdout).trim(), "purged: 1");
    assert!(dead_letters(data.path()).is_empty());

    // The redriven message is stored after the others; the purged one never.
    let server = Server::start(data.path(), &[], &[]);
    let http = server.http();
    let history = http.wait_for_history(&bob, &conversation, 3).await;
    let stored: Vec<(u64, String)> = history
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["body"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        stored,
        [
            (1, "hello".to_string()),
            (2, "world".to_string()),
            (3, "POISON one".to_string())
        ]
    );
}
