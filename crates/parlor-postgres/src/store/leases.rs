//! [`Leases`] on PostgreSQL: one row per partition in `partition_leases`, on the database's
//! clock (`now()`), so processes whose clocks disagree still agree on who holds what.
//!
//! Fencing: a fenced batch locks its lease row `FOR SHARE` first thing in its transaction
//! (see `append::append_events`) and is stored only if the lease is still its holder's and
//! live. A takeover's `UPDATE` of that row waits for the batch's commit, so every batch of
//! the old holder commits before the new epoch begins, or not at all.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use parlor_core::error::BackendError;
use parlor_core::ports::{Lease, Leases};

use super::PgStore;
use super::failure::{Failure, run};

/// Milliseconds, as the statements take them.
fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

fn partition_param(partition: u32) -> Result<i32, Failure> {
    i32::try_from(partition)
        .map_err(|_| Failure::Rejected(format!("partition {partition} is too large")))
}

fn epoch_param(lease: &Lease) -> i64 {
    i64::try_from(lease.epoch).unwrap_or(i64::MAX)
}

#[async_trait]
impl Leases for PgStore {
    async fn acquire(
        &self,
        partition: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, BackendError> {
        run("acquire a lease", async {
            let client = self.client().await?;
            // The holder's own live lease is renewed in its epoch; a lapsed or released one
            // is taken in the next; another's live one is left alone (no row returned).
            let statement = client
                .prepare_cached(
                    "INSERT INTO partition_leases AS lease (partition, epoch, owner, expires_at)
                     VALUES ($1, 1, $2, now() + $3::bigint * interval '1 millisecond')
                     ON CONFLICT (partition) DO UPDATE SET
                         epoch = CASE WHEN lease.owner = excluded.owner AND lease.expires_at > now()
                                      THEN lease.epoch ELSE lease.epoch + 1 END,
                         owner = excluded.owner,
                         expires_at = excluded.expires_at
                     WHERE lease.owner = excluded.owner OR lease.expires_at <= now()
                     RETURNING epoch",
                )
                .await?;
            let row = client
                .query_opt(
                    &statement,
                    &[&partition_param(partition)?, &owner, &millis(ttl)],
                )
                .await?;
            let Some(row) = row else { return Ok(None) };
            let epoch: i64 = row.try_get(0)?;
            Ok(Some(Lease {
                partition,
                owner: owner.to_string(),
                epoch: u64::try_from(epoch).unwrap_or(0),
            }))
        })
        .await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, BackendError> {
        run("renew a lease", async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "UPDATE partition_leases SET expires_at = now() + $4::bigint * interval '1 millisecond'
                     WHERE partition = $1 AND owner = $2 AND epoch = $3 AND expires_at > now()",
                )
                .await?;
            let partition = partition_param(lease.partition)?;
            let renewed = client
                .execute(&statement, &[&partition, &lease.owner, &epoch_param(lease), &millis(ttl)])
                .await?;
            Ok(renewed == 1)
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), BackendError> {
        run("release a lease", async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "UPDATE partition_leases SET expires_at = now()
                     WHERE partition = $1 AND owner = $2 AND epoch = $3 AND expires_at > now()",
                )
                .await?;
            let partition = partition_param(lease.partition)?;
            client
                .execute(&statement, &[&partition, &lease.owner, &epoch_param(lease)])
                .await?;
            Ok(())
        })
        .await
    }

    async fn group_members(
        &self,
        group: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, BackendError> {
        run("renew a membership", async {
            let client = self.client().await?;
            // The statement's snapshot does not see its own upsert: `owner` is added apart.
            let statement = client
                .prepare_cached(
                    "WITH renewed AS (
                         INSERT INTO lease_members (group_name, owner, expires_at)
                         VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond')
                         ON CONFLICT (group_name, owner) DO UPDATE SET expires_at = excluded.expires_at
                     ), swept AS (
                         DELETE FROM lease_members
                         WHERE group_name = $1 AND owner <> $2
                           AND expires_at < now() - interval '1 hour'
                     )
                     SELECT owner FROM lease_members
                     WHERE group_name = $1 AND owner <> $2 AND expires_at > now()
                     UNION SELECT $2
                     ORDER BY 1",
                )
                .await?;
            let rows = client
                .query(&statement, &[&group, &owner, &millis(ttl)])
                .await?;
            rows.iter()
                .map(|row| row.try_get::<_, String>(0).map_err(Failure::from))
                .collect()
        })
        .await
    }

