//! A message that keeps failing is retried with backoff, lands in the dead-letter queue with
//! its reason, and comes back with `parlor dlq redrive`.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{BIN, Http, Server, Ws};

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

async fn wait_for_metric(http: &Http, needle: &str) {
    for _ in 0..200 {
        let metrics = http.raw("GET", "/metrics", &[], b"").await;
        if String::from_utf8_lossy(&metrics.body).contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("metric {needle:?} never appeared");
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_then_redriven_or_purged_with_the_cli() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        data.path(),
        &["--attempts-max", "3", "--retry-base-ms", "20"],
        &[("PARLOR_FAULT_STORE_BODY", "POISON")],
    );
    let http = server.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;

    let mut ws = Ws::connect(&server.address, &alice).await;
    for (id, body) in [
        ("m1", "hello"),
        ("m2", "POISON one"),
        ("m3", "POISON two"),
        ("m4", "world"),
    ] {
        ws.send_message(&conversation, id, body).await;
        assert_eq!(ws.next_of("accepted").await["client_msg_id"], id);
    }
    // The healthy messages get through although they shared a batch with the poison.
    http.wait_for_history(&bob, &conversation, 2).await;
    let bodies: Vec<Value> = http
        .history(&bob, &conversation)
        .await
        .iter()
        .map(|m| m["body"].clone())
        .collect();
    assert_eq!(bodies, ["hello", "world"]);
    wait_for_metric(&http, "parlor_dead_lettered_total{queue=\"inbound\"} 2").await;

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
        letters.iter().find(|l| l["entry"]["body"] == body).unwrap()["id"]
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

    // Without the fault, the redriven message is stored after the others; the purged one never.
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
