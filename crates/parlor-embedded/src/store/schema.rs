//! The SQLite schema: the migrations in order, and [`migrate`], which runs the ones a file
//! has not seen yet under `PRAGMA user_version`.

use parlor_core::storage::migrations_applied;
use rusqlite::{Connection, TransactionBehavior};

use super::failure::Failure;

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many ran. Append
/// new ones at the end, never edit one that has shipped.
pub(super) const MIGRATIONS: &[&str] = &[r#"
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

/// Applies the migrations `connection`'s file has not seen yet, in one transaction; a file
/// whose schema is newer than this build is `Rejected`.
pub(super) fn migrate(connection: &mut Connection) -> Result<(), Failure> {
    // One IMMEDIATE transaction: two processes opening a fresh file cannot both migrate.
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let applied: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied_count = migrations_applied(applied, MIGRATIONS.len()).map_err(Failure::Rejected)?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied_count) {
        tx.execute_batch(migration)?;
        let version = i64::try_from(index + 1).unwrap_or(i64::MAX);
        tx.pragma_update(None, "user_version", version)?;
        tracing::info!(version, "applied store migration");
    }
    tx.commit()?;
    Ok(())
}
