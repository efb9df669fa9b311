//! N authenticated idle WebSockets: memory per connection, handshakes per second, and the
//! NATS traffic they cause, against Parlor's own `parlor serve` or a running cluster
//! (`--addr`, with the gateways' `--pids`).
//!
//! A process here may hold about 20,000 open files, so the connections are spread over
//! several generator processes (this binary's hidden `hold` command, `hold.rs`), each from
//! its own 127.0.0.x source address (each has its own ~28,000 ephemeral ports). They ping
//! and reconnect as the web client does, so a gateway killed during `--hold-secs` shows
//! how its clients come back: the timeline printed every second says how many are
//! connected, and how many attempts failed.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::client::{self, Account, Http};
use crate::report::{Report, own_cpu_seconds};
use crate::server::{self, Server};

/// Parlor allows this many connections per user (on one gateway).
const CONNECTIONS_PER_USER: usize = 32;
/// How long all connections may take to be established.
const ESTABLISH_WAIT_MAX: Duration = Duration::from_secs(900);
/// Before memory is read: allocations settle, the registry's writes land.
const SETTLE: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct Options {
    #[arg(long, default_value_t = 19_000)]
    pub count: usize,
    /// Connections per generator process (each has its own source address).
    #[arg(long, default_value_t = 5_000)]
    pub per_process: usize,
    /// The pids of the processes that hold them (a cluster's gateways), comma-separated,
    /// for memory, sockets and CPU of each; with `--addr`. The server's own when empty.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// The pids of the load balancers in front of them (HAProxy), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub balancer_pids: Vec<u32>,
    /// NATS's monitoring address, for the traffic the connections cause (`/varz`).
    #[arg(long)]
    pub nats_monitor: Option<String>,
    /// Seconds held idle while CPU and traffic are measured.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// Seconds held afterwards with a line per second (kill gateways meanwhile).
    #[arg(long, default_value_t = 0)]
    pub hold_secs: u64,
    /// A file of session tokens reused across runs against one cluster (written when it
    /// holds too few).
    #[arg(long)]
    pub tokens: Option<PathBuf>,
}