    async fn leave_group(&self, group: &str, owner: &str) -> Result<(), BackendError> {
        run("leave a group", async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached("DELETE FROM lease_members WHERE group_name = $1 AND owner = $2")
                .await?;
            client.execute(&statement, &[&group, &owner]).await?;
            Ok(())
        })
        .await
    }
}

impl PgStore {
    /// The partitions `queue` has: `proposed` if this is the first process to ask, else
    /// what the first one recorded. A caller whose count differs must not run: the same
    /// conversation would go to two partitions.
    pub async fn queue_partitions(&self, queue: &str, proposed: u32) -> Result<u32, BackendError> {
        run("read a queue's partitions", async {
            let client = self.client().await?;
            let proposed = partition_count(proposed)?;
            client
                .execute(
                    "INSERT INTO queue_partitions (queue, partitions) VALUES ($1, $2)
                     ON CONFLICT (queue) DO NOTHING",
                    &[&queue, &proposed],
                )
                .await?;
            let row = client
                .query_one(
                    "SELECT partitions FROM queue_partitions WHERE queue = $1",
                    &[&queue],
                )
                .await?;
            let partitions: i32 = row.try_get(0)?;
            Ok(u32::try_from(partitions).unwrap_or(1))
        })
        .await
    }
}

/// Changing a queue's partitions, which needs every consumer stopped: see
/// `parlor partitions --set`.
impl PgStore {
    /// The partitions recorded for `queue`, if a process recorded them.
    pub async fn recorded_partitions(&self, queue: &str) -> Result<Option<u32>, BackendError> {
        run("read a queue's partitions", async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT partitions FROM queue_partitions WHERE queue = $1",
                    &[&queue],
                )
                .await?;
            let partitions = row.map(|row| row.try_get::<_, i32>(0)).transpose()?;
            Ok(partitions.map(|partitions| u32::try_from(partitions).unwrap_or(1)))
        })
        .await
    }

    /// Whoever holds a live membership or partition lease, in any group: the consumers that
    /// must stop before the partitions change.
    pub async fn live_lease_holders(&self) -> Result<Vec<String>, BackendError> {
        run("read the live leases", async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT owner FROM lease_members WHERE expires_at > now()
                     UNION SELECT owner FROM partition_leases WHERE expires_at > now()
                     ORDER BY 1",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|row| row.try_get::<_, String>(0).map_err(Failure::from))
                .collect()
        })
        .await
    }

    /// Records `to` partitions for `queue` if it has `from`; false if it does not (another
    /// change came first).
    pub async fn change_partitions(
        &self,
        queue: &str,
        from: u32,
        to: u32,
    ) -> Result<bool, BackendError> {
        run("change a queue's partitions", async {
            let client = self.client().await?;
            let (from, to) = (partition_count(from)?, partition_count(to)?);
            let changed = client
                .execute(
                    "UPDATE queue_partitions SET partitions = $3 WHERE queue = $1 AND partitions = $2",
                    &[&queue, &from, &to],
                )
                .await?;
            Ok(changed == 1)
        })
        .await
    }
}

fn partition_count(count: u32) -> Result<i32, Failure> {
    i32::try_from(count).map_err(|_| Failure::Rejected(format!("{count} partitions is too many")))
}

/// Inside a batch's transaction: holds `lease` against a takeover until the transaction
/// ends, or fails with [`Failure::Fenced`] if it is no longer current.
pub(super) async fn hold(tx: &Transaction<'_>, lease: &Lease) -> Result<(), Failure> {
    let statement = tx
        .prepare_cached(
            "SELECT 1 FROM partition_leases
             WHERE partition = $1 AND owner = $2 AND epoch = $3 AND expires_at > now()
             FOR SHARE",
        )
        .await?;
    let partition = partition_param(lease.partition)?;
    let held = tx
        .query_opt(&statement, &[&partition, &lease.owner, &epoch_param(lease)])
        .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(Failure::Fenced(format!(
            "the lease on partition {} (epoch {}) is no longer {}'s",
            lease.partition, lease.epoch, lease.owner
        ))),
    }
}
