//! The Parlor under test: a process this benchmark starts (so it can read its memory and CPU,
//! and kill it), or one that already runs elsewhere.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use parlor_testkit::process::ParlorProcess;

use crate::client::Http;

/// Rate limits protect a real deployment from floods; a benchmark is a deliberate flood, so the
/// server it starts lets it through. Everything else is the default configuration.
const BENCH_FLAGS: &[&str] = &[
    "--sends-per-second-per-user",
    "10000000",
    "--sends-burst-per-user",
    "10000000",
    "--requests-per-second-per-ip",
    "10000000",
    "--requests-burst-per-ip",
    "10000000",
    "--auth-per-second-per-ip",
    "100000",
    "--auth-burst-per-ip",
    "100000",
    "--searches-per-second-per-user",
    "10000000",
    "--searches-burst-per-user",
    "10000000",
    // Idle connections in the connections scenario do not ping.
    "--idle-timeout-secs",
    "3600",
    // The connections scenario holds ~20,000 from a few source addresses; the default cap
    // in all (the open-file limit less a 10 % reserve) would stop it short of that.
    "--connections-per-ip-max",
    "1000000",
    "--connections-max",
    "1000000",
];

pub struct Server {
    pub address: String,
    /// Where `/metrics` of the processes that persist are: the server itself, or a cluster's
    /// persisters.
    pub metrics: Vec<String>,
    process: Option<ParlorProcess>,
    pid: Option<u32>,
    /// Processes whose CPU a scenario reports by name (`--cpu NAME=PID`): a cluster's roles,
    /// NATS, PostgreSQL.
    pub roles: Vec<(String, u32)>,
}

impl Server {
    /// Starts `binary serve` on a free port with a data directory of its own, and waits until
    /// it listens.
    pub fn start(binary: &Path, data_dir: &Path) -> anyhow::Result<Server> {
        std::fs::create_dir_all(data_dir)?;
        let mut args: Vec<&OsStr> = ["serve", "--listen", "127.0.0.1:0", "--data-dir"]
            .map(OsStr::new)
            .to_vec();
        args.push(data_dir.as_os_str());
        args.extend(BENCH_FLAGS.iter().map(OsStr::new));
        let process = ParlorProcess::spawn(binary, &args, &[], None)
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Server {
            metrics: vec![process.address.clone()],
            address: process.address.clone(),
            pid: Some(process.child.id()),
            process: Some(process),
            roles: Vec::new(),
        })
    }

    /// A Parlor that runs elsewhere; `pid` (same machine) enables memory and CPU figures.
    pub fn external(
        address: String,
        pid: Option<u32>,
        metrics: Vec<String>,
        roles: Vec<(String, u32)>,
    ) -> Server {
        Server {
            metrics: if metrics.is_empty() {
                vec![address.clone()]
            } else {
                metrics
            },
            address,
            process: None,
            pid,
            roles,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn rss_kib(&self) -> Option<u64> {
        self.pid.and_then(rss_kib)
    }

    pub fn cpu_seconds(&self) -> Option<f64> {
        self.pid.and_then(cpu_seconds)
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// SIGTERM, then waits for the graceful shutdown.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            let status = process.terminate()?;
            if !status.success() {
                bail!("the server exited with {status}");
            }
        }
        Ok(())
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(mut http) = Http::connect(&self.address).await
                && let Ok((200, _)) = http.request("GET", "/readyz", None, None).await
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the server at {} is not ready", self.address);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Resident memory of a process, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time a process has used so far, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = ProcessStat::read(pid)?;
    Some((stat.user + stat.system) as f64 / clock_ticks())
}

/// CPU time used so far by a process and every process under it, including those that have
/// exited (their time is in their parent's "children" fields once reaped): PostgreSQL's
/// backends, say, which come and go under the postmaster.
pub fn tree_cpu_seconds(root: u32) -> Option<f64> {
    let stats: Vec<ProcessStat> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(ProcessStat::read)
        .collect();
    let mut tree = vec![root];
    let mut ticks = 0;
    let mut found = false;
    while let Some(pid) = tree.pop() {
        for stat in &stats {
            if stat.pid == pid {
                found = true;
                ticks += stat.user + stat.system + stat.children_user + stat.children_system;
            } else if stat.parent == pid {
                tree.push(stat.pid);
            }
        }
    }
    found.then(|| ticks as f64 / clock_ticks())
}

/// The fields of `/proc/PID/stat` that CPU figures need, in clock ticks.
struct ProcessStat {
    pid: u32,
    parent: u32,
    user: u64,
    system: u64,
    children_user: u64,
    children_system: u64,
}

impl ProcessStat {
    fn read(pid: u32) -> Option<ProcessStat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces; the fields after its closing parenthesis do not.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n)?.parse().ok();
        Some(ProcessStat {
            pid,
            parent: field(1)? as u32,
            user: field(11)?,
            system: field(12)?,
            children_user: field(13)?,
            children_system: field(14)?,
        })
    }
}

#[allow(unsafe_code)] // a libc call with no safe wrapper; see SAFETY below
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}
