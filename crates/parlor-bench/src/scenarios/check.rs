//! The delivery checker: Parlor promises that an event that got `accepted` is never lost,
//! never duplicated and always in order, whatever process dies. Users with several devices
//! each ask for every kind of change, over WebSocket (a window in flight) and over HTTP, in
//! direct and group conversations, resending what was not answered after every reconnect;
//! with `--kills N` the server is killed with SIGKILL at random moments and restarted on the
//! same data directory. At the end the store, read through the API as a member, is checked
//! against what every channel sent and received (`verify` says how).

mod device;
mod http_sender;
mod record;
mod shared;
mod verify;
mod world;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, FromArgMatches};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use self::record::{ConversationIndex, Event};
use self::shared::{Context, Endpoint, Phase, Recovery, event_of};
pub use self::verify::Findings;
use self::world::World;
use crate::client::{self, Http};
use crate::report::Report;
use crate::rng::Rng;
use crate::server::Server;

/// How long a restarted server may take to answer `/readyz`.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long the channels may take, once told to stop, to have every send answered, and the
/// server to have stored and delivered everything.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);
/// How long the queues must look empty (the gauges are refreshed every second) before the
/// store is taken for settled.
const EMPTY_FOR: Duration = Duration::from_millis(1500);

#[derive(Args, Clone, Debug)]
pub struct Options {
    /// Users, each with its devices and one HTTP sender.
    #[arg(long, default_value_t = 12)]
    pub users: usize,
    /// WebSocket connections of a user (every other user has one fewer, at least one).
    #[arg(long, default_value_t = 3)]
    pub devices: usize,
    /// Groups, each with five core members and two members who come and go.
    #[arg(long, default_value_t = 4)]
    pub groups: usize,
    /// Sends in flight per WebSocket.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Between two sends of one WebSocket, on average (an HTTP sender waits four times as
    /// long), in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub pause_ms: u64,
    /// Sends per channel at most.
    #[arg(long, default_value_t = 100_000)]
    pub sends_max: usize,
    /// Times the server is killed with SIGKILL and restarted on the same data directory.
    #[arg(long, default_value_t = 0)]
    pub kills: usize,
    /// From a start to the next kill, at least, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub kill_after_min_ms: u64,
    /// From a start to the next kill, at most, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    pub kill_after_max_ms: u64,
    /// How long the load goes on after the last restart (or in all, with no kills), in
    /// milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub tail_ms: u64,
    /// Seeds the kill moments and every channel's choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Default for Options {
    /// The defaults of the command line.
    fn default() -> Options {
        let command = Options::augment_args(clap::Command::new("check"));
        Options::from_arg_matches(&command.get_matches_from(["check"]))
            .expect("the defaults are valid options")
    }
}

