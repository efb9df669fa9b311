//! [`PgStore`]: the cluster [`Store`], on PostgreSQL (15 or later).
//!
//! Shape: a pool of connections; every call takes one, runs one statement or one transaction
//! on it and gives it back. Statements are prepared once per connection and cached.
//! Statements that do not need each other's results are sent together: tokio-postgres
//! pipelines the queries of one connection that are polled at the same time, so a batch of
//! appends costs a few round trips whatever its size.
//!
//! Invariants, kept inside one transaction per write, for any number of processes:
//! - `messages.seq` is `conversations.last_seq + 1`, assigned while the transaction holds
//!   the conversation row locked (`FOR UPDATE`), so per conversation the seqs are 1, 2, 3…
//!   with no gaps and no repeats.
//! - `(sender_id, client_msg_id)` is unique: a repeat returns the first message.
//! - `members.last_read_seq <= conversations.last_seq` and never decreases.
//!
//! Times are stored as unix nanoseconds (UTC) in `*_ns` bigint columns, as in the embedded
//! store: exact for every `OffsetDateTime` between 1677 and 2262 (`timestamptz` keeps only
//! microseconds).

use std::collections::{HashMap, HashSet};
use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use futures::future::{try_join, try_join3};
use parlor_core::error::BackendError;
use parlor_core::ids::{ConversationId, MessageId, Seq, UserId};
use parlor_core::ports::{Appended, ConversationView, NewMessage, Page, Session, Store, TokenHash};
use parlor_core::protocol::{ConversationKind, Message, User};
use time::{OffsetDateTime, UtcOffset};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Config, NoTls, Row};
use uuid::Uuid;

/// `Page::limit` is clamped to `1..=PAGE_MESSAGES_MAX`, as in the embedded store.
const PAGE_MESSAGES_MAX: u16 = 200;
/// How many times one batch of appends is tried when it conflicts with a concurrent
/// transaction (a deadlock, the same client message stored for another conversation). Each
/// conflict means another transaction made progress, so a few attempts are plenty.
const APPEND_ATTEMPTS: u32 = 5;
/// How long opening a connection may take, and how long a call waits for a free pooled
/// connection, before failing with `Unavailable`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(5);
/// The advisory lock that serializes migrations across processes: "parlor" in ASCII.
const MIGRATION_LOCK: i64 = 0x7061_726c_6f72;
/// Names the unique constraint on `(sender_id, client_msg_id)`.
const CLIENT_MSG_ID_CONSTRAINT: &str = "messages_sender_client_msg_id_key";

/// Schema migrations, applied in order; `parlor_schema_migrations` records which ran.
/// Append new ones at the end, never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_messages_without_foreign_keys.sql"),
];

