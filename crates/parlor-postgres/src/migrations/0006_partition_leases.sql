-- Who consumes each partition of the inbound queue: one persister at a time, until
-- `expires_at` (the database's clock), renewed as it goes. `epoch` grows whenever the lease
-- is taken after it lapsed or was released; a batch is stored only while its persister's
-- (partition, owner, epoch) is current, checked in the batch's own transaction.
CREATE TABLE partition_leases (
    partition  integer PRIMARY KEY CHECK (partition >= 0),
    epoch      bigint NOT NULL CHECK (epoch > 0),
    owner      text NOT NULL,
    expires_at timestamptz NOT NULL
);
