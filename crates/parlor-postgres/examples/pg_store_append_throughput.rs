//! Measures `PgStore::append_events` with messages the way the persister drives it: one batch at a time,
//! 256 messages of 100 bytes each, spread over 100 conversations, every commit flushed to
//! disk (`synchronous_commit = on`).
//!
//! `cargo run --release -p parlor-postgres --example pg_store_append_throughput [-- BATCHES [PERSISTERS]]`
//! (default 100 batches, 1 persister). With several persisters, each runs its own loop of
//! batches on its own store handle, all on the same conversations, as several persister
//! processes would; BATCHES is per persister.
//!
//! The server comes from `PARLOR_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, see `scripts/services up`); the run uses a
//! database of its own, `parlor_bench_<uuid>`, dropped at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parlor_core::events::Change;
use parlor_core::ids::{ConversationId, UserId};
use parlor_core::ports::{Appended, NewEvent, Store};
use parlor_postgres::PgStore;
use time::OffsetDateTime;
use tokio_postgres::{Config, NoTls};
use uuid::Uuid;

const BATCH_MESSAGES: usize = 256;
const BODY_BYTES: usize = 100;
const CONVERSATIONS: usize = 100;
const POOL_SIZE: usize = 4;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let batches: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 100,
    };
    let persisters: usize = match std::env::args().nth(2) {
        Some(arg) => arg.parse()?,
        None => 1,
    };
    let url = std::env::var("PARLOR_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let admin: Config = url.parse()?;
    let (admin_client, connection) = admin.connect(NoTls).await.map_err(|error| {
        format!("PostgreSQL at {url}: {error}; start it with: eval \"$(scripts/services up)\"")
    })?;
    tokio::spawn(connection);
    let name = format!("parlor_bench_{}", Uuid::now_v7().simple());
    admin_client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let mut config = admin.clone();
    config.dbname(&name);

    let result = measure(config, batches, persisters).await;
    admin_client
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await?;
    result
}

async fn measure(
    config: Config,
    batches: usize,
    persisters: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let store = PgStore::connect_with(config.clone(), POOL_SIZE).await?;
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
    let conversations = Arc::new(conversations);

    let mut loops = tokio::task::JoinSet::new();
    let started = Instant::now();
    for persister in 0..persisters {
        let store = PgStore::connect_with(config.clone(), POOL_SIZE).await?;
        let conversations = Arc::clone(&conversations);
        let senders = [ann.id, bob.id];
        loops.spawn(async move {
            append_loop(&store, persister, batches, &conversations, senders).await
        });
    }
    let mut slowest = Duration::ZERO;
    while let Some(finished) = loops.join_next().await {
        slowest = slowest.max(finished??);
    }
    let elapsed = started.elapsed();

    let messages = persisters * batches * BATCH_MESSAGES;
    println!(
        "{messages} messages in {batches} batches of {BATCH_MESSAGES} per persister, \
         {persisters} persister(s) ({BODY_BYTES}-byte bodies, {CONVERSATIONS} conversations): \
         {:.2} s, {:.0} msgs/s, {:.1} ms mean and {:.1} ms max per batch",
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e3 / batches as f64,
        slowest.as_secs_f64() * 1e3,
    );
    Ok(())
}

/// One persister: `batches` batches, one after the other; returns the slowest batch.
async fn append_loop(
    store: &PgStore,
    persister: usize,
    batches: usize,
    conversations: &[ConversationId],
    senders: [UserId; 2],
) -> Result<Duration, String> {
    let body = "x".repeat(BODY_BYTES);
    let mut slowest = Duration::ZERO;
    for batch in 0..batches {
        let messages: Vec<NewEvent> = (0..BATCH_MESSAGES)
            .map(|i| {
                let n = batch * BATCH_MESSAGES + i;
                NewEvent {
                    conversation_id: conversations[n % CONVERSATIONS],
                    sender_id: senders[n % 2],
                    client_msg_id: format!("p{persister}-m{n}"),
                    accepted_at: OffsetDateTime::now_utc(),
                    change: Change::Message {
                        body: body.clone(),
                        reply_to_seq: None,
                        files: Vec::new(),
                    },
                }
            })
            .collect();
        let batch_started = Instant::now();
        let appended = store
            .append_events(&messages)
            .await
            .map_err(|error| error.to_string())?;
        slowest = slowest.max(batch_started.elapsed());
        let stored = appended
            .iter()
            .filter(|a| matches!(a, Appended::New(_)))
            .count();
        assert_eq!(stored, BATCH_MESSAGES, "every message is new");
    }
    Ok(slowest)
}
