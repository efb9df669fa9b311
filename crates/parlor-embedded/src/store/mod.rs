//! [`SqliteStore`]: the embedded [`Store`], one SQLite file in WAL mode.
//!
//! Shape: one writer connection, taken in turn by every write, and a fixed pool of reader
//! connections, so that a page of history never waits behind a batch of appends. SQLite is
//! blocking, so every call runs on tokio's blocking pool; callers wait for a connection
//! asynchronously and hold a blocking thread only while they use one.
//!
//! Invariants, all kept inside one `BEGIN IMMEDIATE` transaction per write:
//! - `messages.seq` is `conversations.last_seq + 1` at insert time, so per conversation the
//!   seqs are 1, 2, 3… with no gaps and no repeats.
//! - `(sender_id, client_msg_id)` is unique: a repeat returns the first message.
//! - `members.last_read_seq <= conversations.last_seq` and never decreases.
//!
//! Times are stored as unix nanoseconds (UTC) in `*_ns` integer columns: exact for every
//! `OffsetDateTime` between 1677 and 2262, and ordered as numbers. Ids are hyphenated
//! lower-case UUID text.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use parlor_core::error::BackendError;
use parlor_core::ids::{ConversationId, MessageId, Seq, UserId};
use parlor_core::ports::{Appended, ConversationView, NewMessage, Page, Session, Store, TokenHash};
use parlor_core::protocol::{ConversationKind, Message, User};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, ToSql, TransactionBehavior, params};
use time::{OffsetDateTime, UtcOffset};
use tokio::sync::{Mutex as AsyncMutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinError;
use uuid::Uuid;

/// Reader connections per store. Reads are short point and range lookups, so a few
/// connections keep a small machine's cores busy; callers beyond that wait (asynchronously)
/// for one to come back. The writer has its own connection and never waits for these.
const READER_CONNECTIONS: usize = 4;
/// How long a statement waits for a lock held by another connection or process (an admin
/// CLI, a checkpoint) before failing with `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// This module prepares about 30 distinct statements; room to spare so that none is
/// evicted and prepared again.
const STATEMENT_CACHE_CAPACITY: usize = 64;
/// `Page::limit` is clamped to `1..=PAGE_MESSAGES_MAX`.
const PAGE_MESSAGES_MAX: u16 = 200;

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many ran. Append
/// new ones at the end, never edit one that has shipped.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    created_at_ns INTEGER NOT NULL,
    last_seen_ns  INTEGER
) STRICT;

CREATE TABLE sessions (
    token_hash    BLOB PRIMARY KEY NOT NULL CHECK (length(token_hash) = 32),
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at_ns INTEGER NOT NULL,
    expires_at_ns INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX sessions_by_user ON sessions (user_id);

-- direct_key: the two member ids, sorted and joined by ':', so a pair has one direct
-- conversation whatever the order it was asked for in.
CREATE TABLE conversations (
    id                  TEXT PRIMARY KEY NOT NULL,
    kind                TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    title               TEXT,
    direct_key          TEXT UNIQUE,
    last_seq            INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    last_activity_at_ns INTEGER NOT NULL,
    created_at_ns       INTEGER NOT NULL,
    CHECK ((kind = 'direct') = (direct_key IS NOT NULL))
) STRICT;

CREATE TABLE members (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    last_read_seq   INTEGER NOT NULL DEFAULT 0 CHECK (last_read_seq >= 0),
    PRIMARY KEY (conversation_id, user_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user_id);

CREATE TABLE messages (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL CHECK (seq >= 1),
    id              TEXT NOT NULL UNIQUE,
    sender_id       TEXT NOT NULL REFERENCES users (id),
    client_msg_id   TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at_ns   INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, seq),
    UNIQUE (sender_id, client_msg_id)
) STRICT;
"#];

/// The embedded [`Store`]: users, sessions, conversations, messages and read markers in one
/// SQLite file (plus its `-wal` and `-shm` companions).
///
/// Every commit is fsynced (`synchronous=FULL`) before the call returns, so the persister
/// may acknowledge its queue as soon as [`Store::append_messages`] returns `Ok`. A caller
/// that stops waiting (its future dropped) does not cancel the work: the transaction still
/// commits or rolls back as a whole, and a retried batch is then answered with duplicates.
pub struct SqliteStore {
    path: PathBuf,
    /// An async mutex so that queued writers wait without holding a blocking-pool thread,
    /// in FIFO order.
    writer: Arc<AsyncMutex<Connection>>,
    readers: Arc<ReaderPool>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the database at `path`, creating it if needed, and applies any migrations this
    /// build has that the file has not seen yet.
    ///
    /// Blocking: call it at startup or from a blocking context. Fails with `Unavailable` if
    /// the file cannot be opened or locked, and with `Rejected` if the file's schema is
    /// newer than this build knows.
    pub fn open(path: &Path) -> Result<SqliteStore, BackendError> {
        let mut writer =
            Connection::open(path).map_err(|error| db_error("open database", error))?;
        configure_writer(&writer)
            .map_err(|error| db_error("configure writer connection", error))?;
        migrate(&mut writer).map_err(|failure| failure.into_backend("migrate schema"))?;

        // Readers open after the writer so the file is already in WAL mode; each one is
        // query-only, which makes a write through a reader a loud error, not a race.
        let mut idle = Vec::with_capacity(READER_CONNECTIONS);
        for _ in 0..READER_CONNECTIONS {
            let reader = Connection::open(path)
                .map_err(|error| db_error("open reader connection", error))?;
            configure_reader(&reader)
                .map_err(|error| db_error("configure reader connection", error))?;
            idle.push(reader);
        }

        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Arc::new(AsyncMutex::new(writer)),
            readers: Arc::new(ReaderPool {
                idle: Mutex::new(idle),
                permits: Arc::new(Semaphore::new(READER_CONNECTIONS)),
            }),
        })
    }

    /// The database file this store was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` in one read transaction (one consistent snapshot) on a reader connection.
    async fn read<T, F>(&self, operation: &'static str, work: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    {
        let permit = Arc::clone(&self.readers.permits)
            .acquire_owned()
            .await
            .map_err(|error| {
                BackendError::unavailable(format!("{operation}: reader pool closed"))
                    .with_source(error)
            })?;
        let readers = Arc::clone(&self.readers);
        let task = tokio::task::spawn_blocking(move || {
            let mut reader = readers.checkout(permit).ok_or_else(|| {
                BackendError::unavailable(format!("{operation}: no idle reader connection"))
            })?;
            let run = || {
                // Deferred: the snapshot starts at the first read. Dropping the transaction
                // rolls it back, which for a read is all there is to do.
                let tx = reader.transaction()?;
                work(&tx)
            };
            run().map_err(|failure| failure.into_backend(operation))
        });
        joined(operation, task.await)
    }

    /// Runs `work` in one `BEGIN IMMEDIATE` transaction on the writer connection and commits
    /// it if `work` succeeds; otherwise nothing it did is kept.
    async fn write<T, F>(&self, operation: &'static str, work: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Failure> + Send + 'static,
    {
        let mut writer = Arc::clone(&self.writer).lock_owned().await;
        let task = tokio::task::spawn_blocking(move || {
            let run = || {
                // IMMEDIATE takes the write lock up front, so a transaction never fails
                // half-way with SQLITE_BUSY when another process holds the file.
                let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let value = work(&tx)?;
                tx.commit()?;
                Ok(value)
            };
            run().map_err(|failure: Failure| failure.into_backend(operation))
        });
        joined(operation, task.await)
    }
}

