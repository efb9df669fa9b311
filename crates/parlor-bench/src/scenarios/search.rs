//! Search over a large store: N messages of chat-like text in many groups, then queries of
//! each kind a user makes (a rare word, a common one, two words, a prefix being typed, the
//! newest first, within one conversation), one after another over HTTP, each timed.
//!
//! The users and groups are made through the API; the messages are then written straight
//! into the stopped server's SQLite store with `append_events`, the call the persister makes
//! (so the index is built exactly as it is in service, trigger by trigger), because sending a
//! million messages through the gateway would measure the message path, not search.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parlor_core::events::Change;
use parlor_core::ids::{ConversationId, UserId};
use parlor_core::ports::{NewEvent, Store};
use parlor_embedded::SqliteStore;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::restart::directory_bytes;
use crate::client::{self, Account, Http};
use crate::report::{CpuMeter, Report, histogram};
use crate::rng::Rng;
use crate::server::Server;

/// Members of each group, drawn from all the users.
const GROUP_MEMBERS: usize = 10;
/// Entries per `append_events` call while filling: the persister's batch size.
const FILL_BATCH: usize = 512;
/// The words messages are made of, by rank: a few common English words first, then made-up
/// ones, so that frequencies follow a Zipf law as in real text.
const COMMON: &[&str] = &[
    "the", "to", "and", "a", "i", "you", "it", "is", "that", "of", "in", "we", "for", "on", "this",
    "be", "have", "can", "with", "are", "not", "just", "so", "but", "do", "will", "at", "me", "if",
    "what", "was", "my", "get", "all", "now", "they", "there", "think", "know", "good", "like",
    "yes", "ok", "here", "how", "one", "time", "see", "today", "thanks", "meeting", "deploy",
    "build", "release", "review", "tomorrow", "lunch", "team", "issue", "test", "fix", "branch",
    "server", "client", "design", "budget", "report", "plan", "call",
];
const VOCABULARY: usize = 30_000;

/// Makes one query's text (and `&filters`) for a searcher in the group given.
type MakeQuery = fn(&Words, &mut Rng, &str) -> String;

/// The vocabulary and a Zipf sampler over it.
struct Words {
    words: Vec<String>,
    /// Cumulative weights, 1/rank.
    cumulative: Vec<f64>,
}

impl Words {
    fn new(rng: &mut Rng) -> Words {
        const SYLLABLES: &[&str] = &[
            "ka", "lo", "mi", "ren", "ta", "vo", "shi", "pe", "dra", "nu", "gal", "tor", "bi",
            "que", "sa", "fen", "ro", "li", "mar", "zu",
        ];
        let mut words: Vec<String> = COMMON.iter().map(|word| (*word).to_owned()).collect();
        let mut seen: std::collections::HashSet<String> = words.iter().cloned().collect();
        while words.len() < VOCABULARY {
            let syllables = 2 + rng.index(3);
            let word: String = (0..syllables)
                .map(|_| SYLLABLES[rng.index(SYLLABLES.len())])
                .collect();
            if seen.insert(word.clone()) {
                words.push(word);
            }
        }
        let mut total = 0.0;
        let cumulative = (1..=words.len())
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        Words { words, cumulative }
    }

    fn pick(&self, rng: &mut Rng) -> &str {
        let target = rng.unit() * self.cumulative.last().copied().unwrap_or(1.0);
        let index = self.cumulative.partition_point(|&c| c < target);
        &self.words[index.min(self.words.len() - 1)]
    }

