//! The SQLite schema: the migrations in order, and [`migrate`], which runs the ones a file
//! has not seen yet under `PRAGMA user_version`.

use parlor_core::storage::migrations_applied;
use rusqlite::{Connection, TransactionBehavior};

use super::failure::Failure;

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many ran. Append
/// new ones at the end, never edit one that has shipped.
pub(super) const MIGRATIONS: &[&str] = &[
    // The first schema: users, sessions, conversations, members and messages.
    r#"
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
"#,
    // Conversations become logs of events: every kind of event is a row of `events` (the
    // messages table renamed), with the next seq and idempotent per (sender, client_msg_id)
    // across kinds as before. Message rows keep their state in their own columns; the other
    // kinds keep theirs as JSON in `data` (see `parlor_core::storage::event_columns`).
    r#"
ALTER TABLE messages RENAME TO events;
ALTER TABLE events ADD COLUMN kind TEXT NOT NULL DEFAULT 'message';
-- edit/delete/reaction_*: the message it targets; message: its reply_to_seq; else NULL.
ALTER TABLE events ADD COLUMN target_seq INTEGER;
ALTER TABLE events ADD COLUMN data TEXT;
-- Message rows: the mentioned ids, space-separated (`instr` finds one); '' for none.
ALTER TABLE events ADD COLUMN mentions TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN edited_at_ns INTEGER;
ALTER TABLE events ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1));
-- A message's edits (to erase them with it), and the message a reply answers.
CREATE INDEX events_by_target ON events (conversation_id, target_seq)
    WHERE target_seq IS NOT NULL;
-- No index of the messages alone: pages of messages and unread counts range over a
-- conversation's events by its primary key and pass over the other kinds (far fewer than
-- messages), and such an index cost a fifth of the store's write throughput.

-- With a rowid: reactions made in the same nanosecond keep the order they were stored in.
CREATE TABLE reactions (
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    emoji           TEXT NOT NULL,
    user_id         TEXT NOT NULL REFERENCES users (id),
    created_at_ns   INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, seq, emoji, user_id),
    FOREIGN KEY (conversation_id, seq) REFERENCES events (conversation_id, seq) ON DELETE CASCADE
) STRICT;

ALTER TABLE members ADD COLUMN role TEXT NOT NULL DEFAULT 'member'
    CHECK (role IN ('admin', 'member'));
ALTER TABLE members ADD COLUMN joined_at_ns INTEGER NOT NULL DEFAULT 0;
ALTER TABLE members ADD COLUMN last_delivered_seq INTEGER NOT NULL DEFAULT 0
    CHECK (last_delivered_seq >= 0);
ALTER TABLE members ADD COLUMN muted INTEGER NOT NULL DEFAULT 0 CHECK (muted IN (0, 1));
ALTER TABLE conversations ADD COLUMN last_message_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN members_seq INTEGER NOT NULL DEFAULT 0;

-- Existing data: every row was a message. Groups made before roles existed have no known
-- creator, so every member of one becomes admin (nobody loses a power they had).
UPDATE conversations SET last_message_seq = last_seq;
UPDATE members SET last_delivered_seq = last_read_seq,
    joined_at_ns = (SELECT created_at_ns FROM conversations c WHERE c.id = members.conversation_id);
UPDATE members SET role = 'admin'
    WHERE conversation_id IN (SELECT id FROM conversations WHERE kind = 'group');
"#,
    // Full-text search over message bodies: an FTS5 index whose content is `events` itself
    // (no second copy of the bodies), kept by triggers in the transaction of every write, so
    // a message is found as soon as it is stored, an edit by its new body only, and a
    // delete (which erases the body) not at all. Porter stemming on unicode61 words,
    // accents folded. FTS5 links rows by `events.rowid`, which a VACUUM may renumber (the
    // table has no INTEGER PRIMARY KEY): after a VACUUM, rebuild the index with
    // `INSERT INTO message_search (message_search) VALUES ('rebuild')`.
    r#"
CREATE VIRTUAL TABLE message_search USING fts5 (
    body,
    content = 'events',
    content_rowid = 'rowid',
    tokenize = 'porter unicode61 remove_diacritics 2'
);
INSERT INTO message_search (rowid, body)
    SELECT rowid, body FROM events WHERE kind = 'message' AND deleted = 0;
CREATE TRIGGER events_search_insert AFTER INSERT ON events WHEN new.kind = 'message' BEGIN
    INSERT INTO message_search (rowid, body) VALUES (new.rowid, new.body);
END;
CREATE TRIGGER events_search_update AFTER UPDATE OF body ON events
    WHEN old.kind = 'message' BEGIN
    INSERT INTO message_search (message_search, rowid, body)
        VALUES ('delete', old.rowid, old.body);
    INSERT INTO message_search (rowid, body) VALUES (new.rowid, new.body);
END;
CREATE TRIGGER events_search_delete AFTER DELETE ON events WHEN old.kind = 'message' BEGIN
    INSERT INTO message_search (message_search, rowid, body)
        VALUES ('delete', old.rowid, old.body);
END;
"#,
];

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
