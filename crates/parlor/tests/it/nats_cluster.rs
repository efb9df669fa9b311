//! A three-node NATS cluster of a test's own (`PARLOR_TEST_NATS_SERVER`), each node with its
//! own JetStream store in a temp dir and `sync_interval: always`, as `scripts/cluster` runs
//! it: any node can be killed (`kill -9`) and started again on the same ports and store. A
//! node may run in a network namespace of its own (`Netns`), so that a test can cut it off.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use parlor_testkit::client::Http;
use parlor_testkit::process::{SERVICES_HINT, free_address};

pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    _dir: tempfile::TempDir,
}

pub struct NatsNode {
    /// `server_name`, as JetStream names stream leaders.
    pub name: String,
    /// Where clients connect (`HOST:PORT`).
    pub client: String,
    monitor: String,
    config: PathBuf,
    /// Where its output goes (appended to, over restarts), for a failure to show.
    log: PathBuf,
    /// The network namespace it runs in, if not the test's.
    netns: Option<String>,
    process: Option<Child>,
}

/// Where a node listens: an address of the root namespace, or one inside `netns`.
pub struct Placement {
    pub host: String,
    pub netns: Option<String>,
}

impl Placement {
    pub fn loopback() -> Placement {
        Placement {
            host: "127.0.0.1".into(),
            netns: None,
        }
    }
}

impl NatsCluster {
    /// Three nodes on loopback; returns once JetStream has a meta leader.
    pub async fn start() -> NatsCluster {
        NatsCluster::start_on([
            Placement::loopback(),
            Placement::loopback(),
            Placement::loopback(),
        ])
        .await
    }

