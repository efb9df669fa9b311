//! Cluster tests: real `parlor gateway` and `parlor persister` processes over NATS JetStream
//! and PostgreSQL, two of each, behind HAProxy with the shipped configuration, as
//! `scripts/cluster` runs them. Each test has its own database and NATS namespace.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use parlor_testkit::process::{SERVICES_HINT, free_address};

use crate::harness::{Http, Server, Ws};

pub struct Cluster {
    /// HAProxy's address: what clients use.
    pub address: String,
    pub gateways: Vec<Server>,
    pub persisters: Vec<Server>,
    /// Prefixes its streams, buckets and subjects on NATS.
    pub namespace: String,
    haproxy: Child,
    admin_url: String,
    database: String,
    /// What every process of this cluster is started with: flags, then environment.
    shared: Vec<String>,
    env: Vec<(String, String)>,
}

impl Cluster {
    /// A cluster on the NATS and PostgreSQL that scripts/services runs.
    pub async fn start() -> Cluster {
        let nats = std::env::var("PARLOR_TEST_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4223".into());
        Cluster::start_on(&nats, &shared_postgres()).await
    }

    /// A cluster on the given NATS server and PostgreSQL server (`admin_url` names a database
    /// where this one can create its own).
    pub async fn start_on(nats: &str, admin_url: &str) -> Cluster {
        Cluster::start_sized(nats, admin_url, 2, 1).await
    }

    /// A cluster of 2 gateways and `persisters` persisters on the given NATS servers
    /// (comma-separated) with streams and buckets of `replicas`, and PostgreSQL server.
    pub async fn start_sized(
        nats: &str,
        admin_url: &str,
        persisters: usize,
        replicas: usize,
    ) -> Cluster {
        let admin_url = admin_url.to_string();
        // The random end of a v7 uuid: tests that start in the same millisecond differ.
        let id = &uuid::Uuid::now_v7().simple().to_string()[20..];
        let database = format!("parlor_it_{id}");
        psql(&admin_url, &format!("CREATE DATABASE {database}"));
        let (server, _) = admin_url.rsplit_once('/').expect("a database URL");
        let postgres = format!("{server}/{database}");
        let namespace = format!("it-{id}");
        let replicas = replicas.to_string();
        let shared = [
            "--nats-replicas",
            replicas.as_str(),
            "--nats-url",
            nats,
            "--postgres-url",
            postgres.as_str(),
            "--namespace",
            namespace.as_str(),
        ];
        let shared: Vec<String> = shared.iter().map(|arg| arg.to_string()).collect();
        let env = crate::harness::s3_env(&namespace);
        let spawn = |role: &str, extra: &[&str]| spawn_role(&shared, &env, role, extra);
        let gateways: Vec<Server> = (0..2)
            .map(|_| spawn("gateway", &["--trusted-proxies", "127.0.0.1"]))
            .collect();
        let persisters: Vec<Server> = (0..persisters).map(|_| spawn("persister", &[])).collect();

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
        let cluster = Cluster {
            address: listen,
            gateways,
            persisters,
            namespace,
            haproxy,
            admin_url,
            database,
            shared,
            env,
        };
        wait_for_both_gateways(&stats).await;
        cluster
    }

    /// `parlor ROLE` with this cluster's flags and `extra`, run to its end: its exit status
    /// and what it wrote to stderr (for a process that must refuse to start).
    pub fn run_to_exit(&self, role: &str, extra: &[&str]) -> std::process::Output {
        std::process::Command::new(crate::harness::BIN)
            .args([role, "--listen", "127.0.0.1:0"])
            .args(&self.shared)
            .args(extra)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .expect("run parlor")
    }

    /// `parlor ARGS…` with this cluster's flags (`--nats-url`, `--postgres-url`, …), run to
    /// its end: an operator's command.
    pub fn run_command(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(crate::harness::BIN)
            .args(args)
            .args(&self.shared)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .expect("run parlor")
    }

    /// Starts one more persister; its index in `persisters`.
    pub fn add_persister(&mut self) -> usize {
        let persister = spawn_role(&self.shared, &self.env, "persister", &[]);
        self.persisters.push(persister);
        self.persisters.len() - 1
    }

    /// Starts one more gateway, which HAProxy does not know of: clients reach it at its own
    /// address. Its index in `gateways`.
    pub fn add_gateway(&mut self) -> usize {
        let gateway = spawn_role(&self.shared, &self.env, "gateway", &[]);
        self.gateways.push(gateway);
        self.gateways.len() - 1
    }

