-- The first schema: the same tables as the embedded store, so that both keep the same
-- invariants. Times are unix nanoseconds (UTC) in `*_ns` bigint columns: `timestamptz`
-- keeps only microseconds, and a message must read back exactly as it was accepted.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text NOT NULL,
    password_hash text NOT NULL,
    created_at_ns bigint NOT NULL,
    last_seen_ns  bigint
);
-- Unique ignoring case. Under the "C" collation lower() folds ASCII only and the index
-- sorts by byte, exactly as SQLite's NOCASE does; usernames are ASCII by validation.
CREATE UNIQUE INDEX users_by_folded_name ON users ((lower(username COLLATE "C")));

CREATE TABLE sessions (
    token_hash    bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at_ns bigint NOT NULL,
    expires_at_ns bigint NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);

-- direct_key: the two member ids, sorted and joined by ':', so a pair has one direct
-- conversation whatever the order it was asked for in. last_seq is the seq of the newest
-- message; appends lock the row and move it, which keeps seqs gap-free.
CREATE TABLE conversations (
    id                  uuid PRIMARY KEY,
    kind                text NOT NULL CHECK (kind IN ('direct', 'group')),
    title               text,
    direct_key          text UNIQUE,
    last_seq            bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    last_activity_at_ns bigint NOT NULL,
    created_at_ns       bigint NOT NULL,
    CHECK ((kind = 'direct') = (direct_key IS NOT NULL))
);

CREATE TABLE members (
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    last_read_seq   bigint NOT NULL DEFAULT 0 CHECK (last_read_seq >= 0),
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id);

CREATE TABLE messages (
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             bigint NOT NULL CHECK (seq >= 1),
    id              uuid NOT NULL UNIQUE,
    sender_id       uuid NOT NULL REFERENCES users (id),
    client_msg_id   text NOT NULL,
    body            text NOT NULL,
    created_at_ns   bigint NOT NULL,
    PRIMARY KEY (conversation_id, seq),
    -- Named: a clash on it between two concurrent appends is retried, not reported.
    CONSTRAINT messages_sender_client_msg_id_key UNIQUE (sender_id, client_msg_id)
);
