-- Files, as in the embedded store. `files`: an upload, and the message it is attached to
-- once a message of its owner carries it (conversation, seq and its place among the
-- message's files). `blobs`: how many files use each blob (keys are the SHA-256 of the
-- bytes, so the same bytes are stored once), since when none does, and when a janitor
-- claimed it for deletion; a claimed blob takes no new file until the janitor forgets it.
CREATE TABLE files (
    id              uuid PRIMARY KEY,
    owner_id        uuid NOT NULL REFERENCES users (id),
    name            text NOT NULL,
    content_type    text NOT NULL,
    size            bigint NOT NULL CHECK (size >= 0),
    width           bigint CHECK (width >= 0),
    height          bigint CHECK (height >= 0),
    blob            text COLLATE "C" NOT NULL,
    thumbnail_blob  text COLLATE "C",
    thumbnail_type  text,
    thumbnail_size  bigint CHECK (thumbnail_size >= 0),
    created_at_ns   bigint NOT NULL,
    conversation_id uuid,
    seq             bigint,
    position        integer,
    CHECK ((conversation_id IS NULL) = (seq IS NULL) AND (seq IS NULL) = (position IS NULL)),
    CHECK ((width IS NULL) = (height IS NULL)),
    CHECK ((thumbnail_blob IS NULL) = (thumbnail_type IS NULL)
           AND (thumbnail_type IS NULL) = (thumbnail_size IS NULL)),
    -- Attached to a message that is stored; events are never deleted one by one.
    FOREIGN KEY (conversation_id, seq) REFERENCES events (conversation_id, seq)
);
-- The quota's sum of an owner's sizes, read from the index alone.
CREATE INDEX files_by_owner ON files (owner_id) INCLUDE (size);
-- A message's files in order, for every read of a message and for its delete.
CREATE INDEX files_by_message ON files (conversation_id, seq, position)
    WHERE conversation_id IS NOT NULL;
-- Uploads never attached, oldest first, for their expiry.
CREATE INDEX files_unattached ON files (created_at_ns) WHERE conversation_id IS NULL;

-- A blob nobody uses has been unused since `unused_since_ns`; one in use has neither time.
-- `COLLATE "C"`: keys sort by byte, as the store sorts them in Rust to lock them in order.
CREATE TABLE blobs (
    key             text COLLATE "C" PRIMARY KEY CHECK (length(key) = 64),
    refs            bigint NOT NULL CHECK (refs >= 0),
    unused_since_ns bigint,
    claimed_at_ns   bigint,
    CHECK ((refs = 0) = (unused_since_ns IS NOT NULL)),
    CHECK (claimed_at_ns IS NULL OR refs = 0)
);
-- The janitor's candidates: unused (or claimed) since before a time, oldest first.
CREATE INDEX blobs_unused ON blobs ((coalesce(claimed_at_ns, unused_since_ns))) WHERE refs = 0;
