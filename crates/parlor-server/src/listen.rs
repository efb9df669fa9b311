//! The HTTP/1.1 accept loop of every Parlor listener (the gateway, the persister's ops port).
//!
//! `axum::serve` gives hyper no timer, so a peer that opens a connection and sends nothing, or
//! dribbles a header, holds a socket forever; enough of them exhaust the process's files and
//! nobody is answered. Here every connection must deliver a request head within
//! `header_read_timeout` (after opening and after each answered request), connections are
//! capped per address and in all, and accept errors back off instead of spinning.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::config::ListenConfig;
use crate::metrics as m;

/// How long requests in flight may take to finish once shutdown began. Upgraded WebSockets
/// are not waited for: their owner closes them (the gateway's hub).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The first pause after a failed accept; it doubles up to `ACCEPT_BACKOFF_MAX`.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Repeated warnings (accept errors, refused connections) are logged at most this often.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and lets
/// requests in flight finish (for at most `DRAIN_TIMEOUT`). Each request carries the peer's
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ListenConfig,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let slots = ConnectionSlots::new(&config);
    // Connections hold a receiver: shutdown sends on it, and the sender sees when all are gone.
    let (draining, drained) = watch::channel(false);
    let mut accept_failures = AcceptBackoff::default();
    let mut refusals = Throttled::default();
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                accept_failures.reset();
                accepted
            }
            // The peer gave up before we took its connection: nothing is wrong here.
            Err(error) if is_connection_error(&error) => continue,
            // Out of files, buffers or memory: retrying at once would spin on the same error.
            Err(error) => {
                let pause = accept_failures.failed(&error);
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let slot = match slots.take(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                // Dropping the stream closes it: a refused peer holds nothing.
                drop(stream);
                metrics::counter!(m::RATE_LIMITED, "what" => refusal.metric()).increment(1);
                if refusals.due() {
                    tracing::warn!(%peer, reason = refusal.metric(), "refused a connection");
                }
                continue;
            }
        };
        // Frames are small and latency matters more than packet count: without this, Nagle's
        // algorithm held `accepted` frames back ~10 ms behind the previous unacknowledged one.
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(CountedStream {
            stream,
            _slot: slot,
        });
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request.map(Body::new)
            },
        ));
        let connection = http.serve_connection(io, service).with_upgrades();
        let mut draining = draining.subscribe();
        tokio::spawn(async move {
            let mut connection = pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                }
                () = async { let _ = draining.wait_for(|draining| *draining).await; } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(draining);
        });
    }
    // Refuse new connections at once (a balancer moves on) rather than queue them unanswered.
    drop(listener);
    drop(drained);
    draining.send_replace(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, draining.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            open = draining.receiver_count(),
            "requests still in flight after the drain timeout; dropping them"
        );
    }
}

/// Errors of one connection, not of the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The pause after each failed accept, and a warning at most once per `WARN_INTERVAL`.
#[derive(Default)]
struct AcceptBackoff {
    pause: Option<Duration>,
    warnings: Throttled,
}

impl AcceptBackoff {
    fn failed(&mut self, error: &io::Error) -> Duration {
        let pause = match self.pause {
            None => ACCEPT_BACKOFF_MIN,
            Some(pause) => (pause * 2).min(ACCEPT_BACKOFF_MAX),
        };
        self.pause = Some(pause);
        if self.warnings.due() {
            tracing::warn!(%error, pause_ms = pause.as_millis() as u64, "accept error; backing off");
        }
        pause
    }

    fn reset(&mut self) {
        self.pause = None;
    }
}

/// Says yes at most once per `WARN_INTERVAL`, so that a flood cannot flood the log too.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
}

