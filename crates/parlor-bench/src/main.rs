//! parlor-bench: a load generator that speaks protocol v1 over real sockets to Parlor.
//!
//! By default every scenario starts its own `parlor serve` (a fresh data directory, rate
//! limits lifted) so it can read the server's memory and CPU and kill it; `--addr` points the
//! message scenarios at a Parlor that runs elsewhere instead (a cluster behind HAProxy, say).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Args, Parser, Subcommand};

use parlor_bench::scenarios::{
    catchup, check, connections, fanout, hold, latency, restart, search, throughput,
};
use parlor_bench::server::Server;
use parlor_bench::{client, delay_proxy};

#[derive(Parser)]
#[command(name = "parlor-bench", about = "Load scenarios against Parlor")]
struct Cli {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: Scenario,
}

#[derive(Args, Clone)]
struct Target {
    /// The parlor binary each scenario starts.
    #[arg(long, global = true, default_value = "target/release/parlor")]
    server: PathBuf,
    /// Use the Parlor at this address instead of starting one (not for `restart`, `search`
    /// or `all`).
    #[arg(long, global = true)]
    addr: Option<String>,
    /// The pid of the Parlor at `--addr`, if on this machine, for memory and CPU figures.
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// The `/metrics` addresses of the processes that store messages, comma-separated, when
    /// they are not `--addr` (a cluster's persisters).
    #[arg(long, global = true, value_delimiter = ',')]
    metrics: Vec<String>,
    /// A process whose CPU to report, with everything under it, as NAME=PID (repeat it):
    /// each role of a cluster, NATS, PostgreSQL's postmaster. With `--addr` only.
    #[arg(long, global = true, value_parser = name_and_pid)]
    cpu: Vec<(String, u32)>,
    /// Where each scenario writes its JSON.
    #[arg(long, global = true, default_value = "bench-results")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum Scenario {
    /// Every scenario with the sizes of BENCHMARKS.md.
    All,
    /// N idle authenticated WebSockets: memory per connection, handshakes/s.
    Connections(connections::Options),
    /// 1:1 pairs with a window of sends in flight: accepted/stored/delivered per second.
    Throughput {
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        #[arg(long, default_value_t = 10_000)]
        per_sender: usize,
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// Open-loop latency at a fixed rate.
    Latency {
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 50)]
        pairs: usize,
    },
    /// One sender into a group of N connected members.
    Fanout {
        #[arg(long, default_value_t = 1_000)]
        members: usize,
        #[arg(long, default_value_t = 50)]
        one_at_a_time: usize,
        #[arg(long, default_value_t = 100)]
        burst: usize,
    },
    /// A member offline for N messages reconnects and catches up.
    Catchup {
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
    },
    /// kill -9 with N unconsumed inbound entries, then restart.
    Restart {
        #[arg(long, default_value_t = 1_000_000)]
        entries: usize,
    },
    /// Delivery checker: every kind of change from many devices, the server killed with
    /// SIGKILL N times (`--kills`) and restarted; nothing accepted may be lost, duplicated or
    /// reordered. Exits non-zero on any violation.
    Check(check::Options),
    /// Search over N stored messages in many groups: latency of each kind of query.
    Search {
        #[arg(long, default_value_t = 1_000_000)]
        messages: usize,
        #[arg(long, default_value_t = 100)]
        users: usize,
        #[arg(long, default_value_t = 200)]
        groups: usize,
        /// Queries of each kind.
        #[arg(long, default_value_t = 300)]
        queries: usize,
    },
    /// A TCP forwarder that delays every chunk each way (to put a network between the
    /// cluster's roles and NATS or PostgreSQL on one machine); runs until stopped.
    DelayProxy {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        target: String,
        /// Each way, in microseconds (500: within one availability zone).
        #[arg(long, default_value_t = 500)]
        delay_us: u64,
    },
    #[command(hide = true)]
    Hold {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        source: IpAddr,
    },
    #[command(hide = true)]
    FillInbound {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        conversation: String,
        #[arg(long)]
        sender: String,
        #[arg(long)]
        count: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    connections::raise_open_files_limit();
    let target = &cli.target;
    match cli.command {
        Scenario::Hold { addr, source } => hold::run(&addr, source).await,
        Scenario::DelayProxy {
            listen,
            target,
            delay_us,
        } => {
            let delay = std::time::Duration::from_micros(delay_us);
            tokio::task::spawn_blocking(move || delay_proxy::run(&listen, &target, delay)).await?
        }
        Scenario::FillInbound {
            data_dir,
            conversation,
            sender,
            count,
        } => restart::fill_inbound(&data_dir, &conversation, &sender, count).await,
        Scenario::All => all(target).await,
        Scenario::Connections(options) => {
            let (server, _dir) = server_for(target, "connections")?;
            connections::run(&server, &options, &target.out).await
        }
        Scenario::Throughput {
            pairs,
            per_sender,
            window,
        } => {
            let (server, _dir) = server_for(target, "throughput")?;
            throughput::run(&server, pairs, per_sender, window, &target.out).await?;
            Ok(())
        }
        Scenario::Latency {
            rate,
            seconds,
            pairs,
        } => {
            let (server, _dir) = server_for(target, "latency")?;
            latency::run(&server, rate, seconds, pairs, &target.out).await?;
            Ok(())
        }
        Scenario::Fanout {
            members,
            one_at_a_time,
            burst,
        } => {
            let (server, _dir) = server_for(target, "fanout")?;
            let accounts = client::register_many(&server.address, "fan", members, 8).await?;
            fanout::run(&server, &accounts, one_at_a_time, burst, &target.out).await?;
            Ok(())
        }
        Scenario::Catchup { messages } => {
            let (server, _dir) = server_for(target, "catchup")?;
            catchup::run(&server, messages, &target.out).await?;
            Ok(())
        }
        Scenario::Search {
            messages,
            users,
            groups,
            queries,
        } => {
            if target.addr.is_some() {
                bail!("search fills a store of its own: it needs --server, not --addr");
            }
            search::run(
                &target.server,
                messages,
                users,
                groups,
                queries,
                &target.out,
            )
            .await?;
            Ok(())
        }
        Scenario::Check(options) => {
            if target.addr.is_some() {
                bail!("check kills and restarts the server: it needs --server, not --addr");
            }
            let findings = check::run(&target.server, &options, &target.out).await?;
            if findings.violations() > 0 {
                bail!(
                    "{} violations of the delivery guarantees",
                    findings.violations()
                );
            }
            Ok(())
        }
        Scenario::Restart { entries } => {
            if target.addr.is_some() {
                bail!("restart kills and restarts the server: it needs --server, not --addr");
            }
            restart::run(&target.server, entries, &target.out).await?;
            Ok(())
        }
    }
}

