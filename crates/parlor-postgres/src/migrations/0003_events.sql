-- A conversation becomes a log of events: every change (a message, an edit, a delete, a
-- reaction, a member added, removed or leaving, a new title or role) is one row of
-- `events` with the next gap-free seq of its conversation. The messages table is that log
-- already (every row so far is a message), so it is renamed and grows the columns the
-- other kinds need; its primary key (conversation_id, seq), its unique id and the unique
-- (sender_id, client_msg_id) carry over, so idempotency is per sender across every kind.
ALTER TABLE messages RENAME TO events;
-- Named after the table again: an append retries a clash on it instead of reporting it.
ALTER TABLE events RENAME CONSTRAINT messages_sender_client_msg_id_key
    TO events_sender_client_msg_id_key;
ALTER TABLE events RENAME CONSTRAINT messages_pkey TO events_pkey;
ALTER TABLE events RENAME CONSTRAINT messages_id_key TO events_id_key;

ALTER TABLE events
    ADD COLUMN kind text NOT NULL DEFAULT 'message' CHECK (kind IN (
        'message', 'edit', 'delete', 'reaction_added', 'reaction_removed', 'member_added',
        'member_removed', 'member_left', 'title_changed', 'role_changed')),
    -- edit, delete, reaction_*: the message it targets; a message: the one it replies to.
    ADD COLUMN target_seq bigint,
    -- Other kinds than message: the JSON of the event's data (parlor_core's
    -- storage::event_columns); an edit's body stays in `body`, where a delete erases it.
    ADD COLUMN data text,
    -- Messages: who the body mentions, hyphenated ids separated by spaces ('' for none).
    ADD COLUMN mentions text NOT NULL DEFAULT '',
    -- Messages: the time of the last edit, if any.
    ADD COLUMN edited_at_ns bigint,
    -- Messages: erased by a delete (the row stays, a placeholder at its seq).
    ADD COLUMN deleted boolean NOT NULL DEFAULT false;
-- A message's edits (to erase their bodies with it) and the replies to it.
CREATE INDEX events_by_target ON events (conversation_id, target_seq)
    WHERE target_seq IS NOT NULL;

-- Who reacted to which message with which emoji, once each. `id` orders reactions made in
-- the same nanosecond by insertion, as the embedded store's rowid does.
CREATE TABLE reactions (
    conversation_id uuid NOT NULL,
    seq             bigint NOT NULL,
    emoji           text NOT NULL,
    user_id         uuid NOT NULL REFERENCES users (id),
    created_at_ns   bigint NOT NULL,
    id              bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (conversation_id, seq, emoji, user_id),
    FOREIGN KEY (conversation_id, seq) REFERENCES events (conversation_id, seq)
        ON DELETE CASCADE
);

ALTER TABLE members
    ADD COLUMN role text NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member')),
    -- When they became a member: the longest-standing one is promoted when the last
    -- admin goes.
    ADD COLUMN joined_at_ns bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_delivered_seq bigint NOT NULL DEFAULT 0 CHECK (last_delivered_seq >= 0),
    ADD COLUMN muted boolean NOT NULL DEFAULT false;

ALTER TABLE conversations
    -- The seq of the newest message (the chat list's last message; other events skip it).
    ADD COLUMN last_message_seq bigint NOT NULL DEFAULT 0,
    -- The seq of the newest event that changed the members or their roles.
    ADD COLUMN members_seq bigint NOT NULL DEFAULT 0;

-- Existing data: every row was a message, and a read message was delivered. Groups made
-- before roles existed have no known creator, so every member of one becomes admin
-- (nobody loses a power they had).
UPDATE conversations SET last_message_seq = last_seq;
UPDATE members m SET last_delivered_seq = m.last_read_seq, joined_at_ns = c.created_at_ns
    FROM conversations c WHERE c.id = m.conversation_id;
UPDATE members SET role = 'admin'
    WHERE conversation_id IN (SELECT id FROM conversations WHERE kind = 'group');
