//! The system tests' names for what `parlor-testkit` provides: `Server` is this crate's
//! `parlor` binary started with limits high enough for tests; `Http`, `Response` and `Ws`
//! are testkit's protocol client.

use std::ops::{Deref, DerefMut};
use std::path::Path;

pub use parlor_testkit::client::{Http, Response, Ws};
use parlor_testkit::process::ParlorProcess;

pub const BIN: &str = env!("CARGO_BIN_EXE_parlor");

/// Generous limits through the environment, so that a test's flags still win.
const GENEROUS: &[(&str, &str)] = &[
    ("PARLOR_AUTH_PER_SECOND_PER_IP", "1000"),
    ("PARLOR_AUTH_BURST_PER_IP", "1000"),
    ("PARLOR_REQUESTS_PER_SECOND_PER_IP", "100000"),
    ("PARLOR_REQUESTS_BURST_PER_IP", "100000"),
    ("PARLOR_SENDS_PER_SECOND_PER_USER", "100000"),
    ("PARLOR_SENDS_BURST_PER_USER", "100000"),
    ("PARLOR_SEARCHES_PER_SECOND_PER_USER", "100000"),
    ("PARLOR_SEARCHES_BURST_PER_USER", "100000"),
    // Every test client connects from 127.0.0.1.
    ("PARLOR_CONNECTIONS_PER_IP_MAX", "100000"),
];

/// A running `parlor …` (a `ParlorProcess`: `child`, `address`, `kill`, `http`); killed
/// (`SIGKILL`) when dropped.
pub struct Server(ParlorProcess);

impl Server {
    /// Starts a server on a fresh port with limits high enough for tests, plus `extra`
    /// flags and `env`.
    pub fn start(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_with_open_files(data_dir, extra, env, None)
    }

    /// Like `start`, with at most `open_files_max` open files (`ulimit -n`) if given.
    pub fn start_with_open_files(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        open_files_max: Option<u64>,
    ) -> Server {
        let data_dir = data_dir.to_str().expect("a UTF-8 path");
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir];
        args.extend_from_slice(extra);
        Self::spawn_with_open_files(&args, env, open_files_max)
    }

    /// Like `start`, run by `wrapper` (a program and its arguments, such as strace's), which
    /// gets the parlor command line after them. `child` is then the wrapper.
    pub fn start_wrapped(wrapper: &[&str], data_dir: &Path) -> Server {
        let data_dir = data_dir.to_str().expect("a UTF-8 path");
        let (program, wrapper_args) = wrapper.split_first().expect("a wrapper program");
        let mut args = wrapper_args.to_vec();
        args.extend([
            BIN,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir,
        ]);
        let process = ParlorProcess::spawn(Path::new(program), &args, GENEROUS, None)
            .unwrap_or_else(|error| panic!("start parlor under {program}: {error}"));
        Server(process)
    }

    /// Runs `parlor ARGS…` (a command that prints its listening address) with the same
    /// generous limits.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn_with_open_files(args, env, None)
    }

    fn spawn_with_open_files(
        args: &[&str],
        env: &[(&str, &str)],
        open_files_max: Option<u64>,
    ) -> Server {
        let env: Vec<(&str, &str)> = GENEROUS.iter().chain(env).copied().collect();
        let process = ParlorProcess::spawn(Path::new(BIN), args, &env, open_files_max)
            .unwrap_or_else(|error| panic!("start parlor: {error}"));
        Server(process)
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.0.terminate().expect("SIGTERM parlor and wait")
    }
}

impl Deref for Server {
    type Target = ParlorProcess;

    fn deref(&self) -> &ParlorProcess {
        &self.0
    }
}

impl DerefMut for Server {
    fn deref_mut(&mut self) -> &mut ParlorProcess {
        &mut self.0
    }
}

/// The environment that points a cluster or AWS process at the S3 emulator of
/// `scripts/services` (ministack), with blobs under a prefix of the test's own.
pub fn s3_env(prefix: &str) -> Vec<(String, String)> {
    let endpoint = std::env::var("PARLOR_TEST_S3_URL").unwrap_or_else(|_| {
        panic!(
            "PARLOR_TEST_S3_URL is not set: {}",
            parlor_testkit::process::SERVICES_HINT
        )
    });
    [
        ("PARLOR_S3_ENDPOINT", endpoint.as_str()),
        ("PARLOR_S3_BUCKET", "parlor-it"),
        ("PARLOR_S3_PREFIX", prefix),
        ("PARLOR_S3_PATH_STYLE", "true"),
        ("PARLOR_S3_CREATE_BUCKET", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect()
}