    pub fn http(&self) -> Http {
        Http {
            address: self.address.clone(),
        }
    }
}

impl Cluster {
    /// The NATS this cluster runs on if it is scripts/services' (shared by every test), not
    /// one of the test's own.
    fn shared_nats(&self) -> Option<String> {
        let url = self
            .shared
            .iter()
            .skip_while(|arg| *arg != "--nats-url")
            .nth(1)?;
        let shared = std::env::var("PARLOR_TEST_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4223".into());
        (*url == shared).then(|| url.clone())
    }
}

/// Deletes the streams and buckets of `namespace` on the NATS at `url`, best effort and
/// within a few seconds. Left behind, every test run added dozens: 1,748 streams on the
/// shared server made a JetStream publish there twice as slow under a light load.
fn delete_namespace(url: &str, namespace: &str) {
    let (url, names) = (
        url.to_string(),
        [namespace.to_ascii_lowercase(), namespace.replace('-', "_")],
    );
    let cleanup = async move {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(&url)
            .await
            .ok()?;
        let jetstream = async_nats::jetstream::new(client);
        let streams: Vec<String> = futures::StreamExt::collect::<Vec<_>>(jetstream.stream_names())
            .await
            .into_iter()
            .filter_map(Result::ok)
            .filter(|stream| {
                let stream = stream.to_ascii_lowercase();
                names.iter().any(|name| stream.contains(name.as_str()))
            })
            .collect();
        for stream in streams {
            let _ = jetstream.delete_stream(&stream).await;
        }
        Some(())
    };
    // Drop is not async: a runtime of its own, on a thread of its own (the test's runtime
    // may be the current thread's).
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), cleanup)
                .await
                .ok()?
        })
    })
    .join();
}

