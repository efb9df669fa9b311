-- The live members of a group of processes that share partitions (the persisters), each
-- until `expires_at` (the database's clock), renewed as it goes: every member reads the
-- same list and takes its share of the partitions from it.
CREATE TABLE lease_members (
    group_name text NOT NULL,
    owner      text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (group_name, owner)
);

-- How many partitions each queue was created with: fixed, since a conversation's entries
-- must all be in one partition; a process started with another count refuses to run.
CREATE TABLE queue_partitions (
    queue      text PRIMARY KEY,
    partitions integer NOT NULL CHECK (partitions > 0)
);