    fn body(&self, rng: &mut Rng) -> String {
        let length = 3 + rng.index(22);
        (0..length)
            .map(|_| self.pick(rng))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub async fn run(
    binary: &Path,
    messages: usize,
    users: usize,
    groups: usize,
    queries: usize,
    out: &Path,
) -> anyhow::Result<Value> {
    let mut report = Report::new("search");
    let data_dir = std::env::temp_dir().join(format!("parlor-bench-search-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let mut rng = Rng::new(0x5EED);
    let words = Words::new(&mut rng);

    let mut server = Server::start(binary, &data_dir)?;
    let accounts = client::register_many(&server.address, "search", users, 8).await?;
    let mut http = Http::connect(&server.address).await?;
    let mut group_ids = Vec::with_capacity(groups);
    let mut group_members: Vec<Vec<usize>> = Vec::with_capacity(groups);
    for g in 0..groups {
        let mut members: Vec<usize> = Vec::with_capacity(GROUP_MEMBERS);
        while members.len() < GROUP_MEMBERS.min(users) {
            let member = rng.index(users);
            if !members.contains(&member) {
                members.push(member);
            }
        }
        let others: Vec<&str> = members[1..]
            .iter()
            .map(|&m| accounts[m].id.as_str())
            .collect();
        let body = json!({"kind": "group", "title": format!("group {g}"), "members": others});
        let created = http
            .expect(
                201,
                "POST",
                "/api/v1/conversations",
                Some(&accounts[members[0]].token),
                Some(&body),
            )
            .await?;
        group_ids.push(created["id"].as_str().context("no id")?.to_owned());
        group_members.push(members);
    }
    server.stop()?;

    let filled = Instant::now();
    let store =
        Arc::new(SqliteStore::open(&data_dir.join("parlor.sqlite3")).context("open the store")?);
    let start_time = OffsetDateTime::now_utc() - time::Duration::days(365);
    let mut batch = Vec::with_capacity(FILL_BATCH);
    for n in 0..messages {
        let g = rng.index(groups);
        let sender = group_members[g][rng.index(group_members[g].len())];
        batch.push(NewEvent {
            conversation_id: group_ids[g].parse::<ConversationId>()?,
            sender_id: accounts[sender].id.parse::<UserId>()?,
            client_msg_id: format!("fill-{n}"),
            // A year of history, oldest first.
            accepted_at: start_time
                + time::Duration::seconds((n as i64 * 365 * 86_400) / messages as i64),
            change: Change::Message {
                body: words.body(&mut rng),
                reply_to_seq: None,
                files: Vec::new(),
            },
        });
        if batch.len() == FILL_BATCH || n + 1 == messages {
            store.append_events(&batch).await?;
            batch.clear();
        }
    }
    drop(store);
    let fill_seconds = filled.elapsed().as_secs_f64();
    report.add("messages", "messages stored", messages as u64);
    report.add(
        "stored_per_second_direct",
        "stored/s by append_events (fill, indexed)",
        messages as f64 / fill_seconds,
    );
    report.add(
        "database_mib",
        "database size (MiB)",
        directory_bytes(&data_dir) as f64 / (1024.0 * 1024.0),
    );

    let server = Server::start(binary, &data_dir)?;
    server.wait_ready(Duration::from_secs(120)).await?;
    let mut http = Http::connect(&server.address).await?;
    let cpu = CpuMeter::start(&server);
    // Each kind of query: (key, label, how to make one for a searcher in a group of theirs).
    let kinds: [(&str, &str, MakeQuery); 9] = [
        (
            "very_common",
            "one of the 5 commonest words",
            |words, rng, _| words.words[rng.index(5)].clone() + " ",
        ),
        (
            "very_common_recent",
            "one of the 5 commonest, newest first",
            |words, rng, _| format!("{} &sort=recent", words.words[rng.index(5)]),
        ),
        ("rare", "a rare word", |words, rng, _| {
            words.words[5_000 + rng.index(10_000)].clone() + " "
        }),
        ("common", "a common word, by relevance", |words, rng, _| {
            words.words[50 + rng.index(20)].clone() + " "
        }),
        (
            "common_recent",
            "a common word, newest first",
            |words, rng, _| format!("{} &sort=recent", words.words[50 + rng.index(20)]),
        ),
        ("two_words", "two words", |words, rng, _| {
            format!(
                "{} {} ",
                words.words[100 + rng.index(400)],
                words.words[100 + rng.index(400)]
            )
        }),
        (
            "prefix",
            "a prefix being typed (3 letters)",
            |words, rng, _| {
                words.words[200 + rng.index(2_000)]
                    .chars()
                    .take(3)
                    .collect()
            },
        ),
        (
            "prefix_recent",
            "a 3-letter prefix, newest first",
            |words, rng, _| {
                let prefix: String = words.words[200 + rng.index(2_000)]
                    .chars()
                    .take(3)
                    .collect();
                format!("{prefix}&sort=recent")
            },
        ),
        (
            "in_conversation",
            "a common word in one conversation",
            |words, rng, group| {
                format!(
                    "{} &conversation_id={group}",
                    words.words[50 + rng.index(20)]
                )
            },
        ),
    ];
    let kinds_count = kinds.len();
    let mut all = histogram();
    let mut hits_total = 0usize;
    for (key, label, make) in kinds {
        let mut latencies = histogram();
        for _ in 0..queries {
            let g = rng.index(groups);
            let searcher = &accounts[group_members[g][rng.index(GROUP_MEMBERS.min(users))]];
            let query = make(&words, &mut rng, &group_ids[g]);
            let (text, filters) = query.split_once('&').unwrap_or((&query, ""));
            let path = format!(
                "/api/v1/search?q={}{}{filters}",
                text.replace(' ', "%20"),
                if filters.is_empty() { "" } else { "&" }
            );
            let started = Instant::now();
            let answer = search(&mut http, searcher, &path).await?;
            let elapsed = started.elapsed().as_micros() as u64;
            latencies.record(elapsed.max(1))?;
            all.record(elapsed.max(1))?;
            hits_total += answer["hits"].as_array().map_or(0, Vec::len);
        }
        report.latency(key, label, &latencies);
    }
    report.latency("all", "every query", &all);
    report.add(
        "hits_per_query",
        "hits per query (page of 20)",
        hits_total as f64 / (kinds_count * queries) as f64,
    );
    cpu.finish(&server, &mut report);
    drop(server);
    let _ = std::fs::remove_dir_all(&data_dir);
    report.finish(out)
}

async fn search(http: &mut Http, account: &Account, path: &str) -> anyhow::Result<Value> {
    http.expect(200, "GET", path, Some(&account.token), None)
        .await
}
