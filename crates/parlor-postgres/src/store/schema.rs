//! The PostgreSQL schema: the migrations (the `.sql` files in `src/migrations`) in order,
//! and [`migrate`], which runs the ones a database has not seen yet, one process at a time
//! under an advisory lock, recording each in `parlor_schema_migrations`.

use parlor_core::storage::migrations_applied;

use super::PgStore;
use super::failure::Failure;

/// The advisory lock that serializes migrations across processes: "parlor" in ASCII.
const MIGRATION_LOCK: i64 = 0x7061_726c_6f72;

/// Schema migrations, applied in order; `parlor_schema_migrations` records which ran.
/// Append new ones at the end, never edit one that has shipped.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_initial.sql"),
    include_str!("../migrations/0002_messages_without_foreign_keys.sql"),
    include_str!("../migrations/0003_events.sql"),
    include_str!("../migrations/0004_search.sql"),
    include_str!("../migrations/0005_files.sql"),
    include_str!("../migrations/0006_partition_leases.sql"),
    include_str!("../migrations/0007_lease_members.sql"),
    include_str!("../migrations/0008_search_terms_made_by_parlor.sql"),
];

/// Applies the migrations the database has not seen yet, in one transaction; a database
/// whose schema is newer than this build is `Rejected`.
pub(super) async fn migrate(store: &PgStore) -> Result<(), Failure> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    // Held until commit: processes starting together migrate one after the other, and
    // all but the first find nothing left to do.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS parlor_schema_migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let applied: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM parlor_schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    let applied_count =
        migrations_applied(i64::from(applied), MIGRATIONS.len()).map_err(Failure::Rejected)?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied_count) {
        tx.batch_execute(migration).await?;
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO parlor_schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tracing::info!(version, "applied store migration");
    }
    tx.commit().await?;
    Ok(())
}
