//! Configuration: flags > `PARLOR_*` environment > TOML file > defaults, resolved here once
//! into the typed configs of `parlor-server`. Nothing below this crate reads the environment.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use parlor_server::config::{ConsumerConfig, GatewayConfig, LimitsConfig};
use parlor_server::janitor::JanitorConfig;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "parlor-data";

/// The settings of `parlor serve`, as given; every one optional so that layers can merge.
#[derive(Args, Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ServeSettings {
    /// Address to listen on.
    #[arg(long, env = "PARLOR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the write-ahead logs and the database.
    #[arg(long, env = "PARLOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Extra origins (`https://chat.example`, comma-separated) that browsers may use this
    /// server from, besides its own: open WebSockets, log in, change state.
    #[arg(long, env = "PARLOR_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Mark the session cookie Secure (when served over TLS).
    #[arg(long, env = "PARLOR_COOKIE_SECURE")]
    pub cookie_secure: Option<bool>,
    /// Largest message body in bytes.
    #[arg(long, env = "PARLOR_BODY_BYTES_MAX")]
    pub body_bytes_max: Option<usize>,
    #[arg(long, env = "PARLOR_SENDS_PER_SECOND_PER_USER")]
    pub sends_per_second_per_user: Option<NonZeroU32>,
    #[arg(long, env = "PARLOR_SENDS_BURST_PER_USER")]
    pub sends_burst_per_user: Option<NonZeroU32>,
    #[arg(long, env = "PARLOR_REQUESTS_PER_SECOND_PER_IP")]
    pub requests_per_second_per_ip: Option<NonZeroU32>,
    #[arg(long, env = "PARLOR_REQUESTS_BURST_PER_IP")]
    pub requests_burst_per_ip: Option<NonZeroU32>,
    #[arg(long, env = "PARLOR_AUTH_PER_SECOND_PER_IP")]
    pub auth_per_second_per_ip: Option<NonZeroU32>,
    #[arg(long, env = "PARLOR_AUTH_BURST_PER_IP")]
    pub auth_burst_per_ip: Option<NonZeroU32>,
    /// Largest file a user may upload, in bytes.
    #[arg(long, env = "PARLOR_FILE_BYTES_MAX")]
    pub file_bytes_max: Option<u64>,
    /// How many bytes one user's files may take in all.
    #[arg(long, env = "PARLOR_FILE_QUOTA_BYTES")]
    pub file_quota_bytes: Option<u64>,
    /// An upload not attached to a message within this many seconds is removed.
    #[arg(long, env = "PARLOR_UPLOAD_TTL_SECS")]
    pub upload_ttl_secs: Option<u64>,
    /// How often the janitor removes stale uploads and deletes unused blobs, in seconds.
    #[arg(long, env = "PARLOR_JANITOR_INTERVAL_SECS")]
    pub janitor_interval_secs: Option<u64>,
    /// How long a blob stays unused before the janitor deletes it, in seconds.
    #[arg(long, env = "PARLOR_BLOB_GRACE_SECS")]
    pub blob_grace_secs: Option<u64>,
    #[arg(long, env = "PARLOR_SEARCHES_PER_SECOND_PER_USER")]
    pub searches_per_second_per_user: Option<NonZeroU32>,
    #[arg(long, env = "PARLOR_SEARCHES_BURST_PER_USER")]
    pub searches_burst_per_user: Option<NonZeroU32>,
    /// Deliveries of one queue entry before it goes to the dead-letter queue.
    #[arg(long, env = "PARLOR_ATTEMPTS_MAX")]
    pub attempts_max: Option<u32>,
    /// First retry delay in milliseconds; doubles per attempt.
    #[arg(long, env = "PARLOR_RETRY_BASE_MS")]
    pub retry_base_ms: Option<u64>,
    /// Close connections that send nothing for this many seconds.
    #[arg(long, env = "PARLOR_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Sessions expire this many seconds after login.
    #[arg(long, env = "PARLOR_SESSION_TTL_SECS")]
    pub session_ttl_secs: Option<u64>,
    /// Load balancers (IP addresses, comma-separated) whose X-Forwarded-For names the client.
    #[arg(long, env = "PARLOR_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<IpAddr>>,
    /// Addresses (comma-separated) besides loopback that may read /metrics on the client port.
    #[arg(long, env = "PARLOR_METRICS_ALLOWED", value_delimiter = ',')]
    pub metrics_allowed: Option<Vec<IpAddr>>,
    /// Close connections that have not sent a complete request head this many seconds after
    /// opening or after their last answer.
    #[arg(long, env = "PARLOR_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Open connections per client address (IPv6: per /64); behind --trusted-proxies, open
    /// WebSockets per forwarded address.
    #[arg(long, env = "PARLOR_CONNECTIONS_PER_IP_MAX")]
    pub connections_per_ip_max: Option<usize>,
    /// Open connections in all (default: the open-file limit less a reserve for data files).
    #[arg(long, env = "PARLOR_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
}

