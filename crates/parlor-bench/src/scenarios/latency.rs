//! Open-loop latency at a fixed rate: every message has an intended send time on a fixed
//! schedule, and latency is measured from that time, not from when the generator got around
//! to sending it. A server that stalls therefore shows its stall in the figures instead of
//! slowing the generator down (no coordinated omission).

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{BODY, Seen, classify, index_of};
use crate::client;
use crate::report::{CpuMeter, Report, histogram};
use crate::server::Server;

const STALL: Duration = Duration::from_secs(20);

/// The schedule: message `g` (over all pairs) is due at `start + g / rate`.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    pairs: usize,
    nanos_per_message: f64,
}

impl Schedule {
    fn due(&self, pair: usize, index: usize) -> Instant {
        let global = index * self.pairs + pair;
        self.start + Duration::from_nanos((global as f64 * self.nanos_per_message) as u64)
    }

    fn micros_since_due(&self, pair: usize, index: usize) -> u64 {
        Instant::now()
            .saturating_duration_since(self.due(pair, index))
            .as_micros()
            .max(1) as u64
    }
}

pub async fn run(
    server: &Server,
    rate: u64,
    seconds: u64,
    pairs: usize,
    out: &Path,
) -> anyhow::Result<Value> {
    let name = format!("latency-{rate}");
    let mut report = Report::new(&name);
    let setup = super::pairs(&server.address, &format!("lat{rate}x"), pairs).await?;
    let total = (rate * seconds) as usize;
    let schedule = Schedule {
        start: Instant::now() + Duration::from_millis(200),
        pairs,
        nanos_per_message: 1e9 / rate as f64,
    };
    let cpu = CpuMeter::start(server);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (pair, setup) in setup.into_iter().enumerate() {
        // Messages of this pair: global indexes pair, pair + P, pair + 2P, … below total.
        let count = (total + pairs - 1 - pair) / pairs;
        receivers.push(tokio::spawn(receive(setup.receiver, pair, count, schedule)));
        senders.push(tokio::spawn(send(
            setup.sender,
            setup.conversation,
            pair,
            count,
            schedule,
        )));
    }
    let mut accepted = histogram();
    let mut delivered = histogram();
    for sender in senders {
        accepted.add(sender.await??)?;
    }
    for receiver in receivers {
        delivered.add(receiver.await?)?;
    }
    let achieved = delivered.len() as f64
        / (Instant::now() - schedule.start)
            .as_secs_f64()
            .max(seconds as f64);
    cpu.finish(server, &mut report);

    report.add("target_rate", "target rate (messages/s)", rate);
    report.add("seconds", "duration (s)", seconds);
    report.add("pairs", "pairs", pairs as u64);
    report.add("messages", "messages", total as u64);
    report.add("delivered", "delivered", delivered.len());
    report.add("delivered_per_second", "delivered/s over the run", achieved);
    report.latency("send_to_accepted", "send → accepted", &accepted);
    report.latency("send_to_delivered", "send → delivered", &delivered);
    let value = report.finish(out)?;
    if delivered.len() != total as u64 {
        bail!("{} of {total} delivered", delivered.len());
    }
    Ok(value)
}

async fn send(
    socket: client::Socket,
    conversation: String,
    pair: usize,
    count: usize,
    schedule: Schedule,
) -> anyhow::Result<Histogram<u64>> {
    let (mut sink, mut stream) = socket.split();
    let acks = tokio::spawn(async move {
        let mut latencies = histogram();
        while (latencies.len() as usize) < count {
            let Ok(Some(frame)) = tokio::time::timeout(STALL, stream.next()).await else {
                bail!("the sender stalled after {} accepted", latencies.len());
            };
            if let Message::Text(text) = frame? {
                match classify(&text) {
                    Seen::Accepted { client_msg_id } => {
                        let index = index_of(client_msg_id).unwrap_or_default();
                        latencies.record(schedule.micros_since_due(pair, index))?;
                    }
                    Seen::Error(error) => bail!("send failed: {error}"),
                    _ => {}
                }
            }
        }
        Ok(latencies)
    });
    for index in 0..count {
        tokio::time::sleep_until(schedule.due(pair, index)).await;
        let frame = client::send_frame(&conversation, &format!("m{index}"), BODY);
        sink.send(frame).await?;
    }
    let latencies = acks.await??;
    // Keep the sink open until every answer arrived.
    drop(sink);
    Ok(latencies)
}

async fn receive(
    socket: client::Socket,
    pair: usize,
    count: usize,
    schedule: Schedule,
) -> Histogram<u64> {
    let (_sink, mut stream) = socket.split();
    let mut latencies = histogram();
    while (latencies.len() as usize) < count {
        let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(STALL, stream.next()).await
        else {
            break;
        };
        if let Seen::Message { client_msg_id, .. } = classify(&text) {
            let index = index_of(client_msg_id).unwrap_or_default();
            let _ = latencies.record(schedule.micros_since_due(pair, index));
        }
    }
    latencies
}