fn configure_writer(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    let mode: String =
        connection.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Without WAL, readers and the writer would block each other; refuse to run slow
        // and surprising rather than silently.
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!("journal_mode is {mode:?}, wal required")),
        ));
    }
    // FULL: a commit is fsynced before it returns, which is what lets the persister
    // acknowledge the inbound queue right after `append_messages`.
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

fn configure_reader(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    connection.pragma_update(None, "foreign_keys", true)?;
    connection.pragma_update(None, "query_only", true)?;
    Ok(())
}

fn migrate(connection: &mut Connection) -> Result<(), Failure> {
    // One IMMEDIATE transaction: two processes opening a fresh file cannot both migrate.
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let applied: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
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
        tx.execute_batch(migration)?;
        let version = i64::try_from(index + 1).unwrap_or(i64::MAX);
        tx.pragma_update(None, "user_version", version)?;
        tracing::info!(version, "applied store migration");
    }
    tx.commit()?;
    Ok(())
}

/// The reader connections not in use, and one permit per connection so that waiting for a
/// reader happens in async code, not on a blocking thread.
struct ReaderPool {
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReaderPool {
    /// A reader connection; `None` only if the permit count and the pool disagree (a bug).
    fn checkout(self: Arc<Self>, permit: OwnedSemaphorePermit) -> Option<ReaderLease> {
        // A panic while holding this lock cannot leave the Vec half-changed, so a poisoned
        // lock is still a good one.
        let connection = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        debug_assert!(connection.is_some(), "a reader permit without a reader");
        Some(ReaderLease {
            connection: Some(connection?),
            pool: self,
            _permit: permit,
        })
    }
}

/// A borrowed reader connection; goes back to the pool on drop, before its permit is
/// released (fields drop after `Drop::drop`), even when the work panicked.
struct ReaderLease {
    connection: Option<Connection>,
    pool: Arc<ReaderPool>,
    _permit: OwnedSemaphorePermit,
}

impl Deref for ReaderLease {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.connection.as_ref().expect("present until drop")
    }
}

impl DerefMut for ReaderLease {
    fn deref_mut(&mut self) -> &mut Connection {
        self.connection.as_mut().expect("present until drop")
    }
}

impl Drop for ReaderLease {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(connection);
        }
    }
}

/// Why the work inside a transaction stopped; becomes a [`BackendError`] at the boundary.
#[derive(Debug)]
enum Failure {
    Db(rusqlite::Error),
    /// The input can never succeed.
    Rejected(String),
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Failure::Db(error)
    }
}

impl Failure {
    fn into_backend(self, operation: &str) -> BackendError {
        match self {
            Failure::Db(error) => db_error(operation, error),
            Failure::Rejected(reason) => BackendError::rejected(format!("{operation}: {reason}")),
        }
    }
}

/// Constraint violations come from input (an unknown user, a reused token) and can never
/// succeed. A full disk (`SQLITE_FULL`: SQLite's unix VFS reports a write's ENOSPC so) is
/// `StorageFull`: the transaction was rolled back and the same input succeeds once space is
/// freed. Everything else (busy, IO) may pass, so it is `Unavailable`.
fn db_error(operation: &str, error: rusqlite::Error) -> BackendError {
    let message = format!("{operation}: {error}");
    match error.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => BackendError::rejected(message),
        Some(ErrorCode::DiskFull) => BackendError::storage_full(message),
        _ => BackendError::unavailable(message),
    }
    .with_source(error)
}

fn joined<T>(
    operation: &str,
    result: Result<Result<T, BackendError>, JoinError>,
) -> Result<T, BackendError> {
    result.unwrap_or_else(|error| {
        if error.is_panic() {
            tracing::error!(operation, %error, "store task panicked");
        }
        Err(BackendError::unavailable(format!("{operation}: store task failed")).with_source(error))
    })
}

/// A UUID as hyphenated text, in and out of SQL.
struct Id(Uuid);

impl ToSql for Id {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Owned(Value::Text(
            self.0.hyphenated().to_string(),
        )))
    }
}

impl FromSql for Id {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        Uuid::try_parse(value.as_str()?)
            .map(Id)
            .map_err(|error| FromSqlError::Other(Box::new(error)))
    }
}

/// A stored seq: a non-negative integer.
struct SeqColumn(Seq);

impl FromSql for SeqColumn {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let raw = value.as_i64()?;
        Seq::try_from(raw)
            .map(SeqColumn)
            .map_err(|_| FromSqlError::OutOfRange(raw))
    }
}

/// A stored time: unix nanoseconds, read back in UTC.
struct Nanos(OffsetDateTime);

impl FromSql for Nanos {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let raw = value.as_i64()?;
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(raw))
            .map(Nanos)
            .map_err(|error| FromSqlError::Other(Box::new(error)))
    }
}

impl FromSql for KindColumn {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "direct" => Ok(KindColumn(ConversationKind::Direct)),
            "group" => Ok(KindColumn(ConversationKind::Group)),
            other => Err(FromSqlError::Other(
                format!("unknown conversation kind {other:?}").into(),
            )),
        }
    }
}

struct KindColumn(ConversationKind);

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

/// A LIKE pattern matching names that start with `prefix`, with `\` as the escape
/// character: usernames may contain `_`, which LIKE would otherwise take as a wildcard.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 2);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn direct_key(a: UserId, b: UserId) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("{low}:{high}")
}

fn user_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: UserId(row.get::<_, Id>(0)?.0),
        username: row.get(1)?,
    })
}

/// Column order: `id, conversation_id, seq, sender_id, client_msg_id, body, created_at_ns`.
fn message_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: MessageId(row.get::<_, Id>(0)?.0),
        conversation_id: ConversationId(row.get::<_, Id>(1)?.0),
        seq: row.get::<_, SeqColumn>(2)?.0,
        sender_id: UserId(row.get::<_, Id>(3)?.0),
        client_msg_id: row.get(4)?,
        body: row.get(5)?,
        created_at: row.get::<_, Nanos>(6)?.0,
    })
}

