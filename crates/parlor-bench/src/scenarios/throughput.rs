//! 1:1 throughput: P pairs, each sender keeping a window of sends in flight; accepted/s,
//! stored/s and delivered/s, then a check that every accepted message was delivered exactly
//! once and in order.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{BODY, Seen, classify, index_of};
use crate::client::{self, Http};
use crate::report::{CpuMeter, Report};
use crate::server::Server;

/// No frame for this long means the run is stuck.
const STALL: Duration = Duration::from_secs(20);

pub async fn run(
    server: &Server,
    pairs: usize,
    per_sender: usize,
    window: usize,
    out: &Path,
) -> anyhow::Result<Value> {
    let mut report = Report::new("throughput");
    let setup = super::pairs(&server.address, "tp", pairs).await?;
    let total = pairs * per_sender;
    let mut metrics = Vec::new();
    for address in &server.metrics {
        metrics.push(Http::connect(address).await?);
    }
    let stored_before = stored_count(&mut metrics).await?;

    let cpu = CpuMeter::start(server);
    let started = Instant::now();
    let stored = tokio::spawn(async move {
        loop {
            let stored = stored_count(&mut metrics).await?;
            if stored - stored_before >= total as f64 {
                return anyhow::Ok(started.elapsed());
            }
            if started.elapsed() > STALL * 10 {
                bail!("only {} of {total} stored", stored - stored_before);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for pair in setup {
        receivers.push(tokio::spawn(receive(pair.receiver, per_sender, started)));
        senders.push(tokio::spawn(send(
            pair.sender,
            pair.conversation,
            per_sender,
            window,
            started,
        )));
    }
    let (mut accepted, mut accept_time) = (0, Duration::ZERO);
    for sender in senders {
        let (count, elapsed) = sender.await??;
        accepted += count;
        accept_time = accept_time.max(elapsed);
    }
    let (mut delivered, mut violations, mut repeats, mut deliver_time) = (0, 0, 0, Duration::ZERO);
    for receiver in receivers {
        let outcome = receiver.await?;
        delivered += outcome.delivered;
        violations += outcome.violations;
        repeats += outcome.repeats;
        deliver_time = deliver_time.max(outcome.elapsed);
    }
    let store_time = stored.await??;
    let roles_cpu = cpu.finish(server, &mut report);

    let rate = |count: usize, time: Duration| count as f64 / time.as_secs_f64();
    report.add("pairs", "pairs (sender → receiver)", pairs as u64);
    report.add("window", "sends in flight per sender", window as u64);
    report.add("messages", "messages", total as u64);
    report.add("accepted", "accepted", accepted as u64);
    report.add("delivered", "delivered", delivered as u64);
    report.add(
        "accepted_per_second",
        "accepted/s",
        rate(accepted, accept_time),
    );
    report.add("stored_per_second", "stored/s", rate(total, store_time));
    report.add(
        "delivered_per_second",
        "delivered/s",
        rate(delivered, deliver_time),
    );
    roles_cpu.per_message(&mut report, total);
    // A repeat (a seq the connection had) is dropped by a client; counted, not a violation.
    report.add(
        "repeats",
        "messages delivered again to a connection (dropped by seq)",
        repeats as u64,
    );
    let exact = violations == 0 && delivered == accepted && accepted == total;
    report.add(
        "exactly_once_in_order",
        "every accepted message delivered, in order (repeats apart)",
        exact,
    );
    if let Some(rss) = server.rss_kib() {
        report.add("server_rss_after_kib", "server RSS after (KiB)", rss);
    }
    let value = report.finish(out)?;
    if !exact {
        bail!("{violations} order violations; {accepted} accepted, {delivered} delivered");
    }
    Ok(value)
}

/// Messages stored so far, summed over the processes that store (the persisters).
async fn stored_count(metrics: &mut [Http]) -> anyhow::Result<f64> {
    let mut stored = 0.0;
    for http in metrics {
        stored += client::counter(http, "parlor_messages_stored_total").await?;
    }
    Ok(stored)
}

async fn send(
    socket: client::Socket,
    conversation: String,
    count: usize,
    window: usize,
    started: Instant,
) -> anyhow::Result<(usize, Duration)> {
    let (mut sink, mut stream) = socket.split();
    let (mut sent, mut accepted) = (0, 0);
    while accepted < count {
        while sent - accepted < window && sent < count {
            let frame = client::send_frame(&conversation, &format!("m{sent}"), BODY);
            sink.feed(frame).await?;
            sent += 1;
        }
        sink.flush().await?;
        let Ok(Some(frame)) = tokio::time::timeout(STALL, stream.next()).await else {
            bail!("the sender stalled after {accepted} accepted");
        };
        if let Message::Text(text) = frame? {
            match classify(&text) {
                Seen::Accepted { .. } => accepted += 1,
                Seen::Error(error) => bail!("send failed: {error}"),
                _ => {}
            }
        }
    }
    Ok((accepted, started.elapsed()))
}

struct Received {
    delivered: usize,
    violations: usize,
    repeats: usize,
    elapsed: Duration,
}

/// One sender per conversation, so `seq` k must carry the sender's message k-1.
async fn receive(socket: client::Socket, count: usize, started: Instant) -> Received {
    let (_sink, mut stream) = socket.split();
    let mut outcome = Received {
        delivered: 0,
        violations: 0,
        repeats: 0,
        elapsed: Duration::ZERO,
    };
    let mut last_seq = 0;
    let mut seen = std::collections::HashSet::with_capacity(count);
    while outcome.delivered < count {
        let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(STALL, stream.next()).await
        else {
            break;
        };
        if let Seen::Message { seq, client_msg_id } = classify(&text) {
            if !seen.insert(seq) {
                outcome.repeats += 1;
                continue;
            }
            if seq != last_seq + 1 || index_of(client_msg_id) != Some(seq as usize - 1) {
                outcome.violations += 1;
            }
            last_seq = seq;
            outcome.delivered += 1;
            outcome.elapsed = started.elapsed();
        }
    }
    outcome
}