impl ServeSettings {
    /// Layers `self` (flags and environment) over `file`.
    pub fn over(self, file: ServeSettings) -> ServeSettings {
        macro_rules! pick {
            ($($field:ident),*) => { ServeSettings { $($field: self.$field.or(file.$field)),* } };
        }
        pick!(
            listen,
            data_dir,
            allowed_origins,
            cookie_secure,
            body_bytes_max,
            sends_per_second_per_user,
            sends_burst_per_user,
            requests_per_second_per_ip,
            requests_burst_per_ip,
            auth_per_second_per_ip,
            auth_burst_per_ip,
            searches_per_second_per_user,
            searches_burst_per_user,
            file_bytes_max,
            file_quota_bytes,
            upload_ttl_secs,
            janitor_interval_secs,
            blob_grace_secs,
            attempts_max,
            retry_base_ms,
            idle_timeout_secs,
            session_ttl_secs,
            trusted_proxies,
            metrics_allowed,
            header_read_timeout_secs,
            connections_per_ip_max,
            connections_max
        )
    }

    pub fn load_file(path: &Path) -> anyhow::Result<ServeSettings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("bad config file {}", path.display()))
    }
}

/// Everything `serve` runs with, validated.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub gateway: GatewayConfig,
    pub persister: ConsumerConfig,
    pub notifier: ConsumerConfig,
    pub janitor: JanitorConfig,
}

