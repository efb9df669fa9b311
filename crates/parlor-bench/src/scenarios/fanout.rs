//! Fanout: one sender into a group whose every member is connected. First messages one at
//! a time, for the time until the last member has each (p50, p99); then a pipelined burst,
//! for deliveries per second.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use super::{BODY, Seen, classify};
use crate::client::{self, Account, Http};
use crate::report::{CpuMeter, Report, histogram};
use crate::server::Server;

const STALL: Duration = Duration::from_secs(30);

/// Per `seq`: how many members have it, and when the last one got it.
struct Arrivals {
    started: Instant,
    members: usize,
    counts: Vec<AtomicUsize>,
    last_nanos: Vec<AtomicU64>,
    complete: Notify,
}

impl Arrivals {
    fn arrived(&self, seq: u64) {
        let Some(count) = self.counts.get(seq as usize) else {
            return;
        };
        let now = self.started.elapsed().as_nanos() as u64;
        self.last_nanos[seq as usize].fetch_max(now, Ordering::Relaxed);
        if count.fetch_add(1, Ordering::AcqRel) + 1 == self.members {
            self.complete.notify_waiters();
        }
    }

    fn is_complete(&self, seq: u64) -> bool {
        self.counts[seq as usize].load(Ordering::Acquire) >= self.members
    }

    fn last(&self, seq: u64) -> Duration {
        Duration::from_nanos(self.last_nanos[seq as usize].load(Ordering::Relaxed))
    }

    async fn wait_complete(&self, seq: u64) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + STALL;
        while !self.is_complete(seq) {
            let notified = self.complete.notified();
            if self.is_complete(seq) {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!(
                    "message {seq} reached {} of {} members",
                    self.counts[seq as usize].load(Ordering::Acquire),
                    self.members
                );
            }
        }
        Ok(())
    }
}

/// `accounts[0]` sends; all of `accounts` are members and connected.
pub async fn run(
    server: &Server,
    accounts: &[Account],
    one_at_a_time: usize,
    burst: usize,
    out: &Path,
) -> anyhow::Result<Value> {
    let members = accounts.len();
    let mut report = Report::new(&format!("fanout-{members}"));
    let sender = &accounts[0];
    let mut http = Http::connect(&server.address).await?;
    let others: Vec<&str> = accounts[1..].iter().map(|a| a.id.as_str()).collect();
    let body = json!({"kind": "group", "title": format!("fanout {members}"), "members": others});
    let group = http
        .expect(
            201,
            "POST",
            "/api/v1/conversations",
            Some(&sender.token),
            Some(&body),
        )
        .await?["id"]
        .as_str()
        .context("no group id")?
        .to_string();

    let total = one_at_a_time + burst;
    let arrivals = Arc::new(Arrivals {
        started: Instant::now(),
        members,
        counts: (0..=total).map(|_| AtomicUsize::new(0)).collect(),
        last_nanos: (0..=total).map(|_| AtomicU64::new(0)).collect(),
        complete: Notify::new(),
    });
    let sockets: Vec<_> = futures::stream::iter(accounts.iter().skip(1))
        .map(|account| client::connect(&server.address, &account.token, None))
        .buffer_unordered(64)
        .collect()
        .await;
    let mut listeners = Vec::with_capacity(members);
    for socket in sockets {
        listeners.push(tokio::spawn(listen(socket?, Arc::clone(&arrivals), total)));
    }
    // The sender is a member too: its own connection receives every message.
    let (mut sink, mut stream) = client::connect(&server.address, &sender.token, None)
        .await?
        .split();
    let sender_arrivals = Arc::clone(&arrivals);
    let sender_listener = tokio::spawn(async move {
        while let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(STALL, stream.next()).await
        {
            match classify(&text) {
                Seen::Message { seq, .. } => sender_arrivals.arrived(seq),
                Seen::Error(error) => eprintln!("fanout sender: {error}"),
                _ => {}
            }
        }
    });

    let cpu = CpuMeter::start(server);
    let mut latencies = histogram();
    for seq in 1..=one_at_a_time as u64 {
        let sent = arrivals.started.elapsed();
        sink.send(client::send_frame(&group, &format!("m{seq}"), BODY))
            .await?;
        arrivals.wait_complete(seq).await?;
        latencies.record((arrivals.last(seq) - sent).as_micros().max(1) as u64)?;
    }
    let burst_started = arrivals.started.elapsed();
    for seq in one_at_a_time + 1..=total {
        sink.feed(client::send_frame(&group, &format!("m{seq}"), BODY))
            .await?;
    }
    sink.flush().await?;
    for seq in one_at_a_time as u64 + 1..=total as u64 {
        arrivals.wait_complete(seq).await?;
    }
    let burst_time = (1 + one_at_a_time as u64..=total as u64)
        .map(|seq| arrivals.last(seq))
        .max()
        .unwrap_or_default()
        .saturating_sub(burst_started);
    cpu.finish(server, &mut report);
    for listener in listeners {
        listener.abort();
    }
    sender_listener.abort();

    report.add("members", "members (all connected)", members as u64);
    report.latency(
        "send_to_last_member",
        &format!("send → last member, {one_at_a_time} messages one at a time"),
        &latencies,
    );
    report.add(
        "burst_messages",
        "burst: messages sent back to back",
        burst as u64,
    );
    report.add(
        "burst_deliveries_per_second",
        "burst: deliveries/s",
        (burst * members) as f64 / burst_time.as_secs_f64(),
    );
    report.finish(out)
}

async fn listen(socket: client::Socket, arrivals: Arc<Arrivals>, total: usize) {
    let (_sink, mut stream) = socket.split();
    let mut seen = 0;
    while seen < total {
        let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(STALL, stream.next()).await
        else {
            return;
        };
        if let Seen::Message { seq, .. } = classify(&text) {
            arrivals.arrived(seq);
            seen += 1;
        }
    }
}
