//! The AWS deployment's system tests, on local emulators (`scripts/services up`): DynamoDB
//! Local for the tables, ministack for SQS and Lambda. Real `parlor gateway --aws` processes
//! behind HAProxy with the shipped configuration (standing in for the ALB); the persister
//! either as `parlor persister --aws` processes (its ECS form) or as a Lambda function in
//! ministack (this binary as `bootstrap`, an SQS event source mapping with partial batch
//! failures). Each test has its own prefix: its own tables and queues.
//!
//! The emulators are slow next to AWS (ministack's SQS is Python, DynamoDB Local is Java on
//! SQLite), so bursts are hundreds of messages, not thousands.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use parlor_testkit::process::{SERVICES_HINT, free_address};

use crate::cluster_chaos::{assert_stored_exactly_once, burst_through_chaos, senders_to};
use crate::harness::{Http, Server, Ws};

/// How the persister runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persister {
    /// Two `parlor persister --aws` processes consuming the inbound queue together.
    Processes,
    /// A Lambda function in ministack.
    Lambda,
}

pub struct AwsDeployment {
    /// HAProxy's address: what clients use.
    pub address: String,
    pub gateways: Vec<Server>,
    pub persisters: Vec<Server>,
    haproxy: Child,
    environment: Vec<(String, String)>,
    lambda: bool,
}

fn emulator(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| panic!("{variable} is not set: {SERVICES_HINT}"))
}

/// The Python of the project's cache venv, where scripts/services installed ministack.
fn venv_python() -> String {
    let home = std::env::var("HOME").expect("HOME");
    format!("{home}/.cache/parlor/venv/bin/python")
}

fn local_lambda(args: &[&str], environment: &[(String, String)]) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/aws/local_lambda.py"
    );
    let status = Command::new(venv_python())
        .arg(script)
        .args(args)
        .envs(environment.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .status()
        .unwrap_or_else(|e| panic!("cannot run local_lambda.py ({e}): {SERVICES_HINT}"));
    assert!(status.success(), "local_lambda.py {args:?} failed");
}

impl AwsDeployment {
    pub async fn start(persister: Persister) -> AwsDeployment {
        let id = &uuid::Uuid::now_v7().simple().to_string()[20..];
        let environment: Vec<(String, String)> = vec![
            ("PARLOR_AWS_PREFIX".into(), format!("it-{id}-")),
            (
                "PARLOR_AWS_ENDPOINT".into(),
                emulator("PARLOR_TEST_SQS_URL"),
            ),
            (
                "PARLOR_AWS_DYNAMODB_ENDPOINT".into(),
                emulator("PARLOR_TEST_DYNAMODB_URL"),
            ),
            ("PARLOR_AWS_CREATE".into(), "true".into()),
            // A killed persister's entries come back after this.
            ("PARLOR_AWS_VISIBILITY_TIMEOUT_SECS".into(), "3".into()),
        ]
        .into_iter()
        .chain(crate::harness::s3_env(&format!("it-{id}")))
        .collect();
        let env: Vec<(&str, &str)> = environment
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let spawn = |role: &str, extra: &[&str]| {
            let mut args = vec![role, "--aws", "--listen", "127.0.0.1:0"];
            args.extend_from_slice(extra);
            Server::spawn(&args, &env)
        };
        // The first one creates the tables and queues; then the others start.
        let first = spawn("gateway", &["--trusted-proxies", "127.0.0.1"]);
        let gateways = vec![first, spawn("gateway", &["--trusted-proxies", "127.0.0.1"])];
        let persisters = match persister {
            Persister::Processes => (0..2).map(|_| spawn("persister", &[])).collect(),
            Persister::Lambda => {
                local_lambda(&["up", crate::harness::BIN], &environment);
                Vec::new()
            }
        };

        let (listen, stats) = (free_address(), free_address());
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/haproxy.cfg");
        let haproxy = Command::new("haproxy")
            .args(["-db", "-f", config])
            .env("PARLOR_LB_LISTEN", &listen)
            .env("PARLOR_LB_STATS", &stats)
            .env("PARLOR_GATEWAY1", &gateways[0].address)
            .env("PARLOR_GATEWAY2", &gateways[1].address)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start haproxy ({e}): {SERVICES_HINT}"));
        let deployment = AwsDeployment {
            address: listen,
            gateways,
            persisters,
            haproxy,
            environment,
            lambda: persister == Persister::Lambda,
        };
        crate::cluster::wait_for_both_gateways(&stats).await;
        deployment
    }

