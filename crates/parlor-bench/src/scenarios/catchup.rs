//! Catch-up: a member who was offline while N messages arrived reconnects and pages through
//! the history, as the web client does, until it is complete.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{BODY, Seen, classify};
use crate::client::{self, Http};
use crate::report::{CpuMeter, Report};
use crate::server::Server;

/// The largest page the API serves.
const PAGE: usize = 200;
const WINDOW: usize = 64;

pub async fn run(server: &Server, messages: usize, out: &Path) -> anyhow::Result<Value> {
    let mut report = Report::new("catchup");
    let accounts = client::register_many(&server.address, "catchup", 2, 2).await?;
    let (sender, reader) = (&accounts[0], &accounts[1]);
    let mut http = Http::connect(&server.address).await?;
    let conversation = client::direct(&mut http, sender, reader).await?;

    // The reader is offline while the sender sends.
    let fill_started = Instant::now();
    let (mut sink, mut stream) = client::connect(&server.address, &sender.token, None)
        .await?
        .split();
    let (mut sent, mut accepted) = (0, 0);
    while accepted < messages {
        while sent - accepted < WINDOW && sent < messages {
            sink.feed(client::send_frame(&conversation, &format!("m{sent}"), BODY))
                .await?;
            sent += 1;
        }
        sink.flush().await?;
        let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(20), stream.next()).await
        else {
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
    // Wait until all of it is stored: catch-up reads the store.
    let path = format!("/api/v1/conversations/{conversation}/messages?limit=1");
    loop {
        let page = http
            .expect(200, "GET", &path, Some(&reader.token), None)
            .await?;
        if page["messages"][0]["seq"].as_u64() == Some(messages as u64) {
            break;
        }
        if fill_started.elapsed() > Duration::from_secs(600) {
            bail!("the history did not reach {messages} messages");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let cpu = CpuMeter::start(server);
    let started = Instant::now();
    let _socket = client::connect(&server.address, &reader.token, None).await?;
    let mut http = Http::connect(&server.address).await?;
    let mut last_seq = 0;
    let mut requests = 0;
    while last_seq < messages as u64 {
        let path = parlor_testkit::client::history_path(&conversation, last_seq, PAGE);
        let page = http
            .expect(200, "GET", &path, Some(&reader.token), None)
            .await?;
        requests += 1;
        let page = page["messages"].as_array().context("no messages")?;
        if page.is_empty() {
            bail!("the history ended at seq {last_seq}");
        }
        for message in page {
            let seq = message["seq"].as_u64().context("no seq")?;
            if seq != last_seq + 1 {
                bail!("seq {seq} after {last_seq}: not gap-free");
            }
            last_seq = seq;
        }
    }
    let elapsed = started.elapsed();
    cpu.finish(server, &mut report);

    report.add("messages", "messages missed while offline", messages as u64);
    report.add(
        "requests",
        "history requests (200 per page)",
        requests as u64,
    );
    report.add(
        "seconds",
        "reconnect → history complete (s)",
        elapsed.as_secs_f64(),
    );
    report.add(
        "messages_per_second",
        "messages/s caught up",
        messages as f64 / elapsed.as_secs_f64(),
    );
    report.finish(out)
}