impl Throttled {
    fn due(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// Why a connection was closed at once.
enum Refusal {
    TooManyInAll,
    TooManyFromAddress,
}

impl Refusal {
    fn metric(&self) -> &'static str {
        match self {
            Refusal::TooManyInAll => "connections",
            Refusal::TooManyFromAddress => "connections_per_ip",
        }
    }
}

/// The open connections, in all and per address.
struct ConnectionSlots {
    open: Arc<AtomicUsize>,
    open_max: usize,
    per_address: Arc<ConnectionsPerAddress>,
    trusted_proxies: Vec<IpAddr>,
}

impl ConnectionSlots {
    fn new(config: &ListenConfig) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            open_max: config.connections_max,
            per_address: ConnectionsPerAddress::new(config.connections_per_ip_max),
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }

    fn take(&self, peer: IpAddr) -> Result<ConnectionSlot, Refusal> {
        // Only the accept loop adds, so a load-then-add cannot overshoot.
        if self.open.load(Ordering::Acquire) >= self.open_max {
            return Err(Refusal::TooManyInAll);
        }
        // A trusted proxy carries many clients; they are counted by forwarded address later
        // (the gateway's WebSockets).
        let address = if self.trusted_proxies.contains(&peer) {
            None
        } else {
            Some(
                self.per_address
                    .take(peer)
                    .ok_or(Refusal::TooManyFromAddress)?,
            )
        };
        self.open.fetch_add(1, Ordering::AcqRel);
        Ok(ConnectionSlot {
            open: Arc::clone(&self.open),
            _address: address,
        })
    }
}

/// One open connection in the count; given back when dropped.
struct ConnectionSlot {
    open: Arc<AtomicUsize>,
    _address: Option<AddressSlot>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Open connections per client address, capped. An IPv6 client is counted by its /64, since
/// one host is given a whole /64 and may pick any address in it.
pub(crate) struct ConnectionsPerAddress {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionsPerAddress {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection of `address`, unless it holds `max` already.
    pub(crate) fn take(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
        let key = address_key(address);
        // Entries leave the map at zero, so it holds at most one per open connection.
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counter: Arc::clone(self),
            key,
        })
    }
}

/// One connection of one address in the count; given back when dropped.
pub(crate) struct AddressSlot {
    counter: Arc<ConnectionsPerAddress>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self
            .counter
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What connections of `address` are counted under: IPv4 as is (also when written as
/// IPv4-mapped IPv6), IPv6 by its /64 prefix.
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

/// A TCP stream that holds its connection's slot for as long as it is open, also after an
/// upgrade to WebSocket (the upgraded socket owns this stream).
struct CountedStream {
    stream: TcpStream,
    _slot: ConnectionSlot,
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn ipv6_addresses_of_one_slash_64_count_as_one_client() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            address_key(ip("2001:db8:1:2:ffff:1:2:3"))
        );
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_its_ipv4_address() {
        assert_eq!(address_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn an_address_over_its_cap_is_refused_until_a_slot_is_given_back() {
        let counter = ConnectionsPerAddress::new(2);
        let first = counter.take(ip("10.0.0.1")).expect("first");
        let _second = counter.take(ip("10.0.0.1")).expect("second");
        assert!(counter.take(ip("10.0.0.1")).is_none());
        assert!(counter.take(ip("10.0.0.2")).is_some(), "another address");
        drop(first);
        assert!(counter.take(ip("10.0.0.1")).is_some());
    }

    #[test]
    fn given_back_slots_leave_no_entry_behind() {
        let counter = ConnectionsPerAddress::new(1);
        drop(counter.take(ip("10.0.0.1")));
        assert!(counter.open.lock().expect("not poisoned").is_empty());
    }

    #[test]
    fn accept_backoff_doubles_to_its_ceiling_and_resets_on_success() {
        let error = io::Error::other("too many open files");
        let mut backoff = AcceptBackoff::default();
        assert_eq!(backoff.failed(&error), ACCEPT_BACKOFF_MIN);
        assert_eq!(backoff.failed(&error), ACCEPT_BACKOFF_MIN * 2);
        for _ in 0..20 {
            backoff.failed(&error);
        }
        assert_eq!(backoff.failed(&error), ACCEPT_BACKOFF_MAX);
        backoff.reset();
        assert_eq!(backoff.failed(&error), ACCEPT_BACKOFF_MIN);
    }
}