    pub fn http(&self) -> Http {
        Http {
            address: self.address.clone(),
        }
    }
}

impl Drop for AwsDeployment {
    fn drop(&mut self) {
        let _ = self.haproxy.kill();
        let _ = self.haproxy.wait();
        for server in self.gateways.iter_mut().chain(self.persisters.iter_mut()) {
            server.kill();
        }
        if self.lambda {
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../deploy/aws/local_lambda.py"
            );
            let _ = Command::new(venv_python())
                .args([script, "down"])
                .envs(
                    self.environment
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Alice and Bob on different gateways: each sees the other's messages live, in order,
/// through the notification queue and the other node's relay queue.
async fn users_on_different_gateways_chat(deployment: &AwsDeployment) {
    let alice_http = Http {
        address: deployment.gateways[0].address.clone(),
    };
    let (alice_id, alice) = alice_http.register("alice").await;
    let (bob_id, bob) = alice_http.register("bob").await;
    let conversation = alice_http.direct(&alice, &bob_id).await;
    let mut alice_ws = Ws::connect(&deployment.gateways[0].address, &alice).await;
    let mut bob_ws = Ws::connect(&deployment.gateways[1].address, &bob).await;
    for i in 0..5 {
        alice_ws
            .send_message(&conversation, &format!("a{i}"), &format!("hi {i}"))
            .await;
    }
    bob_ws
        .send_message(&conversation, "b0", "hello alice")
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut bob_saw = Vec::new();
    while bob_saw.len() < 6 {
        assert!(Instant::now() < deadline, "bob saw only {bob_saw:?}");
        let Some(frame) = bob_ws.try_next(Duration::from_secs(30)).await else {
            continue;
        };
        if frame["type"] == "message" {
            bob_saw.push(
                frame["message"]["client_msg_id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    assert!(bob_saw.contains(&"b0".to_string()));
    let alices: Vec<&String> = bob_saw.iter().filter(|id| id.starts_with('a')).collect();
    assert_eq!(alices, ["a0", "a1", "a2", "a3", "a4"], "in send order");
    let mut alice_saw_bob = false;
    while !alice_saw_bob {
        assert!(Instant::now() < deadline, "alice never saw bob's message");
        let Some(frame) = alice_ws.try_next(Duration::from_secs(30)).await else {
            continue;
        };
        alice_saw_bob =
            frame["type"] == "message" && frame["message"]["sender_id"] == json!(bob_id);
    }
    let history = alice_http.history(&alice, &conversation).await;
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    let _ = alice_id;

    // A file uploaded through one gateway (into S3, recorded in DynamoDB) is attached and
    // read through the other.
    let png = parlor_testkit::images::png(40, 30);
    let auth = format!("Bearer {alice}");
    let uploaded = alice_http
        .raw(
            "POST",
            "/api/v1/files?name=a.png",
            &[("Authorization", &auth)],
            &png,
        )
        .await;
    assert_eq!(uploaded.status, 201, "{uploaded:?}");
    let file = uploaded.json()["file"].clone();
    let sent = alice_http
        .post(
            &format!("/api/v1/conversations/{conversation}/messages"),
            &alice,
            json!({"client_msg_id": "a-file", "files": [file["id"]]}),
        )
        .await;
    assert_eq!(sent.status, 202, "{sent:?}");
    let bob_http = Http {
        address: deployment.gateways[1].address.clone(),
    };
    let history = bob_http.wait_for_history(&bob, &conversation, 7).await;
    assert_eq!(history[6]["files"], json!([file.clone()]));
    let path = format!("/api/v1/files/{}", file["id"].as_str().unwrap());
    let bob_auth = format!("Bearer {bob}");
    let read = bob_http
        .raw("GET", &path, &[("Authorization", &bob_auth)], &[])
        .await;
    assert_eq!((read.status, read.body == png), (200, true), "{read:?}");

    // DynamoDB has no full-text index: search says so, plainly.
    let answer = alice_http.get("/api/v1/search?q=hi", &alice).await;
    assert_eq!(
        (answer.status, answer.json()["error"]["code"].clone()),
        (501, json!("not_available"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_gateways_chat_with_persister_processes() {
    let deployment = AwsDeployment::start(Persister::Processes).await;
    users_on_different_gateways_chat(&deployment).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_gateways_chat_with_the_lambda_persister() {
    let deployment = AwsDeployment::start(Persister::Lambda).await;
    users_on_different_gateways_chat(&deployment).await;
}

/// Three conversations at once, two persisters consuming together: FIFO message groups keep
/// each conversation's order whoever stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_conversation_order_holds_with_two_persisters_consuming_together() {
    let deployment = AwsDeployment::start(Persister::Processes).await;
    let http = deployment.http();
    let (alice_id, alice) = http.register("alice").await;
    let conversations = senders_to(&http, &alice_id, &["bob", "carol", "dave"]).await;
    let bursts = conversations.iter().map(|(conversation, sender)| {
        burst_through_chaos(&deployment.address, sender, conversation, 2, 100, 0, || {})
    });
    let accepted = futures::future::join_all(bursts).await;
    for ((conversation, _), accepted) in conversations.iter().zip(&accepted) {
        assert_eq!(accepted.len(), 200);
        assert_stored_exactly_once(&http, &alice, conversation, accepted).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_burst_loses_nothing() {
    let mut deployment = AwsDeployment::start(Persister::Processes).await;
    let http = deployment.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let address = deployment.address.clone();
    let gateway = &mut deployment.gateways[0];
    let accepted = burst_through_chaos(&address, &alice, &conversation, 2, 300, 100, || {
        gateway.kill()
    })
    .await;
    assert_eq!(accepted.len(), 600);
    assert_stored_exactly_once(&http, &bob, &conversation, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persister_killed_mid_burst_loses_nothing_and_stores_nothing_twice() {
    let mut deployment = AwsDeployment::start(Persister::Processes).await;
    let http = deployment.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let address = deployment.address.clone();
    let persister = &mut deployment.persisters[0];
    let accepted = burst_through_chaos(&address, &alice, &conversation, 2, 300, 100, || {
        persister.kill()
    })
    .await;
    assert_eq!(accepted.len(), 600);
    assert_stored_exactly_once(&http, &bob, &conversation, &accepted).await;
}

/// `parlor dlq … --aws` with this deployment's settings.
fn dlq(deployment: &AwsDeployment, args: &[&str]) -> String {
    let output = Command::new(crate::harness::BIN)
        .arg("dlq")
        .args(args)
        .arg("--aws")
        .envs(
            deployment
                .environment
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .env("PARLOR_LOG", "warn")
        .output()
        .expect("run parlor dlq");
    assert!(
        output.status.success(),
        "dlq {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// The Lambda dead-letters an entry it cannot read, with why, and stores the rest of its
/// batch; an operator sees it with `parlor dlq list --aws`, and a letter redriven with
/// `parlor dlq redrive --aws` is stored by the Lambda after the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_dead_letters_what_it_cannot_read_and_a_redriven_letter_is_stored() {
    use parlor_core::ports::Queue;

    let deployment = AwsDeployment::start(Persister::Lambda).await;
    let http = deployment.http();
    let (alice_id, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let value = |name: &str| {
        deployment
            .environment
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let options = parlor_aws::AwsOptions {
        endpoint: value("PARLOR_AWS_ENDPOINT"),
        ..Default::default()
    };
    let inbound = parlor_aws::sqs::SqsQueue::open(
        options.sqs().await,
        parlor_aws::sqs::SqsQueueOptions {
            name: format!("{}inbound", value("PARLOR_AWS_PREFIX").unwrap()),
            visibility_timeout: Duration::from_secs(3),
            attempts_max: 3,
            create: false,
        },
    )
    .await
    .expect("open the inbound queue");
    // Unreadable, in the conversation's group: dead-lettered, and Alice's message after it
    // in the same group still stored.
    let conversation_id: parlor_core::ConversationId = conversation.parse().unwrap();
    inbound
        .append_keyed(vec![(conversation_id, b"\x02not an entry".to_vec())])
        .await
        .expect("append");
    let mut ws = Ws::connect(&deployment.address, &alice).await;
    ws.send_message(&conversation, "after", "after the bad one")
        .await;
    let history = http.wait_for_history(&bob, &conversation, 1).await;
    assert_eq!(history[0]["client_msg_id"], json!("after"));

    let listed = dlq(&deployment, &["list", "--queue", "inbound"]);
    let letters: Vec<serde_json::Value> = listed
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{listed}");
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("undecodable inbound entry"),
        "{listed}"
    );
    assert_eq!(dlq(&deployment, &["purge", "--all"]).trim(), "purged: 1");

    // A message that failed for good once (dead-lettered here by hand, as the queue does after
    // its receive count), redriven: the Lambda stores it after the others.
    let entry = parlor_core::queue::InboundEntry {
        conversation_id,
        sender_id: alice_id.parse().unwrap(),
        client_msg_id: "redriven".into(),
        accepted_at: time::OffsetDateTime::now_utc(),
        change: parlor_core::events::Change::Message {
            body: "back from the dead".into(),
            reply_to_seq: None,
            files: Vec::new(),
        },
    };
    inbound
        .dead_letter_message(&conversation, &entry.encode(), "scripted", 3)
        .await
        .expect("dead-letter");
    assert_eq!(
        dlq(&deployment, &["redrive", "--all"]).trim(),
        "redriven: 1"
    );
    let history = http.wait_for_history(&bob, &conversation, 2).await;
    assert_eq!(history[1]["client_msg_id"], json!("redriven"));
    assert_eq!(history[1]["seq"], json!(2));
}

/// The processes of this deployment's Lambda function: ministack runs each function's
/// `bootstrap` as a process of its own, with the function's environment.
fn lambda_processes(prefix: &str) -> Vec<u32> {
    let wanted = format!("PARLOR_AWS_PREFIX={prefix}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let is_bootstrap = cmdline
            .split(|&b| b == 0)
            .next()
            .is_some_and(|program| program.ends_with(b"bootstrap"));
        if is_bootstrap
            && environ
                .split(|&b| b == 0)
                .any(|var| var == wanted.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// `kill -9` of the Lambda function's process in the middle of a burst: the batch it held
/// comes back after the queue's visibility timeout, to a new process, and every accepted
/// message is stored once, in send order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lambda_killed_mid_burst_loses_nothing_and_stores_nothing_twice() {
    let deployment = AwsDeployment::start(Persister::Lambda).await;
    let http = deployment.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let prefix = deployment
        .environment
        .iter()
        .find(|(k, _)| k == "PARLOR_AWS_PREFIX")
        .map(|(_, v)| v.clone())
        .unwrap();
    let killed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = {
        let killed = std::sync::Arc::clone(&killed);
        burst_through_chaos(
            &deployment.address,
            &alice,
            &conversation,
            2,
            200,
            60,
            move || {
                // The first invocation starts the process: give it a moment if it has not.
                let mut pids = lambda_processes(&prefix);
                for _ in 0..50 {
                    if !pids.is_empty() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    pids = lambda_processes(&prefix);
                }
                for pid in pids {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    killed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            },
        )
        .await
    };
    assert!(
        killed.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "no Lambda process to kill: the function never ran"
    );
    assert_eq!(accepted.len(), 400);
    assert_stored_exactly_once(&http, &bob, &conversation, &accepted).await;
}

/// SIGTERM drains a gateway: its sockets close with a close frame (clients reconnect to the
/// other one), it exits cleanly, and its relay queue is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_gateway_closes_its_sockets_and_deletes_its_relay_queue() {
    let mut deployment = AwsDeployment::start(Persister::Processes).await;
    let http = deployment.http();
    let (_, alice) = http.register("alice").await;
    let mut ws = Ws::connect(&deployment.gateways[0].address, &alice).await;
    let prefix = deployment
        .environment
        .iter()
        .find(|(k, _)| k == "PARLOR_AWS_PREFIX")
        .map(|(_, v)| v.clone())
        .unwrap();
    let sqs = parlor_aws::AwsOptions {
        endpoint: Some(emulator("PARLOR_TEST_SQS_URL")),
        ..Default::default()
    }
    .sqs()
    .await;
    let node_queues = || async {
        sqs.list_queues()
            .queue_name_prefix(format!("{prefix}node-"))
            .send()
            .await
            .expect("list queues")
            .queue_urls()
            .len()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while node_queues().await < 2 {
        assert!(Instant::now() < deadline, "one relay queue per gateway");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let status = deployment.gateways[0].terminate();
    assert!(status.success(), "{status}");
    assert!(ws.closed_within(Duration::from_secs(10)).await);
    assert_eq!(
        node_queues().await,
        1,
        "the stopped gateway's queue is gone"
    );
}
