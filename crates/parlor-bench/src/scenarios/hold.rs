//! The generator process of the connections scenario (this binary's hidden `hold`
//! command): keeps one WebSocket per token open the way the web client does
//! (web/src/lib/socket/socket.ts): a ping every 20 s, and after a lost or refused
//! connection a reconnect after a delay with exponential backoff and full jitter.
//!
//! Protocol with the parent, line by line: it writes the tokens on stdin, then an empty
//! line, and keeps stdin open; closing it ends the process. The process prints
//! `status <connected> <connects> <failures> <drops>` every 250 ms (connects: successful
//! handshakes so far; failures: attempts that did not reach `hello`; drops: held
//! connections that ended).

use std::io::{BufRead, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::client;

/// The web client's ping interval; the server closes sockets idle for about 60 s.
const PING_INTERVAL: Duration = Duration::from_secs(20);
/// The web client's backoff: 500 ms initially, at most 30 s.
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An attempt that has no `hello` by then failed (a browser gives up later, but a
/// generator must not hold a hung attempt forever).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once per process while the first connections are made, so that
/// the ramp measures the server, not a generator drowning in its own attempts.
/// Reconnects are not capped: they are spread by their backoff alone, as a browser's are.
const FIRST_CONNECTS_CONCURRENT_MAX: usize = 128;
const STATUS_INTERVAL: Duration = Duration::from_millis(250);

/// The delay before reconnect attempt `attempt` (0-based), as the web client's
/// `backoffDelayMs`: uniform in [initial/2, min(max, initial·2^attempt)], `random` in [0, 1).
pub fn backoff_delay(attempt: u32, random: f64, initial: Duration, max: Duration) -> Duration {
    let ceiling = max.min(initial.saturating_mul(1 << attempt.min(30)));
    let floor = (initial / 2).min(ceiling);
    floor + (ceiling - floor).mul_f64(random.clamp(0.0, 1.0))
}

/// SplitMix64: enough randomness for jitter, without a dependency.
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Jitter {
        Jitter(seed)
    }

    /// Uniform in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Default)]
struct Counts {
    connected: AtomicU64,
    connects: AtomicU64,
    failures: AtomicU64,
    drops: AtomicU64,
}

pub async fn run(address: &str, source: IpAddr) -> anyhow::Result<()> {
    let mut tokens = Vec::new();
    let mut stdin = std::io::stdin().lock();
    loop {
        let mut line = String::new();
        if stdin.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        tokens.push(line.trim().to_string());
    }
    drop(stdin);
    let counts = Arc::new(Counts::default());
    let first = Arc::new(Semaphore::new(FIRST_CONNECTS_CONCURRENT_MAX));
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    for (index, token) in tokens.into_iter().enumerate() {
        let jitter = Jitter::new(seed.wrapping_add(index as u64 * 0x1000_0001));
        tokio::spawn(keep_open(
            address.to_string(),
            token,
            source,
            jitter,
            Arc::clone(&counts),
            Arc::clone(&first),
        ));
    }
    // Until the parent closes our stdin.
    let (closed_sender, mut closed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut rest);
        let _ = closed_sender.send(());
    });
    let mut status = tokio::time::interval(STATUS_INTERVAL);
    loop {
        tokio::select! {
            _ = status.tick() => {
                let mut stdout = std::io::stdout().lock();
                writeln!(
                    stdout,
                    "status {} {} {} {}",
                    counts.connected.load(Ordering::Relaxed),
                    counts.connects.load(Ordering::Relaxed),
                    counts.failures.load(Ordering::Relaxed),
                    counts.drops.load(Ordering::Relaxed),
                )?;
                stdout.flush()?;
            }
            _ = &mut closed => return Ok(()),
        }
    }
}

/// One client: connects, holds the socket while pinging, and reconnects after any loss.
async fn keep_open(
    address: String,
    token: String,
    source: IpAddr,
    mut jitter: Jitter,
    counts: Arc<Counts>,
    first: Arc<Semaphore>,
) {
    let attempt_once = || {
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            client::connect(&address, &token, Some(source)),
        )
    };
    let permit = first.acquire_owned().await.ok();
    let mut connected = attempt_once().await;
    drop(permit);
    let mut attempt = 0;
    loop {
        match connected {
            Ok(Ok(mut socket)) => {
                // As the web client: once the server spoke, the backoff starts over.
                attempt = 0;
                counts.connects.fetch_add(1, Ordering::Relaxed);
                counts.connected.fetch_add(1, Ordering::Relaxed);
                hold(&mut socket, &mut jitter).await;
                counts.connected.fetch_sub(1, Ordering::Relaxed);
                counts.drops.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                counts.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        let delay = backoff_delay(attempt, jitter.next(), BACKOFF_INITIAL, BACKOFF_MAX);
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
        connected = attempt_once().await;
    }
}

/// Reads (and drops) frames and pings every `PING_INTERVAL`, the first at a random point
/// of it so that the pings of many clients spread out; returns when the socket ends.
async fn hold(socket: &mut client::Socket, jitter: &mut Jitter) {
    let ping = Message::Text(r#"{"type":"ping"}"#.into());
    let mut next_ping =
        tokio::time::Instant::now() + PING_INTERVAL.mul_f64(jitter.next().max(0.05));
    loop {
        tokio::select! {
            frame = socket.next() => match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = tokio::time::sleep_until(next_ping) => {
                if socket.send(ping.clone()).await.is_err() {
                    return;
                }
                next_ping += PING_INTERVAL;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_is_the_web_clients_full_jitter() {
        let delay = |attempt, random| backoff_delay(attempt, random, 500 * MS, 30_000 * MS);
        // The same bounds as web/src/lib/socket/socket.test.ts's backoffDelayMs.
        assert_eq!(delay(0, 0.0), 250 * MS);
        assert_eq!(delay(0, 1.0), 500 * MS);
        assert_eq!(delay(3, 1.0), 4_000 * MS);
        assert_eq!(delay(3, 0.0), 250 * MS);
        assert_eq!(delay(10, 1.0), 30_000 * MS);
        assert_eq!(delay(u32::MAX, 0.5), 250 * MS + (29_750 * MS) / 2);
    }

    #[test]
    fn jitter_is_uniform_enough() {
        let mut jitter = Jitter::new(7);
        let draws: Vec<f64> = (0..10_000).map(|_| jitter.next()).collect();
        assert!(draws.iter().all(|draw| (0.0..1.0).contains(draw)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }
}
