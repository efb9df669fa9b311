//! Measures `SqliteStore::append_events` the way the persister drives it: one batch at a
//! time, 256 messages of 100 bytes of words each, spread over 100 conversations, every
//! commit fsynced.
//!
//! `cargo run -p parlor-embedded --example store_append_throughput [--release] [-- BATCHES]`
//! (default 100 batches). The database lives in a temporary directory, on the disk that
//! holds `TMPDIR`: point that at the disk you want to measure.

use std::time::{Duration, Instant};

use parlor_core::events::Change;
use parlor_core::ports::{Appended, NewEvent, Store};
use parlor_embedded::SqliteStore;
use time::OffsetDateTime;

const BATCH_MESSAGES: usize = 256;
const BODY_BYTES: usize = 100;
const CONVERSATIONS: usize = 100;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let batches: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 100,
    };
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("parlor.db"))?;

    let ann = store.create_user("ann", "hash").await?.ok_or("ann taken")?;
    let bob = store.create_user("bob", "hash").await?.ok_or("bob taken")?;
    let mut conversations = Vec::with_capacity(CONVERSATIONS);
    for i in 0..CONVERSATIONS {
        conversations.push(
            store
                .create_group(ann.id, &format!("room {i}"), &[bob.id])
                .await?,
        );
    }

    // Words, as chat is: a full-text index pays per word, not per byte.
    const WORDS: &[&str] = &[
        "the", "release", "notes", "are", "ready", "for", "review", "tomorrow", "morning",
        "deploy", "build", "budget", "meeting", "lunch", "team", "design", "call", "plan",
    ];
    let body_of = |n: usize| {
        let mut body = String::with_capacity(BODY_BYTES + 16);
        let mut k = n;
        while body.len() < BODY_BYTES {
            body.push_str(WORDS[k % WORDS.len()]);
            body.push(' ');
            k = k / 3 + 7;
        }
        body.truncate(BODY_BYTES);
        body
    };
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for batch in 0..batches {
        let messages: Vec<NewEvent> = (0..BATCH_MESSAGES)
            .map(|i| {
                let n = batch * BATCH_MESSAGES + i;
                NewEvent {
                    conversation_id: conversations[n % CONVERSATIONS],
                    sender_id: if n.is_multiple_of(2) { ann.id } else { bob.id },
                    client_msg_id: format!("m{n}"),
                    accepted_at: OffsetDateTime::now_utc(),
                    change: Change::Message {
                        body: body_of(n),
                        reply_to_seq: None,
                        files: Vec::new(),
                    },
                }
            })
            .collect();
        let batch_started = Instant::now();
        let appended = store.append_events(&messages).await?;
        slowest = slowest.max(batch_started.elapsed());
        let stored = appended
            .iter()
            .filter(|a| matches!(a, Appended::New(_)))
            .count();
        assert_eq!(stored, BATCH_MESSAGES, "every message is new");
    }
    let elapsed = started.elapsed();

    let messages = batches * BATCH_MESSAGES;
    println!(
        "{messages} messages in {batches} batches of {BATCH_MESSAGES} ({BODY_BYTES}-byte bodies, \
         {CONVERSATIONS} conversations): {:.2} s, {:.0} msgs/s, {:.1} ms mean and {:.1} ms max per batch",
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e3 / batches as f64,
        slowest.as_secs_f64() * 1e3,
    );
    Ok(())
}