/// The cluster [`Store`]: users, sessions, conversations, messages and read markers in one
/// PostgreSQL database, shared by any number of processes.
///
/// Every commit is flushed to disk by the server before it returns (`synchronous_commit =
/// on`), so the persister may acknowledge its queue as soon as
/// [`Store::append_messages`] returns `Ok`. A caller that stops waiting (its future
/// dropped) leaves a transaction that commits or rolls back as a whole; a retried batch is
/// then answered with duplicates.
pub struct PgStore {
    pool: Pool,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/dbname` or the
    /// `key=value` form) with up to `pool_size` connections, and applies any migrations
    /// this build has that the database has not seen yet. Without TLS.
    ///
    /// Fails with `Rejected` if the URL is malformed, `pool_size` is 0 or the database's
    /// schema is newer than this build knows, and with `Unavailable` if the server cannot
    /// be reached.
    pub async fn connect(url: &str, pool_size: usize) -> Result<PgStore, BackendError> {
        let config: Config = url.parse().map_err(|error| {
            BackendError::rejected(format!("connect: malformed PostgreSQL url: {error}"))
                .with_source(error)
        })?;
        PgStore::connect_with(config, pool_size).await
    }

    /// [`PgStore::connect`] with a parsed configuration.
    pub async fn connect_with(
        mut config: Config,
        pool_size: usize,
    ) -> Result<PgStore, BackendError> {
        if pool_size == 0 {
            return Err(BackendError::rejected(
                "connect: pool_size must be at least 1",
            ));
        }
        // Every pooled connection starts with synchronous_commit = on (sent at connect time,
        // so no connection can miss it): a commit returns only once its WAL is on disk, so a
        // stored message survives a crash of the server, which is what lets the persister
        // acknowledge its queue right after. A server, database or role default of `off`
        // would otherwise lose the last commits silently.
        //
        // plan_cache_mode = force_custom_plan: each execution of a prepared statement is
        // planned for the data at hand. A generic plan cached while a table was small (a
        // fresh database) scans it whole ever after: with 75 000 messages, the duplicate
        // lookup of one batch took 15 ms instead of well under one.
        let ours = "-c synchronous_commit=on -c plan_cache_mode=force_custom_plan";
        let options = match config.get_options() {
            Some(given) => format!("{given} {ours}"),
            None => ours.to_owned(),
        };
        config.options(options);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|error| {
                BackendError::rejected(format!("connect: cannot build the pool: {error}"))
                    .with_source(error)
            })?;
        let store = PgStore { pool };
        run("migrate schema", store.migrate()).await?;
        Ok(store)
    }

    async fn client(&self) -> Result<Object, Failure> {
        Ok(self.pool.get().await?)
    }

    async fn migrate(&self) -> Result<(), Failure> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Held until commit: processes starting together migrate one after the other, and
        // all but the first find nothing left to do.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS parlor_schema_migrations (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
        let applied: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM parlor_schema_migrations",
                &[],
            )
            .await?
            .try_get(0)?;
        let Some(applied_count) = usize::try_from(applied)
            .ok()
            .filter(|&count| count <= MIGRATIONS.len())
        else {
            return Err(Failure::Rejected(format!(
                "the database schema is version {applied}, this build knows versions 0 to {}",
                MIGRATIONS.len()
            )));
        };
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied_count) {
            tx.batch_execute(migration).await?;
            let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
            tx.execute(
                "INSERT INTO parlor_schema_migrations (version) VALUES ($1)",
                &[&version],
            )
            .await?;
            tracing::info!(version, "applied store migration");
        }
        tx.commit().await?;
        Ok(())
    }

    async fn append_once(&self, batch: &[NewMessage]) -> Result<Vec<Appended>, Failure> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (lock, stored, membership) = try_join3(
            // ORDER BY: rows are locked in id order, so two transactions that share
            // conversations wait for each other instead of deadlocking.
            tx.prepare_cached(
                "SELECT id, last_seq FROM conversations WHERE id = ANY($1::uuid[])
                 ORDER BY id FOR UPDATE",
            ),
            tx.prepare_cached(
                "SELECT id, conversation_id, seq, sender_id, client_msg_id, body, created_at_ns
                 FROM messages WHERE (sender_id, client_msg_id) IN
                     (SELECT * FROM unnest($1::uuid[], $2::text[]))",
            ),
            tx.prepare_cached(
                "SELECT conversation_id, user_id FROM members WHERE (conversation_id, user_id) IN
                     (SELECT * FROM unnest($1::uuid[], $2::uuid[]))",
            ),
        )
        .await?;

        let mut conversation_ids: Vec<Uuid> = batch.iter().map(|m| m.conversation_id.0).collect();
        conversation_ids.sort_unstable();
        conversation_ids.dedup();
        let sender_ids: Vec<Uuid> = batch.iter().map(|m| m.sender_id.0).collect();
        let batch_conversation_ids: Vec<Uuid> = batch.iter().map(|m| m.conversation_id.0).collect();
        // A client_msg_id with NUL would fail the whole lookup; it cannot have been stored,
        // and is rejected below.
        let (lookup_senders, lookup_client_msg_ids): (Vec<Uuid>, Vec<&str>) = batch
            .iter()
            .filter(|m| !m.client_msg_id.contains('\0'))
            .map(|m| (m.sender_id.0, m.client_msg_id.as_str()))
            .unzip();
        // Sent together and run in this order: the lookups run once the locks are held, so
        // they see every message committed before. Should a concurrent append still store
        // one of these client messages first (for another conversation, whose lock this
        // transaction does not take), the unique constraint fails this attempt and the next
        // one finds it.
        let (locked, stored, membership) = try_join3(
            tx.query(&lock, &[&conversation_ids]),
            tx.query(&stored, &[&lookup_senders, &lookup_client_msg_ids]),
            tx.query(&membership, &[&batch_conversation_ids, &sender_ids]),
        )
        .await?;

        let mut last_seqs: HashMap<ConversationId, Seq> = HashMap::with_capacity(locked.len());
        for row in &locked {
            last_seqs.insert(
                ConversationId(row.try_get(0)?),
                row.try_get::<_, SeqColumn>(1)?.0,
            );
        }
        let mut known: HashMap<(UserId, String), Message> = HashMap::with_capacity(batch.len());
        for row in &stored {
            let message = message_row(row)?;
            known.insert((message.sender_id, message.client_msg_id.clone()), message);
        }
        let mut members: HashSet<(ConversationId, UserId)> = HashSet::with_capacity(batch.len());
        for row in &membership {
            members.insert((ConversationId(row.try_get(0)?), UserId(row.try_get(1)?)));
        }

        let mut rows = NewRows::default();
        let mut results = Vec::with_capacity(batch.len());
        for new in batch {
            // `known` also holds the messages stored earlier in this batch, so a repeat
            // within the batch finds the first one.
            let key = (new.sender_id, new.client_msg_id.clone());
            if let Some(first) = known.get(&key) {
                results.push(Appended::Duplicate(first.clone()));
                continue;
            }
            let last_seq = match last_seqs.get_mut(&new.conversation_id) {
                Some(last_seq) if members.contains(&(new.conversation_id, new.sender_id)) => {
                    last_seq
                }
                _ => {
                    results.push(Appended::Rejected(format!(
                        "user {} is not a member of conversation {} (or it does not exist)",
                        new.sender_id, new.conversation_id
                    )));
                    continue;
                }
            };
            let created_at_ns = match nanos(new.accepted_at) {
                Ok(created_at_ns) => created_at_ns,
                Err(Failure::Rejected(reason)) => {
                    results.push(Appended::Rejected(reason));
                    continue;
                }
                Err(failure) => return Err(failure),
            };
            // PostgreSQL text cannot hold NUL; validation keeps it out, this keeps one such
            // message from failing the whole batch.
            if new.body.contains('\0') || new.client_msg_id.contains('\0') {
                results.push(Appended::Rejected(
                    "cannot store message: text must not contain NUL".to_owned(),
                ));
                continue;
            }
            *last_seq += 1;
            let message = Message {
                id: MessageId::new(),
                conversation_id: new.conversation_id,
                seq: *last_seq,
                sender_id: new.sender_id,
                client_msg_id: new.client_msg_id.clone(),
                body: new.body.clone(),
                // What reading the row back yields: the same instant, in UTC.
                created_at: new.accepted_at.to_offset(UtcOffset::UTC),
            };
            rows.push(&message, created_at_ns);
            known.insert(key, message.clone());
            results.push(Appended::New(message));
        }

        if !rows.ids.is_empty() {
            let (insert, advance, read_own) = try_join3(
                tx.prepare_cached(
                    "INSERT INTO messages
                         (conversation_id, seq, id, sender_id, client_msg_id, body, created_at_ns)
                     SELECT * FROM unnest($1::uuid[], $2::int8[], $3::uuid[], $4::uuid[],
                                          $5::text[], $6::text[], $7::int8[])"
                ),
                tx.prepare_cached(
                    "UPDATE conversations c
                     SET last_seq = v.last_seq,
                         last_activity_at_ns = greatest(c.last_activity_at_ns, v.activity_ns)
                     FROM unnest($1::uuid[], $2::int8[], $3::int8[]) AS v (id, last_seq, activity_ns)
                     WHERE c.id = v.id"
                ),
                tx.prepare_cached(
                    "UPDATE members m SET last_read_seq = greatest(m.last_read_seq, v.seq)
                     FROM unnest($1::uuid[], $2::uuid[], $3::int8[]) AS v (conversation_id, user_id, seq)
                     WHERE m.conversation_id = v.conversation_id AND m.user_id = v.user_id"
                ),
            ).await?;
            let advanced = rows.advanced_columns();
            let read = rows.read_own_columns();
            let (inserted, updated, _) = try_join3(
                tx.execute(
                    &insert,
                    &[
                        &rows.conversation_ids,
                        &rows.seqs,
                        &rows.ids,
                        &rows.sender_ids,
                        &rows.client_msg_ids,
                        &rows.bodies,
                        &rows.created_at_ns,
                    ],
                ),
                tx.execute(&advance, &[&advanced.0, &advanced.1, &advanced.2]),
                tx.execute(&read_own, &[&read.0, &read.1, &read.2]),
            )
            .await?;
            assert_eq!(
                inserted,
                rows.ids.len() as u64,
                "every new message inserted"
            );
            assert_eq!(
                updated,
                advanced.0.len() as u64,
                "locked conversations advanced"
            );
        }
        tx.commit().await?;
        Ok(results)
    }
}

/// The messages a batch stores, as column arrays for one multi-row INSERT, and what they
/// move: each conversation's last seq and activity, each sender's read marker.
#[derive(Default)]
struct NewRows {
    conversation_ids: Vec<Uuid>,
    seqs: Vec<i64>,
    ids: Vec<Uuid>,
    sender_ids: Vec<Uuid>,
    client_msg_ids: Vec<String>,
    bodies: Vec<String>,
    created_at_ns: Vec<i64>,
    /// Per conversation: the last seq and the newest `created_at_ns` of the batch.
    advanced: HashMap<ConversationId, (Seq, i64)>,
    /// Per (conversation, sender): the sender's newest seq in the batch.
    read_own: HashMap<(ConversationId, UserId), Seq>,
}

impl NewRows {
    fn push(&mut self, message: &Message, created_at_ns: i64) {
        self.conversation_ids.push(message.conversation_id.0);
        self.seqs.push(seq_param(message.seq));
        self.ids.push(message.id.0);
        self.sender_ids.push(message.sender_id.0);
        self.client_msg_ids.push(message.client_msg_id.clone());
        self.bodies.push(message.body.clone());
        self.created_at_ns.push(created_at_ns);
        // Seqs only grow within a batch, so the latest is the largest.
        let advanced = self
            .advanced
            .entry(message.conversation_id)
            .or_insert((message.seq, created_at_ns));
        *advanced = (message.seq, advanced.1.max(created_at_ns));
        self.read_own
            .insert((message.conversation_id, message.sender_id), message.seq);
    }

    /// `(conversation ids, last seqs, activity times)` for the UPDATE of `conversations`.
    fn advanced_columns(&self) -> (Vec<Uuid>, Vec<i64>, Vec<i64>) {
        let mut columns = (Vec::new(), Vec::new(), Vec::new());
        for (conversation, (last_seq, activity_ns)) in &self.advanced {
            columns.0.push(conversation.0);
            columns.1.push(seq_param(*last_seq));
            columns.2.push(*activity_ns);
        }
        columns
    }

    /// `(conversation ids, user ids, seqs)` for the UPDATE of `members`.
    fn read_own_columns(&self) -> (Vec<Uuid>, Vec<Uuid>, Vec<i64>) {
        let mut columns = (Vec::new(), Vec::new(), Vec::new());
        for ((conversation, user), seq) in &self.read_own {
            columns.0.push(conversation.0);
            columns.1.push(user.0);
            columns.2.push(seq_param(*seq));
        }
        columns
    }
}

/// Why a call stopped; becomes a [`BackendError`] at the boundary.
#[derive(Debug)]
enum Failure {
    Db(tokio_postgres::Error),
    Pool(PoolError),
    /// The input can never succeed.
    Rejected(String),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Failure::Db(error)
    }
}

impl From<PoolError> for Failure {
    fn from(error: PoolError) -> Self {
        Failure::Pool(error)
    }
}

impl Failure {
    fn into_backend(self, operation: &str) -> BackendError {
        match self {
            Failure::Db(error) => db_error(operation, error),
            // No connection (a timeout, a refused or failed connect, a closed pool): the
            // database may be back in a moment.
            Failure::Pool(error) => {
                let message = match error.source() {
                    Some(source) => format!("{operation}: {error}: {source}"),
                    None => format!("{operation}: {error}"),
                };
                BackendError::unavailable(message).with_source(error)
            }
            Failure::Rejected(reason) => BackendError::rejected(format!("{operation}: {reason}")),
        }
    }
}

/// Data exceptions (class 22: NUL in text, a value out of range) and integrity violations
/// (class 23: an unknown user, a reused token) come from the input and can never succeed:
/// `Rejected`. A full disk (53100 `disk_full`) is an outage that ends when space is freed:
/// `StorageFull`. Everything else (a lost connection, a restarting server, a deadlock) may
/// pass: `Unavailable`.
fn db_error(operation: &str, error: tokio_postgres::Error) -> BackendError {
    let message = match (error.as_db_error(), error.source()) {
        (Some(db), _) => format!("{operation}: {db}"),
        (None, Some(source)) => format!("{operation}: {error}: {source}"),
        (None, None) => format!("{operation}: {error}"),
    };
    if error.code() == Some(&SqlState::DISK_FULL) {
        return BackendError::storage_full(message).with_source(error);
    }
    let class = error.code().map(|code| &code.code()[..2]);
    match class {
        Some("22" | "23") => BackendError::rejected(message),
        _ => BackendError::unavailable(message),
    }
    .with_source(error)
}

/// A conflict with a concurrent transaction that a new attempt resolves: a serialization
/// failure, a deadlock, or another append that stored the same (sender, client_msg_id)
/// first (the new attempt finds that message and answers `Duplicate`).
fn is_conflict(failure: &Failure) -> bool {
    let Failure::Db(error) = failure else {
        return false;
    };
    let Some(db) = error.as_db_error() else {
        return false;
    };
    let code = db.code();
    *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || (*code == SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some(CLIENT_MSG_ID_CONSTRAINT))
}

/// Runs `work` and names the operation in its error.
async fn run<T>(
    operation: &str,
    work: impl Future<Output = Result<T, Failure>>,
) -> Result<T, BackendError> {
    work.await
        .map_err(|failure| failure.into_backend(operation))
}

/// A stored seq: a non-negative bigint.
struct SeqColumn(Seq);

impl<'a> FromSql<'a> for SeqColumn {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(SeqColumn(Seq::try_from(i64::from_sql(ty, raw)?)?))
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as FromSql>::accepts(ty)
    }
}

/// A stored time: unix nanoseconds, read back in UTC.
struct Nanos(OffsetDateTime);

impl<'a> FromSql<'a> for Nanos {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let raw = i64::from_sql(ty, raw)?;
        Ok(Nanos(OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(raw),
        )?))
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as FromSql>::accepts(ty)
    }
}

struct KindColumn(ConversationKind);

impl<'a> FromSql<'a> for KindColumn {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        match <&str as FromSql>::from_sql(ty, raw)? {
            "direct" => Ok(KindColumn(ConversationKind::Direct)),
            "group" => Ok(KindColumn(ConversationKind::Group)),
            other => Err(format!("unknown conversation kind {other:?}").into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}

fn kind_text(kind: ConversationKind) -> &'static str {
    match kind {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    }
}

/// `at` as stored: unix nanoseconds. Outside 1677–2262 it does not fit, and never will.
fn nanos(at: OffsetDateTime) -> Result<i64, Failure> {
    i64::try_from(at.unix_timestamp_nanos())
        .map_err(|_| Failure::Rejected(format!("time {at} is outside the storable range")))
}

/// A seq to bind: seqs past `i64::MAX` cannot exist, so larger bounds mean "all of them".
fn seq_param(seq: Seq) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn now_nanos() -> Result<i64, Failure> {
    nanos(OffsetDateTime::now_utc())
}

/// The first occurrence of each id, in order.
fn distinct<T: Copy + Eq + std::hash::Hash>(ids: &[T]) -> Vec<T> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// A LIKE pattern matching folded names that start with `prefix`. `\` is LIKE's escape
/// character in PostgreSQL: usernames may contain `_`, which LIKE would otherwise take as
/// a wildcard. ASCII-only folding, as the `users_by_folded_name` index does.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 2);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c.to_ascii_lowercase());
    }
    pattern.push('%');
    pattern
}

fn direct_key(a: UserId, b: UserId) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("{low}:{high}")
}

fn user_row(row: &Row) -> Result<User, tokio_postgres::Error> {
    Ok(User {
        id: UserId(row.try_get(0)?),
        username: row.try_get(1)?,
    })
}

/// Column order: `id, conversation_id, seq, sender_id, client_msg_id, body, created_at_ns`.
fn message_row(row: &Row) -> Result<Message, tokio_postgres::Error> {
    Ok(Message {
        id: MessageId(row.try_get(0)?),
        conversation_id: ConversationId(row.try_get(1)?),
        seq: row.try_get::<_, SeqColumn>(2)?.0,
        sender_id: UserId(row.try_get(3)?),
        client_msg_id: row.try_get(4)?,
        body: row.try_get(5)?,
        created_at: row.try_get::<_, Nanos>(6)?.0,
    })
}

/// The start of a query for conversation views; callers add the `WHERE` clause.
macro_rules! select_views {
    () => {
        "SELECT c.id, c.kind, c.title, c.last_seq, m.last_read_seq,
           msg.id, msg.sender_id, msg.client_msg_id, msg.body, msg.created_at_ns
    FROM members m
    JOIN conversations c ON c.id = m.conversation_id
    LEFT JOIN messages msg ON msg.conversation_id = c.id AND msg.seq = c.last_seq"
    };
}

fn view_row(row: &Row) -> Result<ConversationView, tokio_postgres::Error> {
    let id = ConversationId(row.try_get(0)?);
    let last_seq = row.try_get::<_, SeqColumn>(3)?.0;
    let last_message = match row.try_get::<_, Option<Uuid>>(5)? {
        None => None,
        Some(message_id) => Some(Message {
            id: MessageId(message_id),
            conversation_id: id,
            seq: last_seq,
            sender_id: UserId(row.try_get(6)?),
            client_msg_id: row.try_get(7)?,
            body: row.try_get(8)?,
            created_at: row.try_get::<_, Nanos>(9)?.0,
        }),
    };
    Ok(ConversationView {
        id,
        kind: row.try_get::<_, KindColumn>(1)?.0,
        title: row.try_get(2)?,
        members: Vec::new(),
        last_message,
        last_seq,
        last_read_seq: row.try_get::<_, SeqColumn>(4)?.0,
    })
}

/// Fills each view's members from `(conversation id, user id, username)` rows, which come
/// ordered by name.
fn attach_members(
    views: &mut [ConversationView],
    member_rows: &[Row],
) -> Result<(), tokio_postgres::Error> {
    let mut by_conversation: HashMap<ConversationId, Vec<User>> = HashMap::new();
    for row in member_rows {
        by_conversation
            .entry(ConversationId(row.try_get(0)?))
            .or_default()
            .push(User {
                id: UserId(row.try_get(1)?),
                username: row.try_get(2)?,
            });
    }
    for view in views {
        view.members = by_conversation.remove(&view.id).unwrap_or_default();
    }
    Ok(())
}

/// Inserts a conversation and its members unless it is a direct one whose pair already has
/// one (committed by a concurrent call); `false` then, and nothing is inserted.
async fn insert_conversation(
    tx: &deadpool_postgres::Transaction<'_>,
    id: ConversationId,
    kind: ConversationKind,
    title: Option<&str>,
    direct_key: Option<&str>,
    members: &[UserId],
) -> Result<bool, Failure> {
    let now = now_nanos()?;
    let (conversation, member) = try_join(
        tx.prepare_cached(
            "INSERT INTO conversations
                 (id, kind, title, direct_key, last_activity_at_ns, created_at_ns)
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (direct_key) DO NOTHING",
        ),
        tx.prepare_cached(
            "INSERT INTO members (conversation_id, user_id) SELECT $1, unnest($2::uuid[])",
        ),
    )
    .await?;
    let inserted = tx
        .execute(
            &conversation,
            &[&id.0, &kind_text(kind), &title, &direct_key, &now],
        )
        .await?;
    if inserted == 0 {
        return Ok(false);
    }
    let member_ids: Vec<Uuid> = members.iter().map(|m| m.0).collect();
    tx.execute(&member, &[&id.0, &member_ids]).await?;
    Ok(true)
}

#[async_trait]
impl Store for PgStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<Option<User>, BackendError> {
        run("create user", async {
            let user = User {
                id: UserId::new(),
                username: username.to_owned(),
            };
            let client = self.client().await?;
            // Only a clash on the name is an answer; any other conflict is an error.
            let statement = client
                .prepare_cached(
                    r#"INSERT INTO users (id, username, password_hash, created_at_ns)
                       VALUES ($1, $2, $3, $4)
                       ON CONFLICT ((lower(username COLLATE "C"))) DO NOTHING"#,
                )
                .await?;
            let inserted = client
                .execute(
                    &statement,
                    &[&user.id.0, &user.username, &password_hash, &now_nanos()?],
                )
                .await?;
            Ok((inserted == 1).then_some(user))
        })
        .await
    }

    async fn user_credentials(
        &self,
        username: &str,
    ) -> Result<Option<(User, String)>, BackendError> {
        run("user credentials", async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    r#"SELECT id, username, password_hash FROM users
                       WHERE lower(username COLLATE "C") = $1"#,
                )
                .await?;
            let folded = username.to_ascii_lowercase();
            let Some(row) = client.query_opt(&statement, &[&folded]).await? else {
                return Ok(None);
            };
            Ok(Some((user_row(&row)?, row.try_get(2)?)))
        })
        .await
    }

    async fn users_by_prefix(&self, prefix: &str, limit: u16) -> Result<Vec<User>, BackendError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        run("users by prefix", async {
            let client = self.client().await?;
            // The folded name under "C" sorts as SQLite's NOCASE does, and LIKE with a
            // fixed prefix can use the users_by_folded_name index.
            let statement = client
                .prepare_cached(
                    r#"SELECT id, username FROM users
                       WHERE lower(username COLLATE "C") LIKE $1
                       ORDER BY lower(username COLLATE "C") LIMIT $2"#,
                )
                .await?;
            let rows = client
                .query(&statement, &[&like_prefix(prefix), &i64::from(limit)])
                .await?;
            Ok(rows.iter().map(user_row).collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>, BackendError> {
        let ids = distinct(ids);
        run("users", async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached("SELECT id, username FROM users WHERE id = ANY($1::uuid[])")
                .await?;
            let wanted: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
            let mut found = HashMap::with_capacity(ids.len());
            for row in client.query(&statement, &[&wanted]).await? {
                let user = user_row(&row)?;
                found.insert(user.id, user);
            }
            // In the order asked for, as the embedded store answers.
            Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
        })
        .await
    }

    async fn set_last_seen(&self, user: UserId, at: OffsetDateTime) -> Result<(), BackendError> {
        run("set last seen", async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached("UPDATE users SET last_seen_ns = $2 WHERE id = $1")
                .await?;
            let updated = client.execute(&statement, &[&user.0, &nanos(at)?]).await?;
            if updated == 0 {
                return Err(Failure::Rejected(format!("no user {user}")));
            }
            Ok(())
        })
        .await
    }

    async fn last_seen(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(UserId, Option<OffsetDateTime>)>, BackendError> {
        let ids = distinct(users);
        run("last seen", async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached("SELECT id, last_seen_ns FROM users WHERE id = ANY($1::uuid[])")
                .await?;
            let wanted: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
            let mut found = HashMap::with_capacity(ids.len());
            for row in client.query(&statement, &[&wanted]).await? {
                let at = row.try_get::<_, Option<Nanos>>(1)?.map(|Nanos(at)| at);
                found.insert(UserId(row.try_get(0)?), at);
            }
            Ok(ids
                .iter()
                .filter_map(|id| found.remove(id).map(|at| (*id, at)))
                .collect())
        })
        .await
    }

    async fn create_session(
        &self,
        token: TokenHash,
        user: UserId,
        expires_at: OffsetDateTime,
    ) -> Result<(), BackendError> {
        run("create session", async {
            let client = self.client().await?;
            // An unknown user or a reused token violates a constraint: Rejected.
            let statement = client
                .prepare_cached(
                    "INSERT INTO sessions (token_hash, user_id, created_at_ns, expires_at_ns)
                     VALUES ($1, $2, $3, $4)",
                )
                .await?;
            client
                .execute(
                    &statement,
                    &[&&token.0[..], &user.0, &now_nanos()?, &nanos(expires_at)?],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn session_user(
        &self,
        token: TokenHash,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, BackendError> {
        run("session user", async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT u.id, u.username, s.expires_at_ns FROM sessions s
                     JOIN users u ON u.id = s.user_id
                     WHERE s.token_hash = $1 AND s.expires_at_ns > $2",
                )
                .await?;
            let row = client
                .query_opt(&statement, &[&&token.0[..], &nanos(now)?])
                .await?;
            let session = |row: &Row| -> Result<Session, tokio_postgres::Error> {
                Ok(Session {
                    user: user_row(row)?,
                    expires_at: row.try_get::<_, Nanos>(2)?.0,
                })
            };
            Ok(row.as_ref().map(session).transpose()?)
        })
        .await
    }

    async fn delete_session(&self, token: TokenHash) -> Result<(), BackendError> {
        run("delete session", async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached("DELETE FROM sessions WHERE token_hash = $1")
                .await?;
            client.execute(&statement, &[&&token.0[..]]).await?;
            Ok(())
        })
        .await
    }

    async fn create_direct(
        &self,
        a: UserId,
        b: UserId,
    ) -> Result<(ConversationId, bool), BackendError> {
        if a == b {
            return Err(BackendError::rejected(
                "create direct conversation: a direct conversation needs two different users",
            ));
        }
        run("create direct conversation", async {
            let key = direct_key(a, b);
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let (existing, known) = try_join(
                tx.prepare_cached("SELECT id FROM conversations WHERE direct_key = $1"),
                tx.prepare_cached("SELECT count(*) FROM users WHERE id = ANY($1::uuid[])"),
            )
            .await?;
            if let Some(row) = tx.query_opt(&existing, &[&key]).await? {
                return Ok((ConversationId(row.try_get(0)?), false));
            }
            let count: i64 = tx.query_one(&known, &[&vec![a.0, b.0]]).await?.try_get(0)?;
            if count != 2 {
                return Err(Failure::Rejected(format!("no user {a} or no user {b}")));
            }
            let id = ConversationId::new();
            let kind = ConversationKind::Direct;
            if !insert_conversation(&tx, id, kind, None, Some(&key), &[a, b]).await? {
                // Another call created the pair's conversation and committed after the
                // lookup above; this statement sees it.
                let row = tx.query_one(&existing, &[&key]).await?;
                return Ok((ConversationId(row.try_get(0)?), false));
            }
            tx.commit().await?;
            Ok((id, true))
        })
        .await
    }

    async fn create_group(
        &self,
        title: &str,
        members: &[UserId],
    ) -> Result<ConversationId, BackendError> {
        let members = distinct(members);
        if members.is_empty() {
            return Err(BackendError::rejected(
                "create group: a group needs at least one member",
            ));
        }
        run("create group", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let known = tx
                .prepare_cached("SELECT id FROM users WHERE id = ANY($1::uuid[])")
                .await?;
            let wanted: Vec<Uuid> = members.iter().map(|m| m.0).collect();
            let mut found = HashSet::with_capacity(members.len());
            for row in tx.query(&known, &[&wanted]).await? {
                found.insert(UserId(row.try_get(0)?));
            }
            if let Some(missing) = members.iter().find(|m| !found.contains(m)) {
                return Err(Failure::Rejected(format!("no user {missing}")));
            }
            let id = ConversationId::new();
            let kind = ConversationKind::Group;
            let inserted = insert_conversation(&tx, id, kind, Some(title), None, &members).await?;
            debug_assert!(inserted, "a group has no direct key to clash on");
            tx.commit().await?;
            Ok(id)
        })
        .await
    }

    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationView>, BackendError> {
        run("conversations of", async {
            let client = self.client().await?;
            let (views, members) = try_join(
                client.prepare_cached(concat!(
                    select_views!(),
                    " WHERE m.user_id = $1
                     ORDER BY c.last_activity_at_ns DESC, c.created_at_ns DESC, c.id DESC"
                )),
                client.prepare_cached(
                    r#"SELECT other.conversation_id, u.id, u.username
                       FROM members m
                       JOIN members other ON other.conversation_id = m.conversation_id
                       JOIN users u ON u.id = other.user_id
                       WHERE m.user_id = $1
                       ORDER BY lower(u.username COLLATE "C")"#,
                ),
            )
            .await?;
            // Two statements, run one after the other: every conversation the first one
            // sees was committed with all its members, which never change, so the second
            // one sees them too.
            let (view_rows, member_rows) = try_join(
                client.query(&views, &[&user.0]),
                client.query(&members, &[&user.0]),
            )
            .await?;
            let mut views = view_rows
                .iter()
                .map(view_row)
                .collect::<Result<Vec<_>, _>>()?;
            attach_members(&mut views, &member_rows)?;
            Ok(views)
        })
        .await
    }

    async fn conversation_of(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<Option<ConversationView>, BackendError> {
        run("conversation of", async {
            let client = self.client().await?;
            let (views, members) = try_join(
                client.prepare_cached(concat!(
                    select_views!(),
                    " WHERE m.user_id = $1 AND m.conversation_id = $2"
                )),
                client.prepare_cached(
                    r#"SELECT m.conversation_id, u.id, u.username
                       FROM members m JOIN users u ON u.id = m.user_id
                       WHERE m.conversation_id = $1
                       ORDER BY lower(u.username COLLATE "C")"#,
                ),
            )
            .await?;
            // Members are fetched whether or not `user` is one, to save a round trip;
            // a non-member gets `None` and never sees them.
            let (view_rows, member_rows) = try_join(
                client.query(&views, &[&user.0, &conversation.0]),
                client.query(&members, &[&conversation.0]),
            )
            .await?;
            let mut views = view_rows
                .iter()
                .map(view_row)
                .collect::<Result<Vec<_>, _>>()?;
            attach_members(&mut views, &member_rows)?;
            Ok(views.pop())
        })
        .await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        run("ping", async {
            let client = self.client().await?;
            client.simple_query("SELECT 1").await?;
            Ok(())
        })
        .await
    }

    async fn is_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<bool, BackendError> {
        run("is member", async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT EXISTS (
                         SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2
                     )",
                )
                .await?;
            let row = client
                .query_one(&statement, &[&conversation.0, &user.0])
                .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    async fn members(&self, conversation: ConversationId) -> Result<Vec<UserId>, BackendError> {
        run("members", async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT user_id FROM members WHERE conversation_id = $1 ORDER BY user_id",
                )
                .await?;
            let rows = client.query(&statement, &[&conversation.0]).await?;
            Ok(rows
                .iter()
                .map(|row| row.try_get(0).map(UserId))
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn contacts(
        &self,
        user: UserId,
        members_max: usize,
    ) -> Result<Vec<UserId>, BackendError> {
        let members_max = i64::try_from(members_max).unwrap_or(i64::MAX);
        run("contacts", async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT DISTINCT other.user_id
                     FROM members m
                     JOIN members other ON other.conversation_id = m.conversation_id
                     WHERE m.user_id = $1 AND other.user_id <> $1
                       AND (SELECT count(*) FROM members c
                            WHERE c.conversation_id = m.conversation_id) <= $2
                     ORDER BY other.user_id",
                )
                .await?;
            let rows = client.query(&statement, &[&user.0, &members_max]).await?;
            Ok(rows
                .iter()
                .map(|row| row.try_get(0).map(UserId))
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// One transaction for the whole batch, flushed to disk on commit; if it fails, nothing
    /// of the batch is stored and the error (`Unavailable`) is returned. It locks the
    /// batch's conversations (in id order), so concurrent appends to the same conversation,
    /// from any process, take turns. Per entry: a known (sender, client_msg_id) →
    /// `Duplicate` of the first message, whatever this entry's body or conversation; a
    /// sender who is not a member (or a conversation that does not exist) → `Rejected`;
    /// otherwise `New` with the next seq. A conflict with a concurrent transaction is
    /// retried a few times. Batches are bounded by the caller (the persister's batch size).
    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<Appended>, BackendError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut attempt = 1;
        loop {
            match self.append_once(batch).await {
                Ok(results) => return Ok(results),
                Err(failure) if attempt < APPEND_ATTEMPTS && is_conflict(&failure) => {
                    tracing::debug!(attempt, ?failure, "append conflicted, trying again");
                    attempt += 1;
                }
                Err(failure) => return Err(failure.into_backend("append messages")),
            }
        }
    }

    /// `after_seq` → the `limit` messages after it; else `before_seq` → the `limit` messages
    /// just below it; else the newest `limit`. Always ascending; `limit` is clamped to
    /// 1..=200. An unknown conversation has no messages.
    async fn messages(
        &self,
        conversation: ConversationId,
        page: Page,
    ) -> Result<Vec<Message>, BackendError> {
        run("messages", async {
            let limit = i64::from(page.limit.clamp(1, PAGE_MESSAGES_MAX));
            let client = self.client().await?;
            let messages = match (page.after_seq, page.before_seq) {
                (Some(after), _) => {
                    let statement = client
                        .prepare_cached(
                            "SELECT id, conversation_id, seq, sender_id, client_msg_id, body,
                                    created_at_ns
                             FROM messages WHERE conversation_id = $1 AND seq > $2
                             ORDER BY seq ASC LIMIT $3",
                        )
                        .await?;
                    let rows = client
                        .query(&statement, &[&conversation.0, &seq_param(after), &limit])
                        .await?;
                    rows.iter()
                        .map(message_row)
                        .collect::<Result<Vec<_>, _>>()?
                }
                (None, before) => {
                    // Newest first to take the `limit` just below the bound, then turned
                    // around.
                    let statement = client
                        .prepare_cached(
                            "SELECT id, conversation_id, seq, sender_id, client_msg_id, body,
                                    created_at_ns
                             FROM messages WHERE conversation_id = $1 AND seq < $2
                             ORDER BY seq DESC LIMIT $3",
                        )
                        .await?;
                    let below = before.map_or(i64::MAX, seq_param);
                    let rows = client
                        .query(&statement, &[&conversation.0, &below, &limit])
                        .await?;
                    let mut newest_first = rows
                        .iter()
                        .map(message_row)
                        .collect::<Result<Vec<_>, _>>()?;
                    newest_first.reverse();
                    newest_first
                }
            };
            Ok(messages)
        })
        .await
    }

    /// `Rejected` if `user` is not a member of `conversation`.
    async fn mark_read(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq: Seq,
    ) -> Result<Option<Seq>, BackendError> {
        run("mark read", async {
            let client = self.client().await?;
            // One statement that locks only the member row (the CTE's FOR UPDATE, which
            // reads the newest marker should an append move it meanwhile): still never
            // backwards, never past the last seq it read.
            let statement = client
                .prepare_cached(
                    "WITH marker AS (
                         SELECT m.last_read_seq AS old,
                                greatest(m.last_read_seq, least($3, c.last_seq)) AS new
                         FROM members m JOIN conversations c ON c.id = m.conversation_id
                         WHERE m.conversation_id = $1 AND m.user_id = $2
                         FOR UPDATE OF m
                     )
                     UPDATE members m SET last_read_seq = marker.new
                     FROM marker
                     WHERE m.conversation_id = $1 AND m.user_id = $2
                     RETURNING marker.old, marker.new",
                )
                .await?;
            let row = client
                .query_opt(&statement, &[&conversation.0, &user.0, &seq_param(seq)])
                .await?;
            let Some(row) = row else {
                return Err(Failure::Rejected(format!(
                    "user {user} is not a member of conversation {conversation}"
                )));
            };
            let (old, new) = (
                row.try_get::<_, SeqColumn>(0)?.0,
                row.try_get::<_, SeqColumn>(1)?.0,
            );
            Ok((new != old).then_some(new))
        })
        .await
    }
}

/// PostgreSQL-specific checks; the behaviour every store shares is checked by the contract
/// suite in `tests/contract`.
#[cfg(test)]
mod tests {
    use parlor_core::BackendErrorKind;

    use super::*;

    /// A fresh database on the test server (`PARLOR_TEST_PG_URL`), dropped at the end.
    struct TestDatabase {
        admin: Config,
        config: Config,
        name: String,
    }

    impl TestDatabase {
        async fn create() -> TestDatabase {
            let url = std::env::var("PARLOR_TEST_PG_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
            let mut admin: Config = url.parse().expect("PARLOR_TEST_PG_URL is a PostgreSQL url");
            admin.connect_timeout(Duration::from_secs(5));
            let name = format!("parlor_test_{}", Uuid::now_v7().simple());
            let database = TestDatabase {
                config: {
                    let mut config = admin.clone();
                    config.dbname(&name);
                    config
                },
                admin,
                name,
            };
            database
                .admin_client()
                .await
                .batch_execute(&format!("CREATE DATABASE {}", database.name))
                .await
                .expect("create test database");
            database
        }

        async fn admin_client(&self) -> tokio_postgres::Client {
            client(&self.admin).await
        }

        async fn store(&self, pool_size: usize) -> PgStore {
            PgStore::connect_with(self.config.clone(), pool_size)
                .await
                .expect("connect store")
        }
    }

    async fn client(config: &Config) -> tokio_postgres::Client {
        match config.connect(NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                client
            }
            Err(error) => panic!(
                "PostgreSQL is not reachable: {error:?}\n\
                 Start it (and get PARLOR_TEST_PG_URL) with: eval \"$(scripts/services up)\""
            ),
        }
    }

    impl Drop for TestDatabase {
        /// Best effort, on a thread of its own: `drop` cannot await.
        fn drop(&mut self) {
            let admin = self.admin.clone();
            let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let (client, connection) = admin.connect(NoTls).await?;
                    tokio::spawn(connection);
                    client.batch_execute(&statement).await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                })
            })
            .join();
        }
    }

    async fn user(store: &PgStore, name: &str) -> UserId {
        store.create_user(name, "hash").await.unwrap().unwrap().id
    }

    #[tokio::test]
    async fn every_pooled_connection_commits_synchronously_whatever_the_default() {
        let database = TestDatabase::create().await;
        let statement = format!(
            "ALTER DATABASE {} SET synchronous_commit = off",
            database.name
        );
        database
            .admin_client()
            .await
            .batch_execute(&statement)
            .await
            .unwrap();
        let plain = client(&database.config).await;
        let default: String = plain
            .query_one("SHOW synchronous_commit", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(default, "off", "the database default this test overrides");

        let store = database.store(3).await;
        // All at once, so that each is a connection of its own.
        let connections = [
            store.pool.get().await.unwrap(),
            store.pool.get().await.unwrap(),
            store.pool.get().await.unwrap(),
        ];
        for connection in &connections {
            let row = connection
                .query_one("SHOW synchronous_commit", &[])
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), "on");
            let row = connection
                .query_one("SHOW plan_cache_mode", &[])
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), "force_custom_plan");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processes_starting_together_migrate_once() {
        let database = TestDatabase::create().await;
        let starts: Vec<_> = (0..4)
            .map(|_| tokio::spawn(PgStore::connect_with(database.config.clone(), 1)))
            .collect();
        for start in starts {
            start.await.unwrap().expect("connect");
        }
        let versions: Vec<i32> = client(&database.config)
            .await
            .query(
                "SELECT version FROM parlor_schema_migrations ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let expected: Vec<i32> = (1..=MIGRATIONS.len() as i32).collect();
        assert_eq!(versions, expected);
    }

    #[tokio::test]
    async fn a_database_of_the_first_schema_is_brought_up_to_date() {
        let database = TestDatabase::create().await;
        let plain = client(&database.config).await;
        plain
            .batch_execute(&format!(
                "CREATE TABLE parlor_schema_migrations (
                     version integer PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 );
                 {}
                 INSERT INTO parlor_schema_migrations (version) VALUES (1);",
                MIGRATIONS[0]
            ))
            .await
            .unwrap();

        let store = database.store(1).await;
        let versions: Vec<i32> = plain
            .query(
                "SELECT version FROM parlor_schema_migrations ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(versions, (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>());
        let foreign_keys: i64 = plain
            .query_one(
                "SELECT count(*) FROM pg_constraint
                 WHERE conrelid = 'messages'::regclass AND contype = 'f'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(foreign_keys, 0);
        let ann = user(&store, "ann").await;
        let notes = store.create_group("notes", &[ann]).await.unwrap();
        let message = NewMessage {
            conversation_id: notes,
            sender_id: ann,
            client_msg_id: "m1".to_owned(),
            body: "hi".to_owned(),
            accepted_at: OffsetDateTime::now_utc(),
        };
        let appended = store.append_messages(&[message]).await.unwrap();
        assert!(matches!(&appended[0], Appended::New(m) if m.seq == 1));
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let database = TestDatabase::create().await;
        drop(database.store(1).await);
        let newer = MIGRATIONS.len() as i32 + 1;
        client(&database.config)
            .await
            .execute(
                "INSERT INTO parlor_schema_migrations (version) VALUES ($1)",
                &[&newer],
            )
            .await
            .unwrap();
        let error = PgStore::connect_with(database.config.clone(), 1)
            .await
            .unwrap_err();
        assert_eq!(error.kind, BackendErrorKind::Rejected);
        assert!(error.message.contains("schema is version"), "{error}");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable_and_a_bad_url_rejected() {
        // Port 1 on loopback: nothing listens there, so the connection is refused at once.
        let error = PgStore::connect("postgres://postgres@127.0.0.1:1/postgres", 1)
            .await
            .unwrap_err();
        assert_eq!(error.kind, BackendErrorKind::Unavailable, "{error}");
        let error = PgStore::connect("postgres://[oops", 1).await.unwrap_err();
        assert_eq!(error.kind, BackendErrorKind::Rejected, "{error}");
        let error = PgStore::connect("postgres://postgres@127.0.0.1:1/postgres", 0)
            .await
            .unwrap_err();
        assert_eq!(error.kind, BackendErrorKind::Rejected, "{error}");
    }

    #[tokio::test]
    async fn a_lost_connection_is_unavailable_and_the_next_call_reconnects() {
        let database = TestDatabase::create().await;
        let store = database.store(1).await;
        let ann = user(&store, "ann").await;
        database
            .admin_client()
            .await
            .execute(
                // With a timeout, it waits until the backend is gone.
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
                 WHERE datname = $1",
                &[&database.name],
            )
            .await
            .unwrap();
        // The pool may or may not have noticed yet; either way nothing is `Rejected`.
        if let Err(error) = store.users(&[ann]).await {
            assert_eq!(error.kind, BackendErrorKind::Unavailable, "{error}");
        }
        let found = store.users(&[ann]).await.expect("a new connection");
        assert_eq!(found.len(), 1);
    }

    #[tokio::test]
    async fn text_postgres_cannot_hold_is_rejected_alone() {
        let database = TestDatabase::create().await;
        let store = database.store(2).await;
        let (ann, bob) = (user(&store, "ann").await, user(&store, "bob").await);
        let (chat, _) = store.create_direct(ann, bob).await.unwrap();
        let message = |client_msg_id: &str, body: &str| NewMessage {
            conversation_id: chat,
            sender_id: ann,
            client_msg_id: client_msg_id.to_owned(),
            body: body.to_owned(),
            accepted_at: OffsetDateTime::now_utc(),
        };
        let appended = store
            .append_messages(&[
                message("m1", "nul \0 inside"),
                message("m\u{0}2", "fine"),
                message("m3", "fine"),
            ])
            .await
            .unwrap();
        assert!(
            matches!(&appended[0], Appended::Rejected(_)),
            "{appended:?}"
        );
        assert!(
            matches!(&appended[1], Appended::Rejected(_)),
            "{appended:?}"
        );
        assert!(
            matches!(&appended[2], Appended::New(m) if m.seq == 1),
            "{appended:?}"
        );

        let error = store.create_group("nul \0", &[ann]).await.unwrap_err();
        assert_eq!(error.kind, BackendErrorKind::Rejected, "{error}");
    }
}
