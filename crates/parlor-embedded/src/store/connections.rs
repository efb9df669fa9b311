//! The store's connections: how the writer and the readers are configured (WAL journal,
//! `synchronous=FULL`, foreign keys, query-only readers), and the pool that lends reader
//! connections out.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reader connections per store. Reads are short point and range lookups, so a few
/// connections keep a small machine's cores busy; callers beyond that wait (asynchronously)
/// for one to come back. The writer has its own connection and never waits for these.
pub(super) const READER_CONNECTIONS: usize = 4;
/// How long a statement waits for a lock held by another connection or process (an admin
/// CLI, a checkpoint) before failing with `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The store prepares about 55 distinct statements; room to spare so that none is
/// evicted and prepared again.
const STATEMENT_CACHE_CAPACITY: usize = 128;

pub(super) fn configure_writer(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    let mode: String =
        connection.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Without WAL, readers and the writer would block each other; refuse to run slow
        // and surprising rather than silently.
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!("journal_mode is {mode:?}, wal required")),
        ));
    }
    // FULL: a commit is fsynced before it returns, which is what lets the persister
    // acknowledge the inbound queue right after `append_messages`.
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

pub(super) fn configure_reader(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    connection.pragma_update(None, "foreign_keys", true)?;
    connection.pragma_update(None, "query_only", true)?;
    Ok(())
}

/// The reader connections not in use, and one permit per connection so that waiting for a
/// reader happens in async code, not on a blocking thread.
pub(super) struct ReaderPool {
    pub(super) idle: Mutex<Vec<Connection>>,
    pub(super) permits: Arc<Semaphore>,
}

impl ReaderPool {
    /// A reader connection; `None` only if the permit count and the pool disagree (a bug).
    pub(super) fn checkout(self: Arc<Self>, permit: OwnedSemaphorePermit) -> Option<ReaderLease> {
        // A panic while holding this lock cannot leave the Vec half-changed, so a poisoned
        // lock is still a good one.
        let connection = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        debug_assert!(connection.is_some(), "a reader permit without a reader");
        Some(ReaderLease {
            connection: Some(connection?),
            pool: self,
            _permit: permit,
        })
    }
}

/// A borrowed reader connection; goes back to the pool on drop, before its permit is
/// released (fields drop after `Drop::drop`), even when the work panicked.
pub(super) struct ReaderLease {
    connection: Option<Connection>,
    pool: Arc<ReaderPool>,
    _permit: OwnedSemaphorePermit,
}

impl Deref for ReaderLease {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.connection.as_ref().expect("present until drop")
    }
}

impl DerefMut for ReaderLease {
    fn deref_mut(&mut self) -> &mut Connection {
        self.connection.as_mut().expect("present until drop")
    }
}

impl Drop for ReaderLease {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(connection);
        }
    }
}