/// Runs the checker against `binary serve` in a data directory of its own (kept when the
/// run fails or finds a violation), prints the figures and every violation, writes
/// `out/check.json`, and answers what it found.
pub async fn run(binary: &Path, options: &Options, out: &Path) -> anyhow::Result<Findings> {
    let data_dir = std::env::temp_dir().join(format!("parlor-bench-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let result = run_in(binary, &data_dir, options, out).await;
    match &result {
        Ok(findings) if findings.violations() == 0 => {
            let _ = std::fs::remove_dir_all(&data_dir);
        }
        // The evidence: the logs and the store as the server left them.
        _ => eprintln!("check: the data directory is kept: {}", data_dir.display()),
    }
    result
}

/// One kill: how long until the server answered `/readyz`, and until it accepted a send.
struct Kill {
    ready: Duration,
    accepted: Option<Duration>,
}

async fn run_in(
    binary: &Path,
    data_dir: &Path,
    options: &Options,
    out: &Path,
) -> anyhow::Result<Findings> {
    let started = Instant::now();
    let mut rng = Rng::new(options.seed);
    let mut server = start(binary, data_dir).await?;
    let world = Arc::new(World::build(&server.address, options.users, options.groups).await?);
    let (endpoint_sender, endpoint) = watch::channel(Endpoint {
        epoch: 0,
        address: server.address.clone(),
    });
    let (phase_sender, phase) = watch::channel(Phase::Run);
    let devices_of = |user: usize| options.devices.saturating_sub(user % 2).max(1);
    let channels: usize = (0..options.users).map(|user| devices_of(user) + 1).sum();
    let (drained, mut drained_receiver) = mpsc::channel(channels);
    let recovery = Arc::new(Recovery::default());
    let context = Context {
        world: Arc::clone(&world),
        endpoint,
        phase,
        recovery: Arc::clone(&recovery),
        drained,
        window: options.window.max(1),
        pause: Duration::from_millis(options.pause_ms),
        sends_max: options.sends_max,
    };
    let mut tasks = Vec::with_capacity(channels);
    for user in 0..options.users {
        for device in 0..devices_of(user) {
            let task = device::run(context.clone(), user, device, rng.fork());
            tasks.push(tokio::spawn(task));
        }
        let task = http_sender::run(context.clone(), user, rng.fork());
        tasks.push(tokio::spawn(task));
    }
    drop(context);

    let mut kills = Vec::with_capacity(options.kills);
    let mut restarts = vec![vec![0; world.conversations.len()]];
    for kill in 0..options.kills {
        let wait = rng.between(options.kill_after_min_ms, options.kill_after_max_ms);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.kill9();
        let killed_at = Instant::now();
        server = start(binary, data_dir)
            .await
            .with_context(|| format!("restart after kill {}", kill + 1))?;
        let ready = killed_at.elapsed();
        // Before any channel is back: all that the killed server stored, and perhaps a
        // little of what this one stored since from entries accepted before the kill.
        let reading = Instant::now();
        restarts.push(newest_seqs(&server.address, &world).await?);
        let held_back = reading.elapsed();
        endpoint_sender.send_replace(Endpoint {
            epoch: kill + 1,
            address: server.address.clone(),
        });
        kills.push((killed_at, ready, held_back));
        if (kill + 1) % 10 == 0 {
            eprintln!("check: {} kills", kill + 1);
        }
    }
    tokio::time::sleep(Duration::from_millis(options.tail_ms)).await;

    phase_sender.send_replace(Phase::Drain);
    let deadline = tokio::time::Instant::now() + SETTLE_WITHIN;
    for _ in 0..channels {
        match tokio::time::timeout_at(deadline, drained_receiver.recv()).await {
            Ok(Some(())) => {}
            _ => break,
        }
    }
    let dead_letters = settle(&server.address).await?;
    phase_sender.send_replace(Phase::Finish);
    let mut records = Vec::with_capacity(channels);
    for task in tasks {
        records.push(task.await?);
    }
    let store = read_store(&server.address, &world).await?;
    let findings = verify::check(&records, &store, &restarts, &world.names());
    drop(server);

    let kills: Vec<Kill> = kills
        .iter()
        .enumerate()
        .map(|(kill, (killed_at, ready, held_back))| Kill {
            ready: *ready,
            // Less the time the channels were held back while the seqs were read.
            accepted: recovery
                .first_accepted(kill + 1)
                .map(|at| at.duration_since(*killed_at).saturating_sub(*held_back)),
        })
        .collect();
    let mut report = Report::new("check");
    report.add("kills", "kills (SIGKILL, restart)", kills.len() as u64);
    report.add(
        "channels",
        "channels (WebSockets + HTTP senders)",
        channels as u64,
    );
    report.add(
        "sockets",
        "WebSockets opened (reconnects included)",
        records
            .iter()
            .map(|record| u64::from(record.sockets))
            .sum::<u64>(),
    );
    report.add("events_sent", "events sent", findings.events_sent);
    report.add("accepted", "accepted", findings.accepted);
    report.add("stored", "stored", findings.stored);
    report.add("refused", "refused (final errors)", findings.refused);
    let kinds: Vec<String> = findings
        .stored_kinds
        .iter()
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect();
    report.add("stored_by_kind", "stored by kind", kinds.join(", "));
    report.add(
        "resends",
        "resends after reconnects and failed requests",
        records
            .iter()
            .flat_map(|record| &record.sends)
            .map(|send| u64::from(send.attempts.saturating_sub(1)))
            .sum::<u64>(),
    );
    report.add("lost", "lost (accepted, not stored)", findings.lost);
    report.add("duplicated", "duplicated", findings.duplicated);
    report.add(
        "reordered",
        "reordered (a channel's sends)",
        findings.reordered,
    );
    report.add("seq_gaps", "seq gaps", findings.seq_gaps);
    report.add(
        "never_sent_but_stored",
        "never sent but stored",
        findings.never_sent_but_stored,
    );
    report.add(
        "refused_but_stored",
        "refused but stored",
        findings.refused_but_stored,
    );
    report.add("unanswered", "sends never answered", findings.unanswered);
    report.add(
        "live_duplicates",
        "live stream: duplicates",
        findings.live_duplicates,
    );
    report.add(
        "live_reorders",
        "live stream: reorderings",
        findings.live_reorders,
    );
    report.add(
        "view_mismatches",
        "member views unlike the store",
        findings.view_mismatches,
    );
    report.add(
        "reconnect_explained_redeliveries",
        "redeliveries a reconnect explains",
        findings.reconnect_explained,
    );
    report.add(
        "stray_errors",
        "error frames naming no send",
        records
            .iter()
            .map(|record| record.stray_errors)
            .sum::<u64>(),
    );
    report.add("dead_letters", "dead letters at the end", dead_letters);
    let ready: Vec<Duration> = kills.iter().map(|kill| kill.ready).collect();
    let accepted: Vec<Duration> = kills.iter().filter_map(|kill| kill.accepted).collect();
    recovery_figures(&mut report, "recovery_ready", "kill → /readyz 200", &ready);
    recovery_figures(
        &mut report,
        "recovery_accepted",
        "kill → first accepted",
        &accepted,
    );
    report.add(
        "kills_without_accepted",
        "kills followed by no accepted before the next",
        (kills.len() - accepted.len()) as u64,
    );
    report.add("violations", "VIOLATIONS", findings.violations());
    report.add(
        "wall_seconds",
        "wall time (s)",
        started.elapsed().as_secs_f64(),
    );
    report.attach("notes", json!(findings.notes));
    report.attach("options", json!(format!("{options:?}")));
    for note in &findings.notes {
        println!("  violation: {note}");
    }
    report.finish(out)?;
    Ok(findings)
}

/// p50 and max of a recovery time, in ms.
fn recovery_figures(report: &mut Report, key: &str, label: &str, times: &[Duration]) {
    let mut ms: Vec<f64> = times.iter().map(|time| time.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let p50 = ms.get(ms.len() / 2).copied().unwrap_or_default();
    let max = ms.last().copied().unwrap_or_default();
    report.add(&format!("{key}_p50_ms"), &format!("{label} p50 (ms)"), p50);
    report.add(&format!("{key}_max_ms"), &format!("{label} max (ms)"), max);
}

/// `binary serve` on the data directory, ready.
async fn start(binary: &Path, data_dir: &Path) -> anyhow::Result<Server> {
    let (binary, data_dir): (PathBuf, PathBuf) = (binary.into(), data_dir.into());
    // The launcher blocks on the child's output until it listens.
    let server = tokio::task::spawn_blocking(move || Server::start(&binary, &data_dir)).await??;
    server.wait_ready(READY_WITHIN).await?;
    Ok(server)
}

/// Waits until the inbound and notification queues have been empty for a while (everything
/// accepted is stored, everything stored delivered); answers the dead letters.
async fn settle(address: &str) -> anyhow::Result<u64> {
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut http = Http::connect(address).await?;
    let mut empty_since: Option<Instant> = None;
    loop {
        let pending = client::counter(&mut http, "parlor_queue_pending").await?
            + client::counter(&mut http, "parlor_queue_in_flight").await?;
        if pending > 0.0 {
            empty_since = None;
        } else if empty_since.get_or_insert_with(Instant::now).elapsed() >= EMPTY_FOR {
            return Ok(client::counter(&mut http, "parlor_queue_dead_letters").await? as u64);
        }
        if Instant::now() > deadline {
            anyhow::bail!("the queues still hold {pending} entries after {SETTLE_WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every conversation's newest seq.
async fn newest_seqs(address: &str, world: &World) -> anyhow::Result<Vec<u64>> {
    let mut http = Http::connect(address).await?;
    let mut newest = Vec::with_capacity(world.conversations.len());
    for conversation in &world.conversations {
        let token = &world.users[conversation.reader].token;
        let path = format!("/api/v1/conversations/{}", conversation.id);
        let row = http.expect(200, "GET", &path, Some(token), None).await?;
        newest.push(row["last_seq"].as_u64().unwrap_or_default());
    }
    Ok(newest)
}

/// Every conversation's events, as a member from start to end reads them.
async fn read_store(address: &str, world: &World) -> anyhow::Result<Vec<Vec<Event>>> {
    let mut http = Http::connect(address).await?;
    let mut store = Vec::with_capacity(world.conversations.len());
    for (index, conversation) in world.conversations.iter().enumerate() {
        let token = &world.users[conversation.reader].token;
        let mut events: Vec<Event> = Vec::new();
        let mut after = 0;
        loop {
            let path = format!(
                "/api/v1/conversations/{}/events?after_seq={after}&limit=200",
                conversation.id
            );
            let page = http.expect(200, "GET", &path, Some(token), None).await?;
            let page = page["events"].as_array().cloned().unwrap_or_default();
            let Some(newest) = page.last().and_then(|event| event["seq"].as_u64()) else {
                break;
            };
            for value in &page {
                let (event, _) = event_of(world, value)
                    .with_context(|| format!("an event the checker cannot read: {value}"))?;
                debug_assert_eq!(event.conversation, index as ConversationIndex);
                events.push(event);
            }
            after = newest;
        }
        store.push(events);
    }
    Ok(store)
}