/// Every scenario, each on a fresh server so one's leftovers do not skew the next.
async fn all(target: &Target) -> anyhow::Result<()> {
    if target.addr.is_some() {
        bail!("`all` starts its own servers: drop --addr");
    }
    let out = &target.out;
    {
        let (server, _dir) = own_server(target, "connections")?;
        let options = connections::Options {
            count: 19_000,
            per_process: 5_000,
            pids: Vec::new(),
            balancer_pids: Vec::new(),
            nats_monitor: None,
            idle_secs: 10,
            hold_secs: 0,
            tokens: None,
        };
        connections::run(&server, &options, out).await?;
    }
    let sustained = {
        let (server, _dir) = own_server(target, "throughput")?;
        let report = throughput::run(&server, 50, 10_000, 64, out).await?;
        report["delivered_per_second"].as_f64().unwrap_or(10_000.0)
    };
    // The highest rate the server sustains: what the closed-loop run delivered, a little
    // under, since an open-loop run at the very edge only measures queueing.
    let highest = ((sustained * 0.9) as u64 / 1000 * 1000).max(1000);
    for rate in [1_000, 10_000, highest] {
        let (server, _dir) = own_server(target, &format!("latency-{rate}"))?;
        latency::run(&server, rate, 10, 50, out).await?;
    }
    {
        let (server, _dir) = own_server(target, "fanout")?;
        let accounts = client::register_many(&server.address, "fan", 10_000, 8).await?;
        fanout::run(&server, &accounts[..1_000], 50, 100, out).await?;
        fanout::run(&server, &accounts, 50, 100, out).await?;
    }
    {
        let (server, _dir) = own_server(target, "catchup")?;
        catchup::run(&server, 100_000, out).await?;
    }
    restart::run(&target.server, 1_000_000, out).await?;
    search::run(&target.server, 1_000_000, 100, 200, 300, out).await?;
    Ok(())
}

/// A data directory that is removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn own_server(target: &Target, name: &str) -> anyhow::Result<(Server, TempDir)> {
    let dir =
        TempDir(std::env::temp_dir().join(format!("parlor-bench-{name}-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let server = Server::start(Path::new(&target.server), &dir.0)?;
    Ok((server, dir))
}

/// `NAME=PID`, as `--cpu` takes it.
fn name_and_pid(value: &str) -> Result<(String, u32), String> {
    let (name, pid) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not NAME=PID"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("{pid:?} is not a process id"))?;
    Ok((name.to_owned(), pid))
}

fn server_for(target: &Target, name: &str) -> anyhow::Result<(Server, Option<TempDir>)> {
    match &target.addr {
        Some(address) => Ok((
            Server::external(
                address.clone(),
                target.pid,
                target.metrics.clone(),
                target.cpu.clone(),
            ),
            None,
        )),
        None => {
            let (server, dir) = own_server(target, name)?;
            Ok((server, Some(dir)))
        }
    }
}
