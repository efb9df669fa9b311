//! N authenticated idle WebSockets: server memory per connection and handshakes per second.
//!
//! A process here may hold about 20,000 open files, so the connections are spread over
//! several generator processes (this binary's hidden `hold` command), each from its own
//! 127.0.0.x source address.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;

use crate::client;
use crate::report::{CpuMeter, Report};
use crate::server::{self, Server};

/// Parlor allows this many connections per user.
const CONNECTIONS_PER_USER: usize = 32;

pub async fn run(
    server: &Server,
    count: usize,
    per_process: usize,
    out: &Path,
) -> anyhow::Result<()> {
    let mut report = Report::new("connections");
    let users = count.div_ceil(CONNECTIONS_PER_USER);
    let accounts = client::register_many(&server.address, "idle", users, 8).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = server.rss_kib();

    let processes = count.div_ceil(per_process);
    let mut workers = Vec::new();
    let cpu = CpuMeter::start(server);
    let started = Instant::now();
    for process in 0..processes {
        let first = process * per_process;
        let last = count.min(first + per_process);
        let tokens: Vec<&str> = (first..last)
            .map(|i| accounts[i / CONNECTIONS_PER_USER].token.as_str())
            .collect();
        let source = format!("127.0.0.{}", 2 + process);
        workers.push(Worker::spawn(&server.address, &source, &tokens)?);
    }
    let mut ready = 0;
    let mut worker_cpu = 0.0;
    for worker in &mut workers {
        ready += worker.wait_ready()?;
    }
    let handshake_seconds = started.elapsed().as_secs_f64();
    for worker in &workers {
        worker_cpu += server::cpu_seconds(worker.pid()).unwrap_or_default();
    }
    // Let allocations settle before reading the server's memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = server.rss_kib();

    report.add("connections", "connections held", ready as u64);
    report.add(
        "generator_processes",
        "generator processes",
        processes as u64,
    );
    report.add(
        "per_process_ceiling",
        "open files per process (ulimit -n)",
        open_files_limit(),
    );
    report.add(
        "handshakes_per_second",
        "handshakes/s (TCP + WebSocket + auth)",
        ready as f64 / handshake_seconds,
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        report.add("server_rss_before_kib", "server RSS before (KiB)", before);
        report.add("server_rss_after_kib", "server RSS with them (KiB)", after);
        report.add(
            "kib_per_connection",
            "server memory per connection (KiB)",
            after.saturating_sub(before) as f64 / ready.max(1) as f64,
        );
    }
    cpu.finish(server, &mut report);
    report.add(
        "generator_worker_cpu_seconds",
        "generator workers' CPU (s)",
        worker_cpu,
    );
    drop(workers);
    report.finish(out)?;
    if ready != count {
        bail!("only {ready} of {count} connections were established");
    }
    Ok(())
}

/// A child process holding connections until its stdin closes.
struct Worker {
    child: std::process::Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Worker {
    fn spawn(address: &str, source: &str, tokens: &[&str]) -> anyhow::Result<Worker> {
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
        Ok(Worker { child, stdout })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self) -> anyhow::Result<usize> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        match line.trim().strip_prefix("ready ") {
            Some(count) => Ok(count.parse()?),
            None => bail!("a connection worker failed: {line:?}"),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The hidden `hold` command: reads tokens from stdin up to an empty line, opens one
/// connection per token from `source`, prints `ready N`, and holds them until stdin closes.
pub async fn hold(address: &str, source: IpAddr) -> anyhow::Result<()> {
    let mut tokens = Vec::new();
    let mut stdin = std::io::stdin().lock();
    loop {
        let mut line = String::new();
        if stdin.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        tokens.push(line.trim().to_string());
    }
    let sockets: Vec<_> = futures::stream::iter(tokens)
        .map(|token| async move { client::connect(address, &token, Some(source)).await })
        .buffer_unordered(128)
        .collect()
        .await;
    let mut held = Vec::with_capacity(sockets.len());
    for socket in sockets {
        match socket {
            Ok(socket) => held.push(socket),
            Err(error) => {
                println!("failed {error:#}");
                return Ok(());
            }
        }
    }
    println!("ready {}", held.len());
    std::io::stdout().flush()?;
    // Until the parent closes our stdin.
    let mut rest = Vec::new();
    let _ = stdin.read_to_end(&mut rest);
    drop(held);
    Ok(())
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
