//! Typed configuration of each role. Values come from `parlor`, which alone reads flags,
//! environment and files; defaults live here, in one place.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use parlor_core::NodeId;

use crate::gateway::Origin;

/// The HTTP + WebSocket gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub node: NodeId,
    /// Origins that may use this server from a browser besides its own
    /// (`https://chat.example`): open a WebSocket, change state.
    pub allowed_origins: Vec<Origin>,
    /// Largest message body, in bytes of UTF-8.
    pub body_bytes_max: usize,
    /// Largest HTTP request body and WebSocket message.
    pub request_bytes_max: usize,
    /// Frames waiting to be written to one connection; a reader slower than this is
    /// disconnected (it catches up from the store when it reconnects). Above the notifier's
    /// batch (512): one batch of a busy conversation arrives at once, and must fit.
    pub connection_frames_queued_max: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// A write to a connection that takes longer than this (the peer stopped reading and
    /// the socket buffer is full) closes the connection.
    pub write_timeout: Duration,
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure` (serve over TLS, or behind a TLS proxy).
    pub cookie_secure: bool,
    /// How often this node renews its registry lease, and for how long.
    pub heartbeat_interval: Duration,
    pub heartbeat_lease: Duration,
    pub limits: LimitsConfig,
    /// Peers besides loopback that may read `/metrics` on this (the clients') port. Through a
    /// balancer nobody may: its peer address is loopback, but the request is a client's.
    pub metrics_allowed: Vec<IpAddr>,
    /// How the listener treats connections: the header deadline and the connection caps.
    pub listener: ListenConfig,
    pub files: FilesConfig,
}

/// Uploads: where they are staged while they arrive, how large one may be, and how much
/// one user's files may take in all.
#[derive(Clone, Debug)]
pub struct FilesConfig {
    /// A directory for uploads in progress: on the data directory's filesystem for the
    /// embedded store (its blobs are then hard links, not copies).
    pub staging_dir: PathBuf,
    pub bytes_max: u64,
    pub quota_bytes: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            staging_dir: std::env::temp_dir().join("parlor-uploads"),
            bytes_max: 25 * 1024 * 1024,
            quota_bytes: 1024 * 1024 * 1024,
        }
    }
}

impl GatewayConfig {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            node: NodeId::new(),
            allowed_origins: Vec::new(),
            body_bytes_max: 16 * 1024,
            request_bytes_max: 128 * 1024,
            connection_frames_queued_max: 2048,
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            cookie_secure: false,
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_lease: Duration::from_secs(25),
            limits: LimitsConfig::default(),
            listener: ListenConfig::default(),
            metrics_allowed: Vec::new(),
            files: FilesConfig::default(),
        }
    }
}

/// The HTTP listener (`listen::serve`), shared by the gateway and the persister's ops port:
/// what an unauthenticated peer may hold open.
#[derive(Clone, Debug)]
pub struct ListenConfig {
    /// A connection must deliver a complete request head this long after it opened, and after
    /// each answered request (so it also bounds idle keep-alive connections).
    pub header_read_timeout: Duration,
    /// Open TCP connections from one address (IPv6: one /64) that is not a trusted proxy;
    /// behind one, open WebSockets per forwarded client address. Above every real client's
    /// needs (`connections_per_user_max` is 32, and a NAT may hide a few users), far below
    /// what would exhaust the process's files.
    pub connections_per_ip_max: usize,
    /// Open connections in all; one more is accepted and closed at once, so that the process
    /// never runs out of files. The binary derives it from the open-file limit.
    pub connections_max: usize,
    /// Load balancers whose `X-Forwarded-For` is believed: behind one, the peer address is
    /// the balancer's, and per-IP limits would throttle every client as one.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            connections_per_ip_max: 256,
            // What a default open-file limit of 1024 leaves after the binary's reserve.
            connections_max: 900,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Rate limits and per-user bounds. A rate is a steady count per second plus a burst.
#[derive(Clone, Debug)]
pub struct LimitsConfig {
    pub sends_per_second_per_user: NonZeroU32,
    pub sends_burst_per_user: NonZeroU32,
    pub requests_per_second_per_ip: NonZeroU32,
    pub requests_burst_per_ip: NonZeroU32,
    /// Register and log in: each costs an Argon2id hash, so they get their own, lower limit.
    pub auth_per_second_per_ip: NonZeroU32,
    pub auth_burst_per_ip: NonZeroU32,
    /// Searches: each ranks every match of its words, so they cost more than other reads.
    pub searches_per_second_per_user: NonZeroU32,
    pub searches_burst_per_user: NonZeroU32,
    pub connections_per_user_max: usize,
    /// Argon2id hashes computed at once (each holds 19 MiB).
    pub password_hashes_concurrent_max: usize,
    /// WebSocket handshakes (session lookup, registration) in progress at once; more wait
    /// their turn briefly, then are answered 503. When a gateway dies its clients all come
    /// back within a second or two: unbounded, their handshakes queued on the store's pool
    /// past its timeout and failed after doing most of the work, and a new gateway
    /// connected ~80 of them a second; refused early, they retry after their backoff.
    pub handshakes_concurrent_max: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let n = |n| NonZeroU32::new(n).expect("non-zero");
        Self {
            sends_per_second_per_user: n(20),
            sends_burst_per_user: n(100),
            requests_per_second_per_ip: n(200),
            requests_burst_per_ip: n(400),
            auth_per_second_per_ip: n(10),
            auth_burst_per_ip: n(30),
            searches_per_second_per_user: n(5),
            searches_burst_per_user: n(20),
            connections_per_user_max: 32,
            password_hashes_concurrent_max: 4,
            handshakes_concurrent_max: 64,
        }
    }
}

/// A queue consumer (persister, notifier).
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    pub batch_max: usize,
    /// Deliveries of one entry before it goes to the dead-letter queue.
    pub attempts_max: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long to keep draining the queue after shutdown was signalled.
    pub drain_timeout: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            batch_max: 512,
            attempts_max: 10,
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(5),
        }
    }
}