fn append(tx: &Connection, batch: &[NewMessage]) -> Result<Vec<Appended>, Failure> {
    let mut stored = tx.prepare_cached(
        "SELECT id, conversation_id, seq, sender_id, client_msg_id, body, created_at_ns
         FROM messages WHERE sender_id = ?1 AND client_msg_id = ?2",
    )?;
    let mut last_seq = tx.prepare_cached(
        "SELECT c.last_seq FROM members m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.conversation_id = ?1 AND m.user_id = ?2",
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO messages
             (conversation_id, seq, id, sender_id, client_msg_id, body, created_at_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut advance = tx.prepare_cached(
        "UPDATE conversations
         SET last_seq = ?2, last_activity_at_ns = max(last_activity_at_ns, ?3)
         WHERE id = ?1 AND last_seq = ?2 - 1",
    )?;
    let mut read_own = tx.prepare_cached(
        "UPDATE members SET last_read_seq = max(last_read_seq, ?3)
         WHERE conversation_id = ?1 AND user_id = ?2",
    )?;

    let mut results = Vec::with_capacity(batch.len());
    for new in batch {
        let conversation = Id(new.conversation_id.0);
        let sender = Id(new.sender_id.0);
        // Looked up inside the transaction, so a repeat within this batch finds the
        // message inserted a few rows earlier.
        if let Some(first) = stored
            .query_row(params![sender, new.client_msg_id], message_row)
            .optional()?
        {
            results.push(Appended::Duplicate(first));
            continue;
        }
        let Some(SeqColumn(previous)) = last_seq
            .query_row(params![conversation, sender], |row| row.get(0))
            .optional()?
        else {
            results.push(Appended::Rejected(format!(
                "user {} is not a member of conversation {} (or it does not exist)",
                new.sender_id, new.conversation_id
            )));
            continue;
        };
        let created_at_ns = match nanos(new.accepted_at) {
            Ok(created_at_ns) => created_at_ns,
            Err(Failure::Rejected(reason)) => {
                results.push(Appended::Rejected(reason));
                continue;
            }
            Err(failure) => return Err(failure),
        };
        let message = Message {
            id: MessageId::new(),
            conversation_id: new.conversation_id,
            seq: previous + 1,
            sender_id: new.sender_id,
            client_msg_id: new.client_msg_id.clone(),
            body: new.body.clone(),
            // What reading the row back yields: the same instant, in UTC.
            created_at: new.accepted_at.to_offset(UtcOffset::UTC),
        };
        let seq = seq_param(message.seq);
        let inserted = insert.execute(params![
            conversation,
            seq,
            Id(message.id.0),
            sender,
            message.client_msg_id,
            message.body,
            created_at_ns,
        ]);
        match inserted {
            Ok(_) => {}
            // A failed statement is undone on its own; the rest of the batch goes on.
            Err(error) if error.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                results.push(Appended::Rejected(format!("cannot store message: {error}")));
                continue;
            }
            Err(error) => return Err(error.into()),
        }
        let advanced = advance.execute(params![conversation, seq, created_at_ns])?;
        assert_eq!(advanced, 1, "last_seq moved under the writer lock");
        read_own.execute(params![conversation, sender, seq])?;
        results.push(Appended::New(message));
    }
    Ok(results)
}

fn messages_page(
    tx: &Connection,
    conversation: ConversationId,
    page: Page,
) -> Result<Vec<Message>, Failure> {
    let limit = i64::from(page.limit.clamp(1, PAGE_MESSAGES_MAX));
    let conversation = Id(conversation.0);
    let messages = match (page.after_seq, page.before_seq) {
        (Some(after), _) => {
            let mut statement = tx.prepare_cached(
                "SELECT id, conversation_id, seq, sender_id, client_msg_id, body, created_at_ns
                 FROM messages WHERE conversation_id = ?1 AND seq > ?2
                 ORDER BY seq ASC LIMIT ?3",
            )?;
            statement
                .query_map(params![conversation, seq_param(after), limit], message_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?
        }
        (None, before) => {
            // Newest first to take the `limit` just below the bound, then turned around.
            let mut statement = tx.prepare_cached(
                "SELECT id, conversation_id, seq, sender_id, client_msg_id, body, created_at_ns
                 FROM messages WHERE conversation_id = ?1 AND seq < ?2
                 ORDER BY seq DESC LIMIT ?3",
            )?;
            let below = before.map_or(i64::MAX, seq_param);
            let mut newest_first = statement
                .query_map(params![conversation, below, limit], message_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            newest_first.reverse();
            newest_first
        }
    };
    Ok(messages)
}

/// The views of `user`'s conversations (or of just `only`), most recent activity first, in
/// two queries whatever their number: one for the conversations with their last message,
/// one for all their members.
fn conversation_views(
    tx: &Connection,
    user: UserId,
    only: Option<ConversationId>,
) -> Result<Vec<ConversationView>, Failure> {
    let view_row = |row: &Row<'_>| -> rusqlite::Result<ConversationView> {
        let id = ConversationId(row.get::<_, Id>(0)?.0);
        let last_seq = row.get::<_, SeqColumn>(3)?.0;
        let last_message = match row.get::<_, Option<Id>>(5)? {
            None => None,
            Some(message_id) => Some(Message {
                id: MessageId(message_id.0),
                conversation_id: id,
                seq: last_seq,
                sender_id: UserId(row.get::<_, Id>(6)?.0),
                client_msg_id: row.get(7)?,
                body: row.get(8)?,
                created_at: row.get::<_, Nanos>(9)?.0,
            }),
        };
        Ok(ConversationView {
            id,
            kind: row.get::<_, KindColumn>(1)?.0,
            title: row.get(2)?,
            members: Vec::new(),
            last_message,
            last_seq,
            last_read_seq: row.get::<_, SeqColumn>(4)?.0,
        })
    };
    let member_row = |row: &Row<'_>| -> rusqlite::Result<(ConversationId, User)> {
        Ok((
            ConversationId(row.get::<_, Id>(0)?.0),
            User {
                id: UserId(row.get::<_, Id>(1)?.0),
                username: row.get(2)?,
            },
        ))
    };

    macro_rules! select_views {
        () => {
            "SELECT c.id, c.kind, c.title, c.last_seq, m.last_read_seq,
                    msg.id, msg.sender_id, msg.client_msg_id, msg.body, msg.created_at_ns
             FROM members m
             JOIN conversations c ON c.id = m.conversation_id
             LEFT JOIN messages msg ON msg.conversation_id = c.id AND msg.seq = c.last_seq"
        };
    }
    let (mut views, members) = match only {
        None => {
            let mut statement = tx.prepare_cached(concat!(
                select_views!(),
                " WHERE m.user_id = ?1
                 ORDER BY c.last_activity_at_ns DESC, c.created_at_ns DESC, c.id DESC"
            ))?;
            let views = statement
                .query_map(params![Id(user.0)], view_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut statement = tx.prepare_cached(
                "SELECT other.conversation_id, u.id, u.username
                 FROM members m
                 JOIN members other ON other.conversation_id = m.conversation_id
                 JOIN users u ON u.id = other.user_id
                 WHERE m.user_id = ?1
                 ORDER BY u.username",
            )?;
            let members = statement
                .query_map(params![Id(user.0)], member_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            (views, members)
        }
        Some(conversation) => {
            let mut statement = tx.prepare_cached(concat!(
                select_views!(),
                " WHERE m.user_id = ?1 AND m.conversation_id = ?2"
            ))?;
            let views = statement
                .query_map(params![Id(user.0), Id(conversation.0)], view_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if views.is_empty() {
                return Ok(views);
            }
            let mut statement = tx.prepare_cached(
                "SELECT m.conversation_id, u.id, u.username
                 FROM members m JOIN users u ON u.id = m.user_id
                 WHERE m.conversation_id = ?1
                 ORDER BY u.username",
            )?;
            let members = statement
                .query_map(params![Id(conversation.0)], member_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            (views, members)
        }
    };

    let mut by_conversation: HashMap<ConversationId, Vec<User>> = HashMap::new();
    for (conversation, member) in members {
        by_conversation
            .entry(conversation)
            .or_default()
            .push(member);
    }
    for view in &mut views {
        view.members = by_conversation.remove(&view.id).unwrap_or_default();
    }
    Ok(views)
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<Option<User>, BackendError> {
        let user = User {
            id: UserId::new(),
            username: username.to_owned(),
        };
        let password_hash = password_hash.to_owned();
        self.write("create user", move |tx| {
            // Only a clash on the name is an answer; any other conflict is an error.
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO users (id, username, password_hash, created_at_ns)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (username) DO NOTHING",
                )?
                .execute(params![
                    Id(user.id.0),
                    user.username,
                    password_hash,
                    now_nanos()?
                ])?;
            Ok((inserted == 1).then_some(user))
        })
        .await
    }

    async fn user_credentials(
        &self,
        username: &str,
    ) -> Result<Option<(User, String)>, BackendError> {
        let username = username.to_owned();
        self.read("user credentials", move |tx| {
            let found = tx
                .prepare_cached(
                    "SELECT id, username, password_hash FROM users WHERE username = ?1",
                )?
                .query_row(params![username], |row| Ok((user_row(row)?, row.get(2)?)))
                .optional()?;
            Ok(found)
        })
        .await
    }

    async fn users_by_prefix(&self, prefix: &str, limit: u16) -> Result<Vec<User>, BackendError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let pattern = like_prefix(prefix);
        self.read("users by prefix", move |tx| {
            // `username` is COLLATE NOCASE, so LIKE ignores ASCII case and can use its index;
            // usernames are ASCII by validation.
            let users = tx
                .prepare_cached(
                    "SELECT id, username FROM users WHERE username LIKE ?1 ESCAPE '\\'
                     ORDER BY username LIMIT ?2",
                )?
                .query_map(params![pattern, limit], user_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(users)
        })
        .await
    }

    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>, BackendError> {
        let ids = distinct(ids);
        self.read("users", move |tx| {
            let mut statement =
                tx.prepare_cached("SELECT id, username FROM users WHERE id = ?1")?;
            let mut users = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(user) = statement
                    .query_row(params![Id(id.0)], user_row)
                    .optional()?
                {
                    users.push(user);
                }
            }
            Ok(users)
        })
        .await
    }

    async fn set_last_seen(&self, user: UserId, at: OffsetDateTime) -> Result<(), BackendError> {
        self.write("set last seen", move |tx| {
            let updated = tx
                .prepare_cached("UPDATE users SET last_seen_ns = ?2 WHERE id = ?1")?
                .execute(params![Id(user.0), nanos(at)?])?;
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
        self.read("last seen", move |tx| {
            let mut statement =
                tx.prepare_cached("SELECT last_seen_ns FROM users WHERE id = ?1")?;
            let mut seen = Vec::with_capacity(ids.len());
            for id in ids {
                let found = statement
                    .query_row(params![Id(id.0)], |row| row.get::<_, Option<Nanos>>(0))
                    .optional()?;
                if let Some(at) = found {
                    seen.push((id, at.map(|Nanos(at)| at)));
                }
            }
            Ok(seen)
        })
        .await
    }

    async fn create_session(
        &self,
        token: TokenHash,
        user: UserId,
        expires_at: OffsetDateTime,
    ) -> Result<(), BackendError> {
        self.write("create session", move |tx| {
            // An unknown user or a reused token violates a constraint: Rejected.
            tx.prepare_cached(
                "INSERT INTO sessions (token_hash, user_id, created_at_ns, expires_at_ns)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                &token.0[..],
                Id(user.0),
                now_nanos()?,
                nanos(expires_at)?
            ])?;
            Ok(())
        })
        .await
    }

    async fn session_user(
        &self,
        token: TokenHash,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, BackendError> {
        self.read("session user", move |tx| {
            let session = tx
                .prepare_cached(
                    "SELECT u.id, u.username, s.expires_at_ns FROM sessions s
                     JOIN users u ON u.id = s.user_id
                     WHERE s.token_hash = ?1 AND s.expires_at_ns > ?2",
                )?
                .query_row(params![&token.0[..], nanos(now)?], |row| {
                    Ok(Session {
                        user: user_row(row)?,
                        expires_at: row.get::<_, Nanos>(2)?.0,
                    })
                })
                .optional()?;
            Ok(session)
        })
        .await
    }

    async fn delete_session(&self, token: TokenHash) -> Result<(), BackendError> {
        self.write("delete session", move |tx| {
            tx.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
                .execute(params![&token.0[..]])?;
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
        self.write("create direct conversation", move |tx| {
            let key = direct_key(a, b);
            let existing = tx
                .prepare_cached("SELECT id FROM conversations WHERE direct_key = ?1")?
                .query_row(params![key], |row| row.get::<_, Id>(0))
                .optional()?;
            if let Some(Id(id)) = existing {
                return Ok((ConversationId(id), false));
            }
            let known: i64 = tx
                .prepare_cached("SELECT count(*) FROM users WHERE id IN (?1, ?2)")?
                .query_row(params![Id(a.0), Id(b.0)], |row| row.get(0))?;
            if known != 2 {
                return Err(Failure::Rejected(format!("no user {a} or no user {b}")));
            }
            let id = ConversationId::new();
            insert_conversation(tx, id, ConversationKind::Direct, None, Some(&key), &[a, b])?;
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
        let title = title.to_owned();
        self.write("create group", move |tx| {
            let mut exists = tx.prepare_cached("SELECT 1 FROM users WHERE id = ?1")?;
            for member in &members {
                if !exists.exists(params![Id(member.0)])? {
                    return Err(Failure::Rejected(format!("no user {member}")));
                }
            }
            let id = ConversationId::new();
            insert_conversation(
                tx,
                id,
                ConversationKind::Group,
                Some(&title),
                None,
                &members,
            )?;
            Ok(id)
        })
        .await
    }

    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationView>, BackendError> {
        self.read("conversations of", move |tx| {
            conversation_views(tx, user, None)
        })
        .await
    }

    async fn conversation_of(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<Option<ConversationView>, BackendError> {
        self.read("conversation of", move |tx| {
            Ok(conversation_views(tx, user, Some(conversation))?.pop())
        })
        .await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.read("ping", |tx| {
            tx.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn is_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<bool, BackendError> {
        self.read("is member", move |tx| {
            let member = tx
                .prepare_cached(
                    "SELECT 1 FROM members WHERE conversation_id = ?1 AND user_id = ?2",
                )?
                .exists(params![Id(conversation.0), Id(user.0)])?;
            Ok(member)
        })
        .await
    }

    async fn members(&self, conversation: ConversationId) -> Result<Vec<UserId>, BackendError> {
        self.read("members", move |tx| {
            let members = tx
                .prepare_cached(
                    "SELECT user_id FROM members WHERE conversation_id = ?1 ORDER BY user_id",
                )?
                .query_map(params![Id(conversation.0)], |row| {
                    Ok(UserId(row.get::<_, Id>(0)?.0))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(members)
        })
        .await
    }

    async fn contacts(
        &self,
        user: UserId,
        members_max: usize,
    ) -> Result<Vec<UserId>, BackendError> {
        let members_max = i64::try_from(members_max).unwrap_or(i64::MAX);
        self.read("contacts", move |tx| {
            let contacts = tx
                .prepare_cached(
                    "SELECT DISTINCT other.user_id
                     FROM members m
                     JOIN members other ON other.conversation_id = m.conversation_id
                     WHERE m.user_id = ?1 AND other.user_id <> ?1
                       AND (SELECT count(*) FROM members c
                            WHERE c.conversation_id = m.conversation_id) <= ?2
                     ORDER BY other.user_id",
                )?
                .query_map(params![Id(user.0), members_max], |row| {
                    Ok(UserId(row.get::<_, Id>(0)?.0))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(contacts)
        })
        .await
    }

    /// One `BEGIN IMMEDIATE` transaction for the whole batch, fsynced on commit; if it fails,
    /// nothing of the batch is stored and the error (`Unavailable`) is returned. Per entry:
    /// a known (sender, client_msg_id) → `Duplicate` of the first message, whatever this
    /// entry's body or conversation; a sender who is not a member (or a conversation that
    /// does not exist) → `Rejected`; otherwise `New` with the next seq. Batches are bounded
    /// by the caller (the persister's batch size).
    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<Appended>, BackendError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let batch = batch.to_vec();
        let results = self
            .write("append messages", move |tx| append(tx, &batch))
            .await?;
        Ok(results)
    }

    /// `after_seq` → the `limit` messages after it; else `before_seq` → the `limit` messages
    /// just below it; else the newest `limit`. Always ascending; `limit` is clamped to
    /// 1..=200. An unknown conversation has no messages.
    async fn messages(
        &self,
        conversation: ConversationId,
        page: Page,
    ) -> Result<Vec<Message>, BackendError> {
        self.read("messages", move |tx| messages_page(tx, conversation, page))
            .await
    }

    /// `Rejected` if `user` is not a member of `conversation`.
    async fn mark_read(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq: Seq,
    ) -> Result<Option<Seq>, BackendError> {
        self.write("mark read", move |tx| {
            let markers = tx
                .prepare_cached(
                    "SELECT c.last_seq, m.last_read_seq
                     FROM members m JOIN conversations c ON c.id = m.conversation_id
                     WHERE m.conversation_id = ?1 AND m.user_id = ?2",
                )?
                .query_row(params![Id(conversation.0), Id(user.0)], |row| {
                    Ok((row.get::<_, SeqColumn>(0)?.0, row.get::<_, SeqColumn>(1)?.0))
                })
                .optional()?;
            let Some((last_seq, last_read_seq)) = markers else {
                return Err(Failure::Rejected(format!(
                    "user {user} is not a member of conversation {conversation}"
                )));
            };
            let marker = seq.min(last_seq).max(last_read_seq);
            if marker == last_read_seq {
                return Ok(None);
            }
            tx.prepare_cached(
                "UPDATE members SET last_read_seq = ?3
                 WHERE conversation_id = ?1 AND user_id = ?2",
            )?
            .execute(params![Id(conversation.0), Id(user.0), seq_param(marker)])?;
            Ok(Some(marker))
        })
        .await
    }
}

fn insert_conversation(
    tx: &Connection,
    id: ConversationId,
    kind: ConversationKind,
    title: Option<&str>,
    direct_key: Option<&str>,
    members: &[UserId],
) -> Result<(), Failure> {
    let now = now_nanos()?;
    tx.prepare_cached(
        "INSERT INTO conversations (id, kind, title, direct_key, last_activity_at_ns, created_at_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )?
    .execute(params![Id(id.0), kind_text(kind), title, direct_key, now])?;
    let mut member =
        tx.prepare_cached("INSERT INTO members (conversation_id, user_id) VALUES (?1, ?2)")?;
    for user in members {
        member.execute(params![Id(id.0), Id(user.0)])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parlor_core::BackendErrorKind;
    use time::macros::datetime;

    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        store: SqliteStore,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("create temp dir");
            let store = SqliteStore::open(&dir.path().join("parlor.db")).expect("open store");
            Fixture { dir, store }
        }

        fn reopen(self) -> Fixture {
            let Fixture { dir, store } = self;
            let path = store.path().to_owned();
            drop(store);
            let store = SqliteStore::open(&path).expect("reopen store");
            Fixture { dir, store }
        }

        async fn user(&self, name: &str) -> UserId {
            self.store
                .create_user(name, "hash")
                .await
                .expect("create user")
                .expect("name is free")
                .id
        }
    }

    const T0: OffsetDateTime = datetime!(2025-03-04 05:06:07.123456789 UTC);

    fn new_message(
        conversation: ConversationId,
        sender: UserId,
        client_msg_id: &str,
        body: &str,
    ) -> NewMessage {
        NewMessage {
            conversation_id: conversation,
            sender_id: sender,
            client_msg_id: client_msg_id.to_owned(),
            body: body.to_owned(),
            accepted_at: T0,
        }
    }

    fn new_ones(appended: &[Appended]) -> Vec<Message> {
        appended
            .iter()
            .map(|a| match a {
                Appended::New(message) => message.clone(),
                other => panic!("expected a new message, got {other:?}"),
            })
            .collect()
    }

    fn page(before_seq: Option<Seq>, after_seq: Option<Seq>, limit: u16) -> Page {
        Page {
            before_seq,
            after_seq,
            limit,
        }
    }

    fn seqs(messages: &[Message]) -> Vec<Seq> {
        messages.iter().map(|m| m.seq).collect()
    }

    #[tokio::test]
    async fn connections_are_durable_wal_with_foreign_keys_and_read_only_readers() {
        let f = Fixture::new();
        let pragma = |connection: &Connection, name: &str| -> String {
            connection
                .pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))
                .map(|value| format!("{value:?}"))
                .unwrap()
        };
        let writer = f.store.writer.lock().await;
        assert_eq!(pragma(&writer, "journal_mode"), r#"Text("wal")"#);
        assert_eq!(pragma(&writer, "synchronous"), "Integer(2)", "FULL");
        assert_eq!(pragma(&writer, "foreign_keys"), "Integer(1)");
        assert_eq!(
            pragma(&writer, "user_version"),
            format!("Integer({})", MIGRATIONS.len())
        );
        drop(writer);
        let readers = f.store.readers.idle.lock().unwrap();
        assert_eq!(readers.len(), READER_CONNECTIONS);
        for reader in readers.iter() {
            assert_eq!(pragma(reader, "query_only"), "Integer(1)");
            assert_eq!(pragma(reader, "foreign_keys"), "Integer(1)");
        }
    }

    #[tokio::test]
    async fn seq_is_gap_free_across_batches_and_conversations() {
        let f = Fixture::new();
        let (ann, bob) = (f.user("ann").await, f.user("bob").await);
        let (one, _) = f.store.create_direct(ann, bob).await.unwrap();
        let two = f.store.create_group("two", &[ann, bob]).await.unwrap();

        let first = f
            .store
            .append_messages(&[
                new_message(one, ann, "a1", "hi"),
                new_message(two, ann, "a2", "hi all"),
                new_message(one, bob, "b1", "hello"),
            ])
            .await
            .unwrap();
        let second = f
            .store
            .append_messages(&[
                new_message(two, bob, "b2", "yo"),
                new_message(one, ann, "a3", "how are you"),
            ])
            .await
            .unwrap();

        let assigned: Vec<_> = new_ones(&first)
            .into_iter()
            .chain(new_ones(&second))
            .map(|m| (m.conversation_id, m.seq))
            .collect();
        assert_eq!(assigned, [(one, 1), (two, 1), (one, 2), (two, 2), (one, 3)]);
        let history = f.store.messages(one, page(None, None, 50)).await.unwrap();
        assert_eq!(seqs(&history), [1, 2, 3]);
        assert_eq!(history[0], new_ones(&first)[0]);
    }

    #[tokio::test]
    async fn created_at_round_trips_exactly_from_accepted_at() {
        let f = Fixture::new();
        let (ann, bob) = (f.user("ann").await, f.user("bob").await);
        let (chat, _) = f.store.create_direct(ann, bob).await.unwrap();
        let mut message = new_message(chat, ann, "m1", "hi");
        message.accepted_at = datetime!(2031-12-31 23:59:59.999999999 +05:30);

        let stored = new_ones(&f.store.append_messages(&[message.clone()]).await.unwrap());
        let read = f.store.messages(chat, page(None, None, 1)).await.unwrap();
        assert_eq!(read, stored);
        assert_eq!(read[0].created_at, message.accepted_at);
        assert_eq!(read[0].created_at.offset(), UtcOffset::UTC);
    }

    #[tokio::test]
    async fn repeated_client_msg_id_returns_first_message_and_stores_nothing() {
        let f = Fixture::new();
        let (ann, bob) = (f.user("ann").await, f.user("bob").await);
        let (chat, _) = f.store.create_direct(ann, bob).await.unwrap();
        let group = f.store.create_group("g", &[ann, bob]).await.unwrap();
        let first = new_ones(
            &f.store
                .append_messages(&[new_message(chat, ann, "m1", "original")])
                .await
                .unwrap(),
        )
        .remove(0);

        let again = f
            .store
            .append_messages(&[
                new_message(chat, ann, "m1", "original"),
                new_message(chat, ann, "m1", "a different body"),
                new_message(group, ann, "m1", "another conversation"),
                // Same id from someone else is a different message.
                new_message(chat, bob, "m1", "bob's own"),
            ])
            .await
            .unwrap();
        assert_eq!(again[0], Appended::Duplicate(first.clone()));
        assert_eq!(again[1], Appended::Duplicate(first.clone()));
        assert_eq!(again[2], Appended::Duplicate(first.clone()));
        assert!(matches!(&again[3], Appended::New(m) if m.seq == 2));

        let history = f.store.messages(chat, page(None, None, 50)).await.unwrap();
        assert_eq!(seqs(&history), [1, 2]);
        assert!(
            f.store
                .messages(group, page(None, None, 50))
                .await
                .unwrap()
                .is_empty()
        );
        let view = f.store.conversation_of(ann, group).await.unwrap().unwrap();
        assert_eq!(view.last_seq, 0);
    }

    #[tokio::test]
    async fn repeat_within_one_batch_returns_the_first_of_the_batch() {
        let f = Fixture::new();
        let (ann, bob) = (f.user("ann").await, f.user("bob").await);
        let (chat, _) = f.store.create_direct(ann, bob).await.unwrap();

        let appended = f
            .store
            .append_messages(&[
                new_message(chat, ann, "m1", "first"),
                new_message(chat, ann, "m1", "second"),
                new_message(chat, ann, "m2", "third"),
            ])
            .await
            .unwrap();
        let Appended::New(first) = &appended[0] else {
            panic!("expected new, got {:?}", appended[0]);
        };
        assert_eq!(appended[1], Appended::Duplicate(first.clone()));
        assert!(matches!(&appended[2], Appended::New(m) if m.seq == 2));
        let history = f.store.messages(chat, page(None, None, 50)).await.unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].body, "first");
    }

    #[tokio::test]
    async fn non_member_is_rejected_without_affecting_the_rest_of_the_batch() {
        let f = Fixture::new();
        let (ann, bob, eve) = (
            f.user("ann").await,
            f.user("bob").await,
            f.user("eve").await,
        );
        let (chat, _) = f.store.create_direct(ann, bob).await.unwrap();

        let appended = f
            .store
            .append_messages(&[
                new_message(chat, ann, "a1", "one"),
                new_message(chat, eve, "e1", "intruding"),
                new_message(ConversationId::new(), ann, "a2", "nowhere"),
                new_message(chat, bob, "b1", "two"),
            ])
            .await
            .unwrap();
        assert!(matches!(&appended[0], Appended::New(m) if m.seq == 1));
        assert!(matches!(&appended[1], Appended::Rejected(_)));
        assert!(matches!(&appended[2], Appended::Rejected(_)));
        assert!(matches!(&appended[3], Appended::New(m) if m.seq == 2));
        let history = f.store.messages(chat, page(None, None, 50)).await.unwrap();
        assert_eq!(seqs(&history), [1, 2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_get_seqs_one_to_n_exactly() {
        const TASKS: usize = 16;
        const BATCHES: usize = 5;
        const PER_BATCH: usize = 4;
        let f = Fixture::new();
        let store = Arc::new(f.store);
        let mut users = Vec::new();
        for i in 0..TASKS {
            users.push(
                store
                    .create_user(&format!("user{i}"), "hash")
                    .await
                    .unwrap()
                    .unwrap()
                    .id,
            );
        }
        let group = store.create_group("busy", &users).await.unwrap();

        let mut tasks = tokio::task::JoinSet::new();
        for (task, &sender) in users.iter().enumerate() {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                for batch in 0..BATCHES {
                    let messages: Vec<_> = (0..PER_BATCH)
                        .map(|i| new_message(group, sender, &format!("{task}-{batch}-{i}"), "x"))
                        .collect();
                    let appended = store.append_messages(&messages).await.unwrap();
                    assert_eq!(new_ones(&appended).len(), PER_BATCH);
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }

        let total = TASKS * BATCHES * PER_BATCH;
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let next = store
                .messages(group, page(None, Some(after), 200))
                .await
                .unwrap();
            let Some(last) = next.last() else { break };
            after = last.seq;
            all.extend(next);
        }
        let expected: Vec<Seq> = (1..=total as Seq).collect();
        assert_eq!(seqs(&all), expected);
        let distinct_ids: HashSet<_> = all.iter().map(|m| m.client_msg_id.clone()).collect();
        assert_eq!(distinct_ids.len(), total);
    }

    #[tokio::test]
    async fn pages_newest_before_and_after_ascending_with_clamped_limit() {
        let f = Fixture::new();
        let (ann, bob) = (f.user("ann").await, f.user("bob").await);
        let (chat, _) = f.store.create_direct(ann, bob).await.unwrap();
        let batch: Vec<_> = (1..=250)
            .map(|i| new_message(chat, ann, &format!("m{i}"), "x"))
            .collect();
        f.store.append_messages(&batch).await.unwrap();
        let get = |before, after, limit| f.store.messages(chat, page(before, after, limit));

        assert_eq!(seqs(&get(None, None, 3).await.unwrap()), [248, 249, 250]);
        assert_eq!(seqs(&get(Some(10), None, 3).await.unwrap()), [7, 8, 9]);
        assert_eq!(seqs(&get(Some(3), None, 10).await.unwrap()), [1, 2]);
        assert_eq!(seqs(&get(None, Some(10), 3).await.unwrap()), [11, 12, 13]);
        assert_eq!(seqs(&get(None, Some(248), 10).await.unwrap()), [249, 250]);
        assert!(get(None, Some(250), 10).await.unwrap().is_empty());
        // after_seq wins over before_seq.
        assert_eq!(seqs(&get(Some(5), Some(100), 2).await.unwrap()), [101, 102]);
        // limit 0 means 1, more than 200 means 200.
        assert_eq!(seqs(&get(None, None, 0).await.unwrap()), [250]);
        let most = get(None, None, u16::MAX).await.unwrap();
        assert_eq!(most.len(), 200);
        assert_eq!(most[0].seq, 51);
        assert!(
            f.store
                .messages(ConversationId::new(), page(None, None, 10))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn chat_list_is_most_recent_first_with_unread_arithmetic() {
        let f = Fixture::new();
        let (ann, bob, cid) = (
            f.user("ann").await,
            f.user("bob").await,
            f.user("cid").await,
        );
        let (direct, _) = f.store.create_direct(ann, bob).await.unwrap();
        let group = f
            .store
            .create_group("trio", &[ann, bob, cid])
            .await
            .unwrap();
        let quiet = f.store.create_group("quiet", &[ann, cid]).await.unwrap();

        // After the conversations' creation, as accepted messages always are.
        let base = OffsetDateTime::now_utc() + time::Duration::minutes(1);
        let at = |seconds| {
            move |mut m: NewMessage| {
                m.accepted_at = base + time::Duration::seconds(seconds);
                m
            }
        };
        f.store
            .append_messages(&[
                at(1)(new_message(group, bob, "b1", "one")),
                at(2)(new_message(group, bob, "b2", "two")),
                at(3)(new_message(direct, bob, "b3", "psst")),
                at(4)(new_message(group, ann, "a1", "mine")),
                at(5)(new_message(group, cid, "c1", "three")),
            ])
            .await
            .unwrap();

        let list = f.store.conversations_of(ann).await.unwrap();
        let order: Vec<_> = list.iter().map(|v| v.id).collect();
        // `quiet` has no messages: its activity is its creation, before any message.
        assert_eq!(order, [group, direct, quiet]);

        let unread = |v: &ConversationView| v.last_seq - v.last_read_seq;
        let group_view = &list[0];
        assert_eq!(group_view.kind, ConversationKind::Group);
        assert_eq!(group_view.title.as_deref(), Some("trio"));
        assert_eq!((group_view.last_seq, group_view.last_read_seq), (4, 3));
        assert_eq!(
            unread(group_view),
            1,
            "ann's own message marks what came before read"
        );
        let last = group_view.last_message.as_ref().unwrap();
        assert_eq!((last.seq, last.body.as_str()), (4, "three"));
        let names: Vec<_> = group_view
            .members
            .iter()
            .map(|u| u.username.as_str())
            .collect();
        assert_eq!(names, ["ann", "bob", "cid"]);

        let direct_view = &list[1];
        assert_eq!(direct_view.kind, ConversationKind::Direct);
        assert_eq!(direct_view.title, None);
        assert_eq!(unread(direct_view), 1);
        assert_eq!(list[2].last_message, None);
        assert_eq!(unread(&list[2]), 0);

        let bobs = f.store.conversations_of(bob).await.unwrap();
        assert_eq!(
            bobs.iter().map(|v| v.id).collect::<Vec<_>>(),
            [group, direct]
        );
        assert_eq!(
            unread(&bobs[0]),
            2,
            "ann's and cid's messages after bob's own"
        );
        assert_eq!(unread(&bobs[1]), 0, "bob sent the only message");

        let one = f.store.conversation_of(ann, group).await.unwrap();
        assert_eq!(one.as_ref(), Some(group_view));
        assert_eq!(f.store.conversation_of(bob, quiet).await.unwrap(), None);
    }

    #[tokio::test]
    async fn direct_conversation_is_unique_whatever_the_order() {
        let f = Fixture::new();
        let (ann, bob, cid) = (
            f.user("ann").await,
            f.user("bob").await,
            f.user("cid").await,
        );
        let (id, created) = f.store.create_direct(ann, bob).await.unwrap();
        assert!(created);
        assert_eq!(f.store.create_direct(bob, ann).await.unwrap(), (id, false));
        assert_eq!(f.store.create_direct(ann, bob).await.unwrap(), (id, false));
        let (other, created) = f.store.create_direct(ann, cid).await.unwrap();
        assert!(created && other != id);

        let to_self = f.store.create_direct(ann, ann).await.unwrap_err();
        assert_eq!(to_self.kind, BackendErrorKind::Rejected);
        let to_nobody = f.store.create_direct(ann, UserId::new()).await.unwrap_err();
        assert_eq!(to_nobody.kind, BackendErrorKind::Rejected);
        assert_eq!(f.store.members(id).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn groups_dedupe_members_and_refuse_unknown_users() {
        let f = Fixture::new();
        let (ann, bob, cid) = (
            f.user("ann").await,
            f.user("bob").await,
            f.user("cid").await,
        );
        let group = f
            .store
            .create_group("g", &[ann, bob, ann, bob])
            .await
            .unwrap();
        let mut expected = vec![ann, bob];
        expected.sort();
        assert_eq!(f.store.members(group).await.unwrap(), expected);
        assert!(f.store.is_member(group, ann).await.unwrap());
        assert!(!f.store.is_member(group, cid).await.unwrap());

        let unknown = f.store.create_group("h", &[ann, UserId::new()]).await;
        assert_eq!(unknown.unwrap_err().kind, BackendErrorKind::Rejected);
        let empty = f.store.create_group("h", &[]).await;
        assert_eq!(empty.unwrap_err().kind, BackendErrorKind::Rejected);
        assert_eq!(f.store.conversations_of(ann).await.unwrap().len(), 1);

        f.store.create_direct(bob, cid).await.unwrap();
        assert_eq!(f.store.contacts(ann, 100).await.unwrap(), [bob]);
        let mut bobs = vec![ann, cid];
        bobs.sort();
        assert_eq!(f.store.contacts(bob, 100).await.unwrap(), bobs);
    }

    #[tokio::test]
    async fn usernames_are_unique_ignoring_case_and_prefix_search_escapes_wildcards() {
        let f = Fixture::new();
        let ann = f.store.create_user("Ann_1", "h1").await.unwrap().unwrap();
        assert_eq!(f.store.create_user("ann_1", "h2").await.unwrap(), None);
        assert_eq!(f.store.create_user("ANN_1", "h3").await.unwrap(), None);
        for name in ["annx1", "ann_2", "anna", "bob_1"] {
            f.user(name).await;
        }

        let (user, hash) = f.store.user_credentials("aNn_1").await.unwrap().unwrap();
        assert_eq!((user, hash.as_str()), (ann.clone(), "h1"));
        assert_eq!(f.store.user_credentials("nobody").await.unwrap(), None);

        let names = |users: Vec<User>| users.into_iter().map(|u| u.username).collect::<Vec<_>>();
        // `_` is a literal: "annx1" must not match "ann_".
        assert_eq!(
            names(f.store.users_by_prefix("ANN_", 10).await.unwrap()),
            ["Ann_1", "ann_2"]
        );
        assert_eq!(
            names(f.store.users_by_prefix("ann", 10).await.unwrap()),
            ["Ann_1", "ann_2", "anna", "annx1"]
        );
        assert_eq!(
            names(f.store.users_by_prefix("ann", 2).await.unwrap()),
            ["Ann_1", "ann_2"]
        );
        assert!(f.store.users_by_prefix("%", 10).await.unwrap().is_empty());
        assert!(f.store.users_by_prefix("ann", 0).await.unwrap().is_empty());

        let found = f
            .store
            .users(&[ann.id, UserId::new(), ann.id])
            .await
            .unwrap();
        assert_eq!(found, [ann]);
    }

    #[tokio::test]
    async fn last_seen_is_one_entry_per_existing_user() {
        let f = Fixture::new();
        let (ann, bob) = (f.user("ann").await, f.user("bob").await);
        f.store.set_last_seen(ann, T0).await.unwrap();
        let seen = f.store.last_seen(&[ann, UserId::new(), bob]).await.unwrap();
        assert_eq!(seen, [(ann, Some(T0)), (bob, None)]);
        let unknown = f.store.set_last_seen(UserId::new(), T0).await.unwrap_err();
        assert_eq!(unknown.kind, BackendErrorKind::Rejected);
    }

    #[tokio::test]
    async fn sessions_expire_and_can_be_deleted() {
        let f = Fixture::new();
        let ann = f.user("ann").await;
        let token = TokenHash([7; 32]);
        let expires_at = T0 + time::Duration::hours(1);
        f.store
            .create_session(token, ann, expires_at)
            .await
            .unwrap();

        let user_at = |now| f.store.session_user(token, now);
        assert_eq!(user_at(T0).await.unwrap().map(|s| s.user.id), Some(ann));
        assert_eq!(
            user_at(expires_at - time::Duration::nanoseconds(1))
                .await
                .unwrap()
                .map(|s| s.user.id),
            Some(ann)
        );
        assert_eq!(user_at(expires_at).await.unwrap(), None);
        assert_eq!(
            f.store.session_user(TokenHash([8; 32]), T0).await.unwrap(),
            None
        );

        let reused = f.store.create_session(token, ann, expires_at).await;
        assert_eq!(reused.unwrap_err().kind, BackendErrorKind::Rejected);
        let stranger = f
            .store
            .create_session(TokenHash([9; 32]), UserId::new(), expires_at)
            .await;
        assert_eq!(stranger.unwrap_err().kind, BackendErrorKind::Rejected);

        f.store.delete_session(token).await.unwrap();
        assert_eq!(user_at(T0).await.unwrap(), None);
        f.store.delete_session(token).await.unwrap();
    }

    #[tokio::test]
    async fn data_survives_reopening_the_file() {
        let f = Fixture::new();
        let (ann, bob) = (f.user("ann").await, f.user("bob").await);
        let (chat, _) = f.store.create_direct(ann, bob).await.unwrap();
        let stored = new_ones(
            &f.store
                .append_messages(&[
                    new_message(chat, ann, "m1", "one"),
                    new_message(chat, bob, "m2", "two"),
                ])
                .await
                .unwrap(),
        );
        f.store
            .create_session(TokenHash([1; 32]), ann, T0 + time::Duration::days(1))
            .await
            .unwrap();
        let before = f.store.conversations_of(ann).await.unwrap();

        let f = f.reopen();
        assert_eq!(
            f.store.messages(chat, page(None, None, 10)).await.unwrap(),
            stored
        );
        assert_eq!(f.store.conversations_of(ann).await.unwrap(), before);
        assert!(
            f.store
                .session_user(TokenHash([1; 32]), T0)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(f.store.create_user("ANN", "h").await.unwrap(), None);
        let again = f
            .store
            .append_messages(&[
                new_message(chat, ann, "m1", "one"),
                new_message(chat, ann, "m3", "three"),
            ])
            .await
            .unwrap();
        assert_eq!(again[0], Appended::Duplicate(stored[0].clone()));
        assert!(matches!(&again[1], Appended::New(m) if m.seq == 3));
    }

    #[tokio::test]
    async fn opening_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parlor.db");
        drop(SqliteStore::open(&path).unwrap());
        let connection = Connection::open(&path).unwrap();
        connection
            .pragma_update(None, "user_version", MIGRATIONS.len() as i64 + 1)
            .unwrap();
        drop(connection);

        let error = SqliteStore::open(&path).unwrap_err();
        assert_eq!(error.kind, BackendErrorKind::Rejected);
        let error = error.to_string();
        assert!(error.contains("schema is version"), "{error}");
    }
}