impl ServeConfig {
    pub fn resolve(settings: ServeSettings) -> anyhow::Result<ServeConfig> {
        let listen = settings
            .listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
        let mut gateway = GatewayConfig::new(listen);
        let defaults = LimitsConfig::default();
        gateway.limits = LimitsConfig {
            sends_per_second_per_user: settings
                .sends_per_second_per_user
                .unwrap_or(defaults.sends_per_second_per_user),
            sends_burst_per_user: settings
                .sends_burst_per_user
                .unwrap_or(defaults.sends_burst_per_user),
            requests_per_second_per_ip: settings
                .requests_per_second_per_ip
                .unwrap_or(defaults.requests_per_second_per_ip),
            requests_burst_per_ip: settings
                .requests_burst_per_ip
                .unwrap_or(defaults.requests_burst_per_ip),
            auth_per_second_per_ip: settings
                .auth_per_second_per_ip
                .unwrap_or(defaults.auth_per_second_per_ip),
            auth_burst_per_ip: settings
                .auth_burst_per_ip
                .unwrap_or(defaults.auth_burst_per_ip),
            searches_per_second_per_user: settings
                .searches_per_second_per_user
                .unwrap_or(defaults.searches_per_second_per_user),
            searches_burst_per_user: settings
                .searches_burst_per_user
                .unwrap_or(defaults.searches_burst_per_user),
            ..defaults
        };
        for origin in settings.allowed_origins.unwrap_or_default() {
            if origin.is_empty() {
                continue;
            }
            let parsed = parlor_server::gateway::Origin::parse(&origin).with_context(|| {
                format!("allowed origin {origin:?} is not an origin like https://chat.example")
            })?;
            gateway.allowed_origins.push(parsed);
        }
        gateway.metrics_allowed = settings.metrics_allowed.unwrap_or_default();
        gateway.cookie_secure = settings.cookie_secure.unwrap_or(false);
        gateway.listener.trusted_proxies = settings.trusted_proxies.unwrap_or_default();
        if let Some(secs) = settings.header_read_timeout_secs {
            if secs == 0 {
                bail!("header_read_timeout_secs must be positive");
            }
            gateway.listener.header_read_timeout = Duration::from_secs(secs);
        }
        if let Some(max) = settings.connections_per_ip_max {
            if max == 0 {
                bail!("connections_per_ip_max must be positive");
            }
            gateway.listener.connections_per_ip_max = max;
        }
        gateway.listener.connections_max = match settings.connections_max {
            Some(0) => bail!("connections_max must be positive"),
            Some(max) => max,
            None => connections_max_for_open_files(open_files_limit())
                .unwrap_or(gateway.listener.connections_max),
        };
        if let Some(bytes) = settings.body_bytes_max {
            if bytes == 0 || bytes > 1024 * 1024 {
                bail!("body_bytes_max must be between 1 and 1048576");
            }
            gateway.body_bytes_max = bytes;
            gateway.request_bytes_max = gateway.request_bytes_max.max(bytes * 8);
        }
        if let Some(bytes) = settings.file_bytes_max {
            if bytes == 0 {
                bail!("file_bytes_max must be positive");
            }
            gateway.files.bytes_max = bytes;
        }
        if let Some(bytes) = settings.file_quota_bytes {
            gateway.files.quota_bytes = bytes;
        }
        let mut janitor = JanitorConfig::default();
        if let Some(secs) = settings.upload_ttl_secs {
            janitor.upload_ttl = Duration::from_secs(secs);
        }
        if let Some(secs) = settings.janitor_interval_secs {
            if secs == 0 {
                bail!("janitor_interval_secs must be positive");
            }
            janitor.interval = Duration::from_secs(secs);
        }
        if let Some(secs) = settings.blob_grace_secs {
            janitor.unused_grace = Duration::from_secs(secs);
        }
        if let Some(secs) = settings.idle_timeout_secs {
            if secs == 0 {
                bail!("idle_timeout_secs must be positive");
            }
            gateway.idle_timeout = Duration::from_secs(secs);
        }
        if let Some(secs) = settings.session_ttl_secs {
            if secs == 0 {
                bail!("session_ttl_secs must be positive");
            }
            gateway.session_ttl = Duration::from_secs(secs);
        }
        let mut consumer = ConsumerConfig::default();
        if let Some(attempts) = settings.attempts_max {
            if attempts == 0 {
                bail!("attempts_max must be positive");
            }
            consumer.attempts_max = attempts;
        }
        if let Some(ms) = settings.retry_base_ms {
            consumer.retry_base = Duration::from_millis(ms.max(1));
        }
        Ok(ServeConfig {
            data_dir: settings
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            gateway,
            persister: consumer.clone(),
            notifier: consumer,
            janitor,
        })
    }
}

/// This process's soft limit on open files, if the system tells.
#[allow(unsafe_code)] // a libc call with no safe wrapper; see SAFETY below
fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some(limit.rlim_cur)
}

/// Connections to hold at most under an open-file limit: the limit less a reserve for
/// everything else the process opens (WAL segments, SQLite and its journal, the log, the
/// sockets to NATS and PostgreSQL, a pool). Those are tens of files, so the reserve is 10 %
/// of the limit but at least 64 (a small limit still leaves room) and at most 4096 (a large
/// one is not wasted). Over the cap a connection is accepted and closed at once, so the
/// process never reaches the limit and keeps answering the clients it holds.
fn connections_max_for_open_files(limit: Option<u64>) -> Option<usize> {
    const RESERVE_MIN: u64 = 64;
    const RESERVE_MAX: u64 = 4096;
    let limit = limit?;
    let reserve = (limit / 10).clamp(RESERVE_MIN, RESERVE_MAX);
    // RLIM_INFINITY is u64::MAX; a cap beyond usize means no cap worth counting.
    let connections = limit.saturating_sub(reserve).max(1);
    Some(usize::try_from(connections).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_max_leaves_a_reserve_of_ten_percent_between_64_and_4096_files() {
        assert_eq!(connections_max_for_open_files(Some(256)), Some(192));
        assert_eq!(connections_max_for_open_files(Some(1024)), Some(922));
        assert_eq!(connections_max_for_open_files(Some(20_000)), Some(18_000));
        assert_eq!(
            connections_max_for_open_files(Some(1_048_576)),
            Some(1_044_480)
        );
        assert_eq!(connections_max_for_open_files(Some(10)), Some(1));
        assert_eq!(connections_max_for_open_files(None), None);
    }
}
