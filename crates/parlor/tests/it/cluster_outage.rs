//! Cluster outage tests: NATS or PostgreSQL stopped for 10 s under load. Each test runs a
//! server of its own (stopping the shared ones would break the tests that run beside it),
//! from the programs that scripts/services installs.

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::{Cluster, free_address};
use crate::cluster_chaos::assert_stored_exactly_once;
use crate::harness::{Http, Ws};

const OUTAGE: Duration = Duration::from_secs(10);
const SERVICES_HINT: &str = "run `eval \"$(scripts/services up)\"` first (scripts/test does)";

fn program(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| panic!("{variable} is not set: {SERVICES_HINT}"))
}

/// A nats-server of this test's own, with `sync_interval: always` as in production, so that
/// killing it loses nothing it acknowledged.
struct PrivateNats {
    url: String,
    monitor: String,
    config: PathBuf,
    process: Option<Child>,
    _dir: tempfile::TempDir,
}

impl PrivateNats {
    async fn start() -> PrivateNats {
        let dir = tempfile::tempdir().expect("temp dir");
        let (listen, monitor) = (free_address(), free_address());
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: {listen}\nhttp: {monitor}\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
                dir.path().join("store").display()
            ),
        )
        .expect("write the NATS config");
        let mut nats = PrivateNats {
            url: format!("nats://{listen}"),
            monitor,
            config,
            process: None,
            _dir: dir,
        };
        nats.run().await;
        nats
    }

    async fn run(&mut self) {
        let process = Command::new(program("PARLOR_TEST_NATS_SERVER"))
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server ({e}): {SERVICES_HINT}"));
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(&self.monitor).await.is_ok() {
                let health = Http {
                    address: self.monitor.clone(),
                }
                .raw("GET", "/healthz?js-enabled-only=true", &[], b"")
                .await;
                if health.status == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: every acknowledged publish is on disk already.
    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PostgreSQL server of this test's own, with fsync and synchronous_commit on. Run as the
/// `postgres` user when the tests run as root (PostgreSQL refuses root).
struct PrivatePostgres {
    admin_url: String,
    port: String,
    data: PathBuf,
    process: Option<Child>,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    async fn start() -> PrivatePostgres {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let owner = postgres_owner();
        if let Some((uid, gid)) = owner {
            chown(dir.path(), uid, gid);
            chown(&data, uid, gid);
        }
        let mut initdb = Command::new(Path::new(&program("PARLOR_TEST_PG_BIN")).join("initdb"));
        initdb
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null());
        as_owner(&mut initdb, owner);
        let status = initdb
            .status()
            .unwrap_or_else(|e| panic!("cannot run initdb ({e}): {SERVICES_HINT}"));
        assert!(status.success(), "initdb failed");
        let port = free_address()
            .rsplit_once(':')
            .expect("host:port")
            .1
            .to_string();
        let mut postgres = PrivatePostgres {
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            data,
            process: None,
            _dir: dir,
        };
        postgres.run().await;
        postgres
    }

    async fn run(&mut self) {
        let mut command = Command::new(Path::new(&program("PARLOR_TEST_PG_BIN")).join("postgres"));
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port, "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(&self.data)
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_owner(&mut command, postgres_owner());
        self.process = Some(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start postgres ({e}): {SERVICES_HINT}")),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port])
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Immediate shutdown (SIGQUIT): no checkpoint, crash recovery at the next start.
    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &process.id().to_string()])
                .status();
            let _ = process.wait();
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `postgres` user's uid and gid when the tests run as root.
fn postgres_owner() -> Option<(u32, u32)> {
    let id = |flag: &str| {
        let output = Command::new("id").args([flag]).output().expect("id");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    if id("-u") != "0" {
        return None;
    }
    let of_postgres = |flag: &str| {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id postgres");
        assert!(output.status.success(), "no postgres user: {SERVICES_HINT}");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("a numeric id")
    };
    Some((of_postgres("-u"), of_postgres("-g")))
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    let status = Command::new("chown")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success(), "chown {}", path.display());
}

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
                let frame = json!({"type": "send", "conversation_id": conversation,
                    "client_msg_id": id, "body": format!("message {next}")});
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
    let mut nats = PrivateNats::start().await;
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
    let mut postgres = PrivatePostgres::start().await;
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