pub async fn run(server: &Server, options: &Options, out: &Path) -> anyhow::Result<()> {
    let count = options.count;
    let mut report = Report::new("connections");
    let tokens = tokens(server, options).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pids = if options.pids.is_empty() {
        server.pid().into_iter().collect()
    } else {
        options.pids.clone()
    };
    let gateways: Vec<Watched> = pids.iter().map(|&pid| Watched::new(pid)).collect();
    let balancers: Vec<Watched> = options
        .balancer_pids
        .iter()
        .map(|&pid| Watched::new(pid))
        .collect();
    let nats = Nats::new(options.nats_monitor.clone());
    // What NATS carries with no connections (leases, queue polls), to tell theirs apart.
    let baseline_started = Instant::now();
    let baseline_before = nats.sample().await;
    if baseline_before.is_some() {
        tokio::time::sleep(Duration::from_secs(options.idle_secs)).await;
    }
    let nats_before = nats.sample().await;
    let baseline = match (&baseline_before, &nats_before) {
        (Some(before), Some(after)) => Some(
            after
                .minus(before)
                .per_second(baseline_started.elapsed().as_secs_f64()),
        ),
        _ => None,
    };

    let processes = count.div_ceil(options.per_process);
    let mut workers = Vec::new();
    let generator_cpu_before = own_cpu_seconds();
    let started = Instant::now();
    for process in 0..processes {
        let first = process * options.per_process;
        let last = count.min(first + options.per_process);
        let source = format!("127.0.0.{}", 2 + process);
        workers.push(Worker::spawn(
            &server.address,
            &source,
            &tokens[first..last],
        )?);
    }
    let deadline = started + ESTABLISH_WAIT_MAX;
    let mut ready = 0;
    while Instant::now() < deadline {
        ready = total(&workers).connected;
        if ready >= count as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let establish_seconds = started.elapsed().as_secs_f64();
    let failures_connecting = total(&workers).failures;
    let nats_connected = nats.sample().await;
    let generator_cpu_connecting =
        generator_cpu(&workers) + own_cpu_seconds() - generator_cpu_before;
    tokio::time::sleep(SETTLE).await;

    report.add("connections", "connections held", ready);
    report.add(
        "generator_processes",
        "generator processes (one source address each)",
        processes as u64,
    );
    report.add(
        "per_process_ceiling",
        "open files per process (ulimit -n)",
        open_files_limit(),
    );
    report.add(
        "establish_seconds",
        "time to establish them all (s)",
        establish_seconds,
    );
    report.add(
        "handshakes_per_second",
        "handshakes/s (TCP + WebSocket + auth + registry)",
        ready as f64 / establish_seconds,
    );
    report.add(
        "failed_attempts_connecting",
        "failed attempts while connecting",
        failures_connecting,
    );
    report.add(
        "generator_cpu_seconds_connecting",
        "generator CPU while connecting (s)",
        generator_cpu_connecting,
    );
    let mut gateway_delta_kib = 0;
    let mut gateway_sockets = 0;
    for (index, gateway) in gateways.iter().enumerate() {
        let sockets = gateway.sockets_added();
        let delta = gateway.rss_added_kib();
        gateway_delta_kib += delta;
        gateway_sockets += sockets;
        let n = index + 1;
        report.add(
            &format!("gateway{n}_sockets"),
            &format!("gateway {n}: sockets added"),
            sockets,
        );
        report.add(
            &format!("gateway{n}_rss_kib"),
            &format!("gateway {n}: RSS with them (KiB)"),
            gateway.rss_kib(),
        );
        report.add(
            &format!("gateway{n}_kib_per_connection"),
            &format!("gateway {n}: memory per connection (KiB)"),
            delta as f64 / sockets.max(1) as f64,
        );
    }
    if !gateways.is_empty() {
        report.add(
            "kib_per_connection",
            "server memory per connection, all gateways (KiB)",
            gateway_delta_kib as f64 / ready.max(1) as f64,
        );
        report.add(
            "server_sockets_added",
            "sockets added on the servers",
            gateway_sockets,
        );
    }
    if !balancers.is_empty() {
        let delta: u64 = balancers.iter().map(Watched::rss_added_kib).sum();
        let rss: u64 = balancers.iter().map(Watched::rss_kib).sum();
        let sockets: Vec<String> = balancers
            .iter()
            .map(|b| b.sockets_added().to_string())
            .collect();
        report.add(
            "balancer_rss_kib",
            "balancers' RSS with them (KiB, all)",
            rss,
        );
        report.add(
            "balancer_kib_per_connection",
            "balancer memory per connection (KiB)",
            delta as f64 / ready.max(1) as f64,
        );
        report.add(
            "balancer_sockets_added",
            "balancers' sockets added (each)",
            sockets.join(" "),
        );
    }
    let generator_rss: u64 = workers
        .iter()
        .filter_map(|w| server::rss_kib(w.pid()))
        .sum();
    report.add(
        "generator_kib_per_connection",
        "generator memory per connection (KiB)",
        generator_rss as f64 / ready.max(1) as f64,
    );
    if let (Some(before), Some(after)) = (&nats_before, &nats_connected) {
        let delta = after.minus(before);
        let per = |value: f64| value / ready.max(1) as f64;
        report.add(
            "nats_in_msgs_per_connection_connecting",
            "NATS in msgs per connection made",
            per(delta.in_msgs),
        );
        report.add(
            "nats_out_msgs_per_connection_connecting",
            "NATS out msgs per connection made",
            per(delta.out_msgs),
        );
        report.add(
            "nats_in_bytes_per_connection_connecting",
            "NATS in bytes per connection made",
            per(delta.in_bytes),
        );
        report.add(
            "nats_out_bytes_per_connection_connecting",
            "NATS out bytes per connection made",
            per(delta.out_bytes),
        );
        report.add(
            "nats_in_msgs_per_second_connecting",
            "NATS in msgs/s while connecting",
            delta.in_msgs / establish_seconds,
        );
        report.add(
            "nats_out_msgs_per_second_connecting",
            "NATS out msgs/s while connecting",
            delta.out_msgs / establish_seconds,
        );
    }

    // Idle: CPU and traffic over a window with nothing but pings.
    let idle = Duration::from_secs(options.idle_secs);
    let cpu_gateways: Vec<Option<f64>> = gateways
        .iter()
        .map(|g| server::cpu_seconds(g.pid))
        .collect();
    let cpu_balancers: f64 = balancers
        .iter()
        .filter_map(|b| server::cpu_seconds(b.pid))
        .sum();
    let cpu_generator = generator_cpu(&workers) + own_cpu_seconds();
    let nats_idle_before = nats.sample().await;
    let idle_started = Instant::now();
    tokio::time::sleep(idle).await;
    let wall = idle_started.elapsed().as_secs_f64();
    let nats_idle_after = nats.sample().await;
    let mut all_gateways = 0.0;
    for (index, (gateway, before)) in gateways.iter().zip(&cpu_gateways).enumerate() {
        if let (Some(before), Some(after)) = (before, server::cpu_seconds(gateway.pid)) {
            all_gateways += after - before;
            report.add(
                &format!("gateway{}_cores_idle", index + 1),
                &format!("gateway {}: CPU idle (cores)", index + 1),
                (after - before) / wall,
            );
        }
    }
    report.add(
        "server_cores_idle",
        "servers' CPU idle (cores, all)",
        all_gateways / wall,
    );
    if !balancers.is_empty() {
        let after: f64 = balancers
            .iter()
            .filter_map(|b| server::cpu_seconds(b.pid))
            .sum();
        report.add(
            "balancer_cores_idle",
            "balancers' CPU idle (cores, all)",
            (after - cpu_balancers) / wall,
        );
    }
    report.add(
        "generator_cores_idle",
        "generator CPU idle (cores; it pings every 20 s)",
        (generator_cpu(&workers) + own_cpu_seconds() - cpu_generator) / wall,
    );
    if let (Some(before), Some(after), Some(baseline)) =
        (&nats_idle_before, &nats_idle_after, &baseline)
    {
        let rate = after.minus(before).per_second(wall);
        report.add(
            "nats_in_msgs_per_second_baseline",
            "NATS in msgs/s with no connections",
            baseline.in_msgs,
        );
        report.add(
            "nats_out_msgs_per_second_baseline",
            "NATS out msgs/s with no connections",
            baseline.out_msgs,
        );
        report.add(
            "nats_in_msgs_per_second_idle",
            "NATS in msgs/s idle",
            rate.in_msgs,
        );
        report.add(
            "nats_out_msgs_per_second_idle",
            "NATS out msgs/s idle",
            rate.out_msgs,
        );
        report.add(
            "nats_in_bytes_per_second_idle",
            "NATS in bytes/s idle",
            rate.in_bytes,
        );
        report.add(
            "nats_out_bytes_per_second_idle",
            "NATS out bytes/s idle",
            rate.out_bytes,
        );
        let theirs = rate.minus(baseline);
        report.add(
            "nats_msgs_per_connection_per_minute_idle",
            "NATS in + out msgs per connection per minute idle, over the baseline",
            (theirs.in_msgs + theirs.out_msgs) * 60.0 / ready.max(1) as f64,
        );
    }

    // Held, a line a second, while whoever runs this kills or starts gateways.
    let timeline = hold_with_timeline(&workers, &gateways, &nats, options.hold_secs).await;
    let end = total(&workers);
    report.add("connected_at_end", "connected at the end", end.connected);
    report.add(
        "connects_total",
        "handshakes in all (reconnects included)",
        end.connects,
    );
    report.add(
        "failed_attempts_total",
        "failed attempts in all",
        end.failures,
    );
    report.add("drops_total", "connections lost in all", end.drops);
    report.attach("timeline", Value::Array(timeline));
    drop(workers);
    report.finish(out)?;
    if ready != count as u64 {
        bail!("only {ready} of {count} connections were established");
    }
    Ok(())
}
/// The accounts' tokens, `CONNECTIONS_PER_USER` connections to each: read from
/// `options.tokens` if it holds enough, else registered (Argon2id: the slow part) and written.
async fn tokens(server: &Server, options: &Options) -> anyhow::Result<Vec<String>> {
    let users = options.count.div_ceil(CONNECTIONS_PER_USER);
    let saved: Vec<String> = match &options.tokens {
        Some(path) => std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    };
    let accounts: Vec<String> = if saved.len() >= users {
        saved
    } else {
        let started = Instant::now();
        let accounts: Vec<Account> =
            client::register_many(&server.address, "idle", users, 8).await?;
        println!(
            "registered {users} users in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let tokens: Vec<String> = accounts.into_iter().map(|account| account.token).collect();
        if let Some(path) = &options.tokens {
            std::fs::write(path, tokens.join("\n"))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        tokens
    };
    Ok((0..options.count)
        .map(|i| accounts[i / CONNECTIONS_PER_USER].clone())
        .collect())
}

/// A process whose memory and sockets are compared with what they were at the start.
struct Watched {
    pid: u32,
    rss_before: u64,
    files_before: u64,
}

impl Watched {
    fn new(pid: u32) -> Watched {
        Watched {
            pid,
            rss_before: server::rss_kib(pid).unwrap_or_default(),
            files_before: open_files(pid),
        }
    }

    fn rss_kib(&self) -> u64 {
        server::rss_kib(self.pid).unwrap_or_default()
    }

    fn rss_added_kib(&self) -> u64 {
        self.rss_kib().saturating_sub(self.rss_before)
    }

    fn sockets_added(&self) -> u64 {
        open_files(self.pid).saturating_sub(self.files_before)
    }
}

/// The files a process holds open (sockets included), from /proc.
fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count() as u64)
}

/// NATS's message and byte counters, from its monitoring endpoint.
struct Nats(Option<String>);

#[derive(Clone, Copy)]
struct NatsCounts {
    in_msgs: f64,
    out_msgs: f64,
    in_bytes: f64,
    out_bytes: f64,
}

impl NatsCounts {
    fn minus(&self, before: &NatsCounts) -> NatsCounts {
        NatsCounts {
            in_msgs: self.in_msgs - before.in_msgs,
            out_msgs: self.out_msgs - before.out_msgs,
            in_bytes: self.in_bytes - before.in_bytes,
            out_bytes: self.out_bytes - before.out_bytes,
        }
    }
}

impl NatsCounts {
    fn per_second(&self, seconds: f64) -> NatsCounts {
        NatsCounts {
            in_msgs: self.in_msgs / seconds,
            out_msgs: self.out_msgs / seconds,
            in_bytes: self.in_bytes / seconds,
            out_bytes: self.out_bytes / seconds,
        }
    }
}

impl Nats {
    fn new(monitor: Option<String>) -> Nats {
        Nats(monitor)
    }

    async fn sample(&self) -> Option<NatsCounts> {
        let monitor = self.0.as_ref()?;
        let mut http = Http::connect(monitor).await.ok()?;
        let (_, varz) = http.request("GET", "/varz", None, None).await.ok()?;
        let field = |name: &str| varz[name].as_f64();
        Some(NatsCounts {
            in_msgs: field("in_msgs")?,
            out_msgs: field("out_msgs")?,
            in_bytes: field("in_bytes")?,
            out_bytes: field("out_bytes")?,
        })
    }
}

/// What the generator processes last said, summed.
#[derive(Clone, Copy, Default)]
struct Status {
    connected: u64,
    connects: u64,
    failures: u64,
    drops: u64,
}

fn total(workers: &[Worker]) -> Status {
    workers.iter().fold(Status::default(), |sum, worker| {
        let status = *worker.status.lock().expect("status lock");
        Status {
            connected: sum.connected + status.connected,
            connects: sum.connects + status.connects,
            failures: sum.failures + status.failures,
            drops: sum.drops + status.drops,
        }
    })
}

fn generator_cpu(workers: &[Worker]) -> f64 {
    workers
        .iter()
        .filter_map(|worker| server::cpu_seconds(worker.pid()))
        .sum()
}

/// Holds for `seconds`, printing (and returning) a line per second: connected clients,
/// handshakes and failed attempts in that second, sockets on each server, NATS msgs/s.
async fn hold_with_timeline(
    workers: &[Worker],
    gateways: &[Watched],
    nats: &Nats,
    seconds: u64,
) -> Vec<Value> {
    let mut timeline = Vec::new();
    if seconds == 0 {
        return timeline;
    }
    let started = Instant::now();
    let mut last = total(workers);
    let mut last_nats = nats.sample().await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    println!("  t(s)  connected  handshakes  failed  lost  sockets per server  NATS in/out msgs/s");
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let now = total(workers);
        let sampled = nats.sample().await;
        let (nats_in, nats_out) = match (&sampled, &last_nats) {
            (Some(after), Some(before)) => {
                let delta = after.minus(before);
                (delta.in_msgs, delta.out_msgs)
            }
            _ => (0.0, 0.0),
        };
        let sockets: Vec<u64> = gateways
            .iter()
            .map(|gateway| open_files(gateway.pid).saturating_sub(gateway.files_before))
            .collect();
        let t = started.elapsed().as_secs_f64();
        let line = json!({
            "t": (t * 10.0).round() / 10.0,
            "connected": now.connected,
            "handshakes": now.connects - last.connects,
            "failed": now.failures - last.failures,
            "lost": now.drops - last.drops,
            "sockets": sockets,
            "nats_in_msgs": nats_in,
            "nats_out_msgs": nats_out,
        });
        println!(
            "  {t:5.0}  {:9}  {:10}  {:6}  {:5}  {:?}  {nats_in:.0}/{nats_out:.0}",
            now.connected,
            now.connects - last.connects,
            now.failures - last.failures,
            now.drops - last.drops,
            sockets,
        );
        let _ = std::io::stdout().flush();
        timeline.push(line);
        last = now;
        last_nats = sampled;
    }
    timeline
}

