//! Restart after `kill -9` with a long unconsumed inbound log: how soon the server is ready
//! again, and how fast the persister then drains the backlog.
//!
//! The backlog is written straight into the embedded inbound queue by a child process (the
//! hidden `fill-inbound` command) that is killed with SIGKILL once its appends are durable:
//! with the persister running, a live server would consume the entries as they arrive and
//! there would never be a million of them waiting.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use parlor_core::events::Change;
use parlor_core::ports::Queue;
use parlor_core::queue::InboundEntry;
use parlor_embedded::{WalQueue, WalQueueOptions};
use serde_json::Value;

use super::BODY;
use crate::client::{self, Http};
use crate::report::Report;
use crate::server::Server;

pub async fn run(binary: &Path, entries: usize, out: &Path) -> anyhow::Result<Value> {
    let mut report = Report::new("restart");
    let data_dir =
        std::env::temp_dir().join(format!("parlor-bench-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);

    let mut server = Server::start(binary, &data_dir)?;
    let accounts = client::register_many(&server.address, "restart", 2, 2).await?;
    let mut http = Http::connect(&server.address).await?;
    let conversation = client::direct(&mut http, &accounts[0], &accounts[1]).await?;
    server.stop()?;

    let filled = Instant::now();
    let mut filler = Command::new(std::env::current_exe()?)
        .arg("fill-inbound")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--conversation", &conversation, "--sender", &accounts[0].id])
        .arg("--count")
        .arg(entries.to_string())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(filler.stdout.take().context("no stdout")?).read_line(&mut line)?;
    if line.trim() != "filled" {
        bail!("fill-inbound failed: {line:?}");
    }
    filler.kill()?;
    filler.wait()?;
    let fill_seconds = filled.elapsed().as_secs_f64();
    let log_bytes = directory_bytes(&data_dir.join("queues/inbound"));

    let started = Instant::now();
    let server = Server::start(binary, &data_dir)?;
    let listening = started.elapsed();
    server.wait_ready(Duration::from_secs(60)).await?;
    let ready = started.elapsed();

    let mut http = Http::connect(&server.address).await?;
    let path = format!("/api/v1/conversations/{conversation}/messages?limit=1");
    loop {
        let page = http
            .expect(200, "GET", &path, Some(&accounts[1].token), None)
            .await?;
        if page["messages"][0]["seq"].as_u64() == Some(entries as u64) {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the backlog was not drained within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = started.elapsed();
    drop(server);
    let _ = std::fs::remove_dir_all(&data_dir);

    report.add(
        "entries",
        "unconsumed inbound entries at kill -9",
        entries as u64,
    );
    report.add(
        "log_mib",
        "inbound log on disk (MiB)",
        log_bytes as f64 / 1024.0 / 1024.0,
    );
    report.add("fill_seconds", "writing them (s)", fill_seconds);
    report.add(
        "listening_seconds",
        "start → listening (s)",
        listening.as_secs_f64(),
    );
    report.add(
        "ready_seconds",
        "start → /readyz 200 (s)",
        ready.as_secs_f64(),
    );
    report.add(
        "drained_seconds",
        "start → every entry stored (s)",
        drained.as_secs_f64(),
    );
    report.add(
        "drain_per_second",
        "backlog stored/s after the restart",
        entries as f64 / (drained - ready).as_secs_f64(),
    );
    report.finish(out)
}

/// The hidden `fill-inbound` command: appends `count` accepted messages to the inbound queue
/// of a stopped server's data directory, prints `filled` once they are durable, then waits
/// to be killed.
pub async fn fill_inbound(
    data_dir: &Path,
    conversation: &str,
    sender: &str,
    count: usize,
) -> anyhow::Result<()> {
    // The embedded layout: DATA_DIR/queues/inbound (see the parlor crate's embedded.rs).
    let queue = WalQueue::open(
        &data_dir.join("queues/inbound"),
        "inbound",
        WalQueueOptions::default(),
    )?;
    let conversation_id = conversation.parse().context("bad conversation id")?;
    let sender_id = sender.parse().context("bad sender id")?;
    let accepted_at = time::OffsetDateTime::now_utc();
    let mut index = 0;
    while index < count {
        let batch: Vec<Vec<u8>> = (index..count.min(index + 1000))
            .map(|i| {
                InboundEntry {
                    conversation_id,
                    sender_id,
                    client_msg_id: format!("m{i}"),
                    accepted_at,
                    change: Change::Message {
                        body: BODY.to_string(),
                        reply_to_seq: None,
                    },
                }
                .encode()
            })
            .collect();
        index += batch.len();
        queue.append(batch).await?;
    }
    println!("filled");
    std::future::pending::<()>().await;
    Ok(())
}

pub(super) fn directory_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => directory_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