    /// Three nodes where `placements` say (free ports on each host; a node in a namespace of
    /// its own has that namespace's ports to itself).
    pub async fn start_on(placements: [Placement; 3]) -> NatsCluster {
        let program = std::env::var("PARLOR_TEST_NATS_SERVER")
            .unwrap_or_else(|_| panic!("PARLOR_TEST_NATS_SERVER is not set: {SERVICES_HINT}"));
        assert!(
            std::path::Path::new(&program).exists(),
            "no nats-server at {program}: {SERVICES_HINT}"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = |placement: &Placement, fixed: u16| match placement.netns {
            Some(_) => fixed,
            None => free_port(),
        };
        let ports: Vec<(u16, u16, u16)> = placements
            .iter()
            .map(|p| (port(p, 4222), port(p, 6222), port(p, 8222)))
            .collect();
        let routes: Vec<String> = placements
            .iter()
            .zip(&ports)
            .map(|(p, (_, route, _))| format!("nats-route://{}:{route}", p.host))
            .collect();
        let mut nodes = Vec::new();
        for (i, (placement, (client, route, monitor))) in
            placements.into_iter().zip(&ports).enumerate()
        {
            let name = format!("n{}", i + 1);
            let host = &placement.host;
            let others: Vec<&str> = routes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, r)| r.as_str())
                .collect();
            let config = dir.path().join(format!("{name}.conf"));
            let store = dir.path().join(format!("{name}-store"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: \"{host}:{client}\"\nhttp: \"{host}:{monitor}\"\n\
                     jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n\
                     cluster {{\n  name: parlor-test\n  listen: \"{host}:{route}\"\n  routes: [{}]\n}}\n",
                    store.display(),
                    others.join(", ")
                ),
            )
            .expect("write the NATS config");
            let mut node = NatsNode {
                name,
                client: format!("{host}:{client}"),
                monitor: format!("{host}:{monitor}"),
                log: config.with_extension("log"),
                config,
                netns: placement.netns,
                process: None,
            };
            node.spawn(&program);
            nodes.push(node);
        }
        let mut cluster = NatsCluster { nodes, _dir: dir };
        for i in 0..cluster.nodes.len() {
            cluster.wait_until_ready(i).await;
        }
        cluster
    }

    /// The client URLs of every node, comma-separated, as `--nats-url` takes them.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("nats://{}", node.client))
            .collect();
        urls.join(",")
    }

    /// `kill -9` of node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again (same ports, same store); returns once it is healthy with a meta
    /// leader in view.
    pub async fn restart(&mut self, i: usize) {
        let program = std::env::var("PARLOR_TEST_NATS_SERVER").expect("checked at start");
        self.nodes[i].spawn(&program);
        self.wait_until_ready(i).await;
    }

    /// The index of the node that leads `stream`, as `/jsz` of any node that runs says, once
    /// there is one; other than `except`, which is not asked either (it is gone or cut off
    /// and may still believe it leads).
    pub async fn stream_leader(&self, stream: &str, except: Option<usize>) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let asked = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, node)| node.process.is_some() && Some(*i) != except);
            for (_, node) in asked {
                let Some(jsz) = node.get("/jsz?streams=true&accounts=true").await else {
                    continue;
                };
                let leader = stream_leader_in(&jsz, stream)
                    .and_then(|leader| self.nodes.iter().position(|n| n.name == leader));
                if let Some(i) = leader.filter(|i| Some(*i) != except) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "stream {stream} has no leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Until node `i` is healthy (`/healthz`, which fails while its streams catch up) and
    /// sees a meta leader. 90 s at most: a node back from the dead catches up every stream
    /// and consumer of the cluster (an 8-partition cluster has 19 streams and 9 consumers),
    /// which once took over 30 s in CI under a burst.
    ///
    /// A node that exits before it is ready is started again, twice at most: a port chosen
    /// free can be taken before the node binds it (by another connection's ephemeral port).
    pub async fn wait_until_ready(&mut self, i: usize) {
        let program = std::env::var("PARLOR_TEST_NATS_SERVER").expect("checked at start");
        let started = Instant::now();
        let deadline = started + Duration::from_secs(90);
        let mut restarts = 0;
        loop {
            let node = &mut self.nodes[i];
            let exited = node
                .process
                .as_mut()
                .and_then(|process| process.try_wait().ok().flatten());
            if let Some(status) = exited {
                assert!(
                    restarts < 2,
                    "NATS node {} keeps exiting ({status}): {}",
                    node.name,
                    node.log_tail()
                );
                eprintln!(
                    "NATS node {} exited ({status}) before it was ready, starting it again: {}",
                    node.name,
                    node.log_tail()
                );
                restarts += 1;
                node.spawn(&program);
            }
            let node = &self.nodes[i];
            let healthy = node.status("/healthz").await == Some(200);
            let meta_leader = match node.get("/jsz").await {
                Some(jsz) => jsz["meta_cluster"]["leader"]
                    .as_str()
                    .is_some_and(|l| !l.is_empty()),
                None => false,
            };
            if healthy && meta_leader {
                eprintln!(
                    "NATS node {} ready after {:?}",
                    node.name,
                    started.elapsed()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "NATS node {} not ready within 90 s: {}",
                node.name,
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `cluster.leader` of `stream` in a `/jsz?streams=true&accounts=true` answer.
fn stream_leader_in(jsz: &Value, stream: &str) -> Option<String> {
    jsz["account_details"]
        .as_array()?
        .iter()
        .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
        .find(|detail| detail["name"] == stream)
        .and_then(|detail| detail["cluster"]["leader"].as_str())
        .filter(|leader| !leader.is_empty())
        .map(str::to_string)
}

impl NatsNode {
    fn spawn(&mut self, program: &str) {
        let mut command = match &self.netns {
            Some(netns) => {
                // `ip netns exec` execs the program: the child's pid is the server's.
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, program]);
                command
            }
            None => Command::new(program),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the NATS node's log");
        let process = command
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server ({e}): {SERVICES_HINT}"));
        self.process = Some(process);
    }

    /// The last lines of its log.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// A monitoring endpoint's status, `None` if the node does not answer within a second.
    async fn status(&self, path: &str) -> Option<u16> {
        self.request(path).await.map(|response| response.status)
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let response = self.request(path).await?;
        serde_json::from_slice(&response.body).ok()
    }

    async fn request(&self, path: &str) -> Option<parlor_testkit::client::Response> {
        let monitor = Http {
            address: self.monitor.clone(),
        };
        // Connect first: a node that is down or cut off must not hang the caller.
        let connect = tokio::net::TcpStream::connect(&self.monitor);
        match tokio::time::timeout(Duration::from_secs(1), connect).await {
            Ok(Ok(_)) => {}
            _ => return None,
        }
        tokio::time::timeout(Duration::from_secs(2), monitor.raw("GET", path, &[], b""))
            .await
            .ok()
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port below the kernel's range of ephemeral ports (32768 and up here). One the
/// kernel hands out (`free_address`) is in that range, and an outgoing connection's
/// ephemeral port could take it while its node is down: a node restarted on it kept exiting
/// with "address already in use", and the test failed.
fn free_port() -> u16 {
    const LOW: u16 = 20_000;
    const HIGH: u16 = 32_000;
    for _ in 0..1000 {
        // The low bits of a v7 uuid are random.
        let random = uuid::Uuid::now_v7().as_u128();
        let port = LOW + (random % u128::from(HIGH - LOW)) as u16;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    let address = free_address();
    let (_, port) = address.rsplit_once(':').expect("HOST:PORT");
    port.parse().expect("a port")
}

/// A network namespace joined to the test's by a veth pair: `10.231.N.1` on the test's side,
/// `10.231.N.2` inside. Deleted when dropped (with its end of the pair, and so the pair),
/// also when the test fails; the processes in it must be gone by then.
pub struct Netns {
    pub name: String,
    /// The address on the test's side: nodes outside listen here, so that the one inside
    /// can reach them (loopback is the namespace's own).
    pub outside: String,
    /// The address inside.
    pub inside: String,
    inner_link: String,
}

impl Netns {
    pub fn create() -> Netns {
        // Unique per test process, so that tests running at once do not collide.
        let id = std::process::id() % 200 + 20;
        let name = format!("parlor-it-{}", std::process::id());
        let (outer_link, inner_link) = (format!("pit{id}a"), format!("pit{id}b"));
        let (outside, inside) = (format!("10.231.{id}.1"), format!("10.231.{id}.2"));
        let netns = Netns {
            name: name.clone(),
            outside: outside.clone(),
            inside: inside.clone(),
            inner_link: inner_link.clone(),
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link",
            "add",
            &outer_link,
            "type",
            "veth",
            "peer",
            "name",
            &inner_link,
        ]);
        ip(&["link", "set", &inner_link, "netns", &name]);
        ip(&["addr", "add", &format!("{outside}/24"), "dev", &outer_link]);
        ip(&["link", "set", &outer_link, "up"]);
        netns.exec(&["addr", "add", &format!("{inside}/24"), "dev", &inner_link]);
        netns.exec(&["link", "set", &inner_link, "up"]);
        netns.exec(&["link", "set", "lo", "up"]);
        netns
    }

    /// Cuts the namespace off: its end of the pair goes down, so nothing gets in or out
    /// (connections are not closed, packets are lost, as in a real partition).
    pub fn isolate(&self) {
        self.exec(&["link", "set", &self.inner_link, "down"]);
    }

    pub fn heal(&self) {
        self.exec(&["link", "set", &self.inner_link, "up"]);
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run ip ({e}): the partition test needs iproute2"));
    assert!(
        status.success(),
        "ip {args:?} failed (the partition test needs root)"
    );
}