/// A generator process holding connections until its stdin closes.
struct Worker {
    child: std::process::Child,
    status: Arc<Mutex<Status>>,
}

impl Worker {
    fn spawn(address: &str, source: &str, tokens: &[String]) -> anyhow::Result<Worker> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["hold", "--addr", address, "--source", source])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        // The tokens first, then an empty line; the pipe stays open to keep the worker alive.
        for token in tokens {
            writeln!(stdin, "{token}")?;
        }
        writeln!(stdin)?;
        child.stdin = Some(stdin);
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let status = Arc::new(Mutex::new(Status::default()));
        let shared = Arc::clone(&status);
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                let fields: Vec<u64> = line
                    .strip_prefix("status ")
                    .unwrap_or_default()
                    .split(' ')
                    .filter_map(|field| field.parse().ok())
                    .collect();
                if let [connected, connects, failures, drops] = fields[..] {
                    *shared.lock().expect("status lock") = Status {
                        connected,
                        connects,
                        failures,
                        drops,
                    };
                }
            }
        });
        Ok(Worker { child, status })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[allow(unsafe_code)] // a libc call with no safe wrapper; see SAFETY below
pub fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_cur
}

/// Raises this process's open-file limit to its hard limit; children inherit it.
#[allow(unsafe_code)] // a libc call with no safe wrapper; see SAFETY below
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
