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
