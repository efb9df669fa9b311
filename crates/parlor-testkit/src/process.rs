//! Processes that tests and the bench start: the `parlor` binary (`ParlorProcess`), a
//! nats-server (`NatsServer`) and a PostgreSQL server (`PostgresServer`) of their own. Each is
//! killed when dropped.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::Http;

/// What to do when a program the tests need is missing.
pub const SERVICES_HINT: &str = "run `eval \"$(scripts/services up)\"` first (scripts/test does)";

/// A running `parlor …` that printed `parlor listening on http://ADDRESS`; killed
/// (`SIGKILL`) when dropped.
pub struct ParlorProcess {
    pub child: Child,
    /// Where it listens (`IP:PORT`).
    pub address: String,
}

impl ParlorProcess {
    /// Runs `binary ARGS…` with `PARLOR_LOG=warn` and then `env`, at most `open_files_max`
    /// open files (`ulimit -n`) if given, and waits for its listening line. Its stdout is
    /// drained from then on, so it never blocks on a full pipe; its stderr is ours.
    #[allow(unsafe_code)] // a libc call with no safe wrapper; see SAFETY below
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(
        binary: &Path,
        args: &[S],
        env: &[(&str, &str)],
        open_files_max: Option<u64>,
    ) -> std::io::Result<ParlorProcess> {
        let mut command = Command::new(binary);
        command
            .args(args)
            .env("PARLOR_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(open_files_max) = open_files_max {
            let limit = libc::rlimit {
                rlim_cur: open_files_max,
                rlim_max: open_files_max,
            };
            // SAFETY: between fork and exec only async-signal-safe calls may run, and
            // setrlimit is one; it only reads the struct we pass.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!("cannot start {}: {error}", binary.display()),
            )
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::other(format!(
                    "{} exited before it listened",
                    binary.display()
                )));
            };
            if let Some(url) = line?.strip_prefix("parlor listening on http://") {
                break url.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(ParlorProcess { child, address })
    }

    /// `SIGKILL`, as a crash would, and waits; does nothing once it has exited.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `SIGTERM`, then waits for it to exit.
    #[allow(unsafe_code)] // a libc call with no safe wrapper; see SAFETY below
    pub fn terminate(&mut self) -> std::io::Result<ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid, which stays ours until we wait for it.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.child.wait()
    }

    /// `SIGSTOP`: the process stops where it is, as in a long pause, until `resume`.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// `SIGCONT` after `pause`.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    #[allow(unsafe_code)] // a libc call with no safe wrapper; see SAFETY below
    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid, which stays ours until we wait for it.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            sent,
            0,
            "signal {signal} to {pid}: {}",
            std::io::Error::last_os_error()
        );
    }

    /// A client of its HTTP API.
    pub fn http(&self) -> Http {
        Http {
            address: self.address.clone(),
        }
    }
}

impl Drop for ParlorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free `127.0.0.1:PORT` (free when asked: another process may take it before us).
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").to_string()
}

/// Asks `ready` every `every_ms` until it says yes; panics with `failure` after `within_s`.
async fn wait_until(
    failure: &str,
    within_s: u64,
    every_ms: u64,
    mut ready: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(within_s);
    while !ready().await {
        assert!(Instant::now() < deadline, "{failure}");
        tokio::time::sleep(Duration::from_millis(every_ms)).await;
    }
}

/// The path in `variable` (set by `scripts/services up`), or a panic that says so.
fn program(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| panic!("{variable} is not set: {SERVICES_HINT}"))
}

/// A nats-server of the caller's own (`PARLOR_TEST_NATS_SERVER`), with JetStream in a temp
/// dir and `sync_interval: always` as in production, so that killing it loses nothing it
/// acknowledged. Stopped and started again on the same port and store.
pub struct NatsServer {
    pub url: String,
    monitor: String,
    config: PathBuf,
    process: Option<Child>,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Writes its configuration and starts it; returns once JetStream is healthy.
    pub async fn start() -> NatsServer {
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
        let mut nats = NatsServer {
            url: format!("nats://{listen}"),
            monitor,
            config,
            process: None,
            _dir: dir,
        };
        nats.run().await;
        nats
    }

    /// Starts it (again); returns once JetStream is healthy.
    pub async fn run(&mut self) {
        let process = Command::new(program("PARLOR_TEST_NATS_SERVER"))
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server ({e}): {SERVICES_HINT}"));
        self.process = Some(process);
        let monitor = Http {
            address: self.monitor.clone(),
        };
        wait_until("nats-server did not start", 20, 50, async || {
            tokio::net::TcpStream::connect(&monitor.address)
                .await
                .is_ok()
                && monitor
                    .raw("GET", "/healthz?js-enabled-only=true", &[], b"")
                    .await
                    .status
                    == 200
        })
        .await;
    }

    /// `kill -9`: every acknowledged publish is on disk already.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PostgreSQL server of the caller's own (`PARLOR_TEST_PG_BIN`: initdb in a temp dir), with
/// fsync and synchronous_commit on. Run as the `postgres` user when the tests run as root
/// (PostgreSQL refuses root). Stopped and started again on the same port and data.
pub struct PostgresServer {
    /// The `postgres` database as its superuser: where a test creates its own.
    pub admin_url: String,
    port: String,
    data: PathBuf,
    process: Option<Child>,
    _dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Creates a cluster and starts it; returns once it accepts connections.
    pub async fn start() -> PostgresServer {
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
        let mut postgres = PostgresServer {
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            data,
            process: None,
            _dir: dir,
        };
        postgres.run().await;
        postgres
    }

    /// Starts it (again); returns once it accepts connections.
    pub async fn run(&mut self) {
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
        wait_until("postgres did not start", 30, 100, async || {
            Command::new("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port])
                .status()
                .is_ok_and(|status| status.success())
        })
        .await;
    }

    /// Immediate shutdown (SIGQUIT): no checkpoint, crash recovery at the next start.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &process.id().to_string()])
                .status();
            let _ = process.wait();
        }
    }
}

impl Drop for PostgresServer {
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