fn spawn_role(shared: &[String], env: &[(String, String)], role: &str, extra: &[&str]) -> Server {
    let mut args = vec![role, "--listen", "127.0.0.1:0"];
    args.extend(shared.iter().map(String::as_str));
    args.extend_from_slice(extra);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::spawn(&args, &env)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.haproxy.kill();
        let _ = self.haproxy.wait();
        for server in self.gateways.iter_mut().chain(self.persisters.iter_mut()) {
            server.kill();
        }
        if let Some(nats) = self.shared_nats() {
            delete_namespace(&nats, &self.namespace);
        }
        // Best effort: a database left behind only costs disk.
        let _ = Command::new("psql")
            .args([self.admin_url.as_str(), "-qc"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The PostgreSQL that scripts/services runs, as a URL where a test creates its database.
pub fn shared_postgres() -> String {
    std::env::var("PARLOR_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Waits until HAProxy, whose stats listen on `stats`, sees both gateways up: a test may
/// rely on either only then.
pub async fn wait_for_both_gateways(stats: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(stats).await.is_err() {
            assert!(Instant::now() < deadline, "HAProxy did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let stats = Http {
            address: stats.to_string(),
        }
        .raw("GET", "/metrics", &[], b"")
        .await;
        let up = String::from_utf8_lossy(&stats.body)
            .lines()
            .filter(|l| {
                l.starts_with("haproxy_server_status{")
                    && l.contains("state=\"UP\"")
                    && l.ends_with(" 1")
            })
            .count();
        if up == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HAProxy never saw both gateways up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn psql(url: &str, sql: &str) {
    let status = Command::new("psql")
        .args([url, "-qc", sql])
        .status()
        .unwrap_or_else(|e| panic!("cannot run psql ({e}): {SERVICES_HINT}"));
    assert!(status.success(), "psql {sql:?} failed: {SERVICES_HINT}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_gateways_chat_both_ways() {
    let cluster = Cluster::start().await;
    let http = cluster.http();
    let (alice_id, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let mut alice_ws = Ws::connect(&cluster.gateways[0].address, &alice).await;
    let mut bob_ws = Ws::connect(&cluster.gateways[1].address, &bob).await;

    alice_ws
        .send_message(&conversation, "a-1", "hello from gateway 1")
        .await;
    alice_ws.next_of("accepted").await;
    let message = bob_ws.next_of("message").await;
    assert_eq!(
        (&message["message"]["body"], &message["message"]["seq"]),
        (&json!("hello from gateway 1"), &json!(1))
    );
    bob_ws
        .send_message(&conversation, "b-1", "hello from gateway 2")
        .await;
    bob_ws.next_of("accepted").await;
    // Alice's own message comes back to her connection first, then Bob's.
    let mut bodies = Vec::new();
    while bodies.len() < 2 {
        bodies.push(alice_ws.next_of("message").await["message"]["body"].clone());
    }
    assert_eq!(
        bodies,
        [json!("hello from gateway 1"), json!("hello from gateway 2")]
    );
    let history = http.history(&alice, &conversation).await;
    let senders: Vec<&Value> = history.iter().map(|m| &m["sender_id"]).collect();
    assert_eq!(senders, [&json!(alice_id), &json!(bob_id)]);

    // Search on PostgreSQL: both stored messages, found through either gateway.
    let found = http
        .get("/api/v1/search?q=hello%20gate&sort=recent", &bob)
        .await;
    assert_eq!(found.status, 200, "{found:?}");
    let seqs: Vec<Value> = found.json()["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hit| hit["seq"].clone())
        .collect();
    assert_eq!(seqs, [json!(2), json!(1)]);

    // A resend after a reconnect (to the other gateway) goes back to Alice only.
    drop(alice_ws);
    let mut alice_ws = Ws::connect(&cluster.gateways[1].address, &alice).await;
    alice_ws
        .send_message(&conversation, "a-1", "hello from gateway 1")
        .await;
    let again = alice_ws.next_of("message").await;
    assert_eq!(again["message"]["seq"], 1, "{again}");
    alice_ws
        .send_message(&conversation, "a-2", "and again")
        .await;
    // Bob's own b-1 is still queued on his socket; then comes a-2, and never a-1 again.
    let mut seen = Vec::new();
    while seen.last() != Some(&json!("a-2")) {
        seen.push(bob_ws.next_of("message").await["message"]["client_msg_id"].clone());
    }
    assert_eq!(
        seen,
        [json!("b-1"), json!("a-2")],
        "Bob must not get a-1 twice"
    );

    // A file uploaded through one gateway (into S3) is read through the other.
    let png = parlor_testkit::images::png(120, 90);
    let auth = format!("Bearer {alice}");
    let one = Http {
        address: cluster.gateways[0].address.clone(),
    };
    let uploaded = one
        .raw(
            "POST",
            "/api/v1/files?name=chart.png",
            &[("Authorization", &auth)],
            &png,
        )
        .await;
    assert_eq!(uploaded.status, 201, "{uploaded:?}");
    let file = uploaded.json()["file"].clone();
    assert_eq!(file["image"], json!({"width": 120, "height": 90}));
    alice_ws
        .send(json!({"type": "send", "conversation_id": conversation,
        "client_msg_id": "a-file", "files": [file["id"]]}))
        .await;
    let carried = loop {
        let frame = bob_ws.next_of("message").await;
        if frame["message"]["client_msg_id"] == "a-file" {
            break frame;
        }
    };
    assert_eq!(carried["message"]["files"], json!([file.clone()]));
    let two = Http {
        address: cluster.gateways[1].address.clone(),
    };
    let bob_auth = format!("Bearer {bob}");
    let path = format!("/api/v1/files/{}", file["id"].as_str().unwrap());
    let read = two
        .raw("GET", &path, &[("Authorization", &bob_auth)], &[])
        .await;
    assert_eq!((read.status, read.body == png), (200, true), "{read:?}");
    let thumbnail = two
        .raw(
            "GET",
            &format!("{path}/thumbnail"),
            &[("Authorization", &bob_auth)],
            &[],
        )
        .await;
    assert_eq!(thumbnail.header("content-type"), Some("image/jpeg"));

    // Through the balancer, the scheme is what it says, not what the client claims.
    let own = format!("http://{}", cluster.address);
    assert!(
        Ws::try_connect(&cluster.address, &alice, Some(&own))
            .await
            .is_ok()
    );
    let claimed = format!("https://{}", cluster.address);
    let refused = Ws::try_connect(&cluster.address, &alice, Some(&claimed)).await;
    assert!(refused.is_err(), "https origin over a plain balancer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_users_are_shown_offline_within_30_seconds() {
    let mut cluster = Cluster::start().await;
    let http = cluster.http();
    let (alice_id, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    http.direct(&alice, &bob_id).await;
    let _alice_ws = Ws::connect(&cluster.gateways[0].address, &alice).await;
    let mut bob_ws = Ws::connect(&cluster.gateways[1].address, &bob).await;
    let online = http.get("/api/v1/users?q=alice", &bob).await.json();
    assert_eq!(online[0]["online"], json!(true));

    cluster.gateways[0].kill();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(30);
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let frame = bob_ws
            .try_next(wait)
            .await
            .expect("Bob was told within 30 s that Alice went offline");
        if frame["type"] == "presence" && frame["user_id"] == json!(alice_id) {
            assert_eq!(frame["online"], json!(false), "{frame}");
            assert!(frame["last_seen"].is_string(), "{frame}");
            break;
        }
    }
    let offline = http.get("/api/v1/users?q=alice", &bob).await.json();
    assert_eq!(offline[0]["online"], json!(false));
}

/// Two persisters run (one active, one on standby): in several conversations at once, each
/// sender's messages are stored in send order, once each, with gap-free `seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_conversation_order_holds_with_two_persisters() {
    let cluster = Cluster::start().await;
    let http = cluster.http();
    let (alice_id, alice) = http.register("alice").await;
    let conversations =
        crate::cluster_chaos::senders_to(&http, &alice_id, &["bob", "carol", "dave"]).await;
    let bursts = conversations.iter().map(|(conversation, sender)| {
        crate::cluster_chaos::burst_through_chaos(
            &cluster.address,
            sender,
            conversation,
            2,
            500,
            0,
            || {},
        )
    });
    let accepted = futures::future::join_all(bursts).await;
    for ((conversation, _), accepted) in conversations.iter().zip(&accepted) {
        assert_eq!(accepted.len(), 1000);
        crate::cluster_chaos::assert_stored_exactly_once(&http, &alice, conversation, accepted)
            .await;
    }
}

/// Membership that ends, across nodes: Cat is connected to the other gateway than the admin
/// who removes her; within a second she is told, then gets nothing more and `not_found`
/// everywhere. Edits and reactions reach members on both gateways in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_on_another_gateway_is_cut_off_within_a_second() {
    let cluster = Cluster::start().await;
    let http = cluster.http();
    let (_, ann) = http.register("ann").await;
    let (ben_id, ben) = http.register("ben").await;
    let (cat_id, cat) = http.register("cat").await;
    let created = http
        .post(
            "/api/v1/conversations",
            &ann,
            json!({"kind": "group", "title": "Team", "members": [ben_id, cat_id]}),
        )
        .await;
    let chat = created.json()["id"].as_str().unwrap().to_owned();
    let mut ann_ws = Ws::connect(&cluster.gateways[0].address, &ann).await;
    let mut ben_ws = Ws::connect(&cluster.gateways[1].address, &ben).await;
    let mut cat_ws = Ws::connect(&cluster.gateways[1].address, &cat).await;
    let cat_direct = Http {
        address: cluster.gateways[1].address.clone(),
    };

    cat_ws.send_message(&chat, "c1", "hi").await;
    assert_eq!(ann_ws.next_of("message").await["message"]["seq"], 1);
    ann_ws
        .send(
            json!({"type": "event", "conversation_id": chat, "client_msg_id": "a1",
            "kind": "reaction_added", "target_seq": 1, "emoji": "👍"}),
        )
        .await;
    let reacted = ben_ws.next_of("event").await["event"].clone();
    assert_eq!(
        (reacted["seq"].as_u64(), reacted["kind"].as_str()),
        (Some(2), Some("reaction_added"))
    );

    let started = Instant::now();
    ann_ws
        .send(
            json!({"type": "event", "conversation_id": chat, "client_msg_id": "a2",
            "kind": "member_removed", "user_id": cat_id}),
        )
        .await;
    loop {
        let frame = cat_ws.next().await;
        if frame["type"] == "event" && frame["event"]["kind"] == "member_removed" {
            break;
        }
    }
    let told_after = started.elapsed();
    assert!(
        told_after < Duration::from_secs(1),
        "told after {told_after:?}"
    );
    let response = cat_direct
        .get(&format!("/api/v1/conversations/{chat}/messages"), &cat)
        .await;
    assert_eq!(response.status, 404);
    ann_ws.send_message(&chat, "a3", "without cat").await;
    let after = ben_ws.next_of("message").await;
    assert_eq!(after["message"]["seq"], 4);
    let mut leaked = Vec::new();
    while let Some(frame) = cat_ws.try_next(Duration::from_millis(1000)).await {
        if frame["type"] != "presence" {
            leaked.push(frame);
        }
    }
    assert!(leaked.is_empty(), "{leaked:#?}");
    cat_ws.send_message(&chat, "c2", "still here?").await;
    let refused = cat_ws.next_of("error").await;
    assert_eq!(refused["code"], "not_found");
}
