//! How a store call fails: [`Failure`], what stopped the work inside a transaction, and
//! its classification into a [`BackendError`] kind (`Rejected`, `StorageFull`,
//! `Unavailable`) at the boundary.

use parlor_core::error::BackendError;
use parlor_core::storage::TimeOutOfRange;
use rusqlite::ErrorCode;
use tokio::task::JoinError;

/// Why the work inside a transaction stopped; becomes a [`BackendError`] at the boundary.
#[derive(Debug)]
pub(super) enum Failure {
    Db(rusqlite::Error),
    /// The input can never succeed.
    Rejected(String),
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Failure::Db(error)
    }
}

impl From<TimeOutOfRange> for Failure {
    fn from(error: TimeOutOfRange) -> Self {
        Failure::Rejected(error.to_string())
    }
}

impl Failure {
    pub(super) fn into_backend(self, operation: &str) -> BackendError {
        match self {
            Failure::Db(error) => db_error(operation, error),
            Failure::Rejected(reason) => BackendError::rejected(format!("{operation}: {reason}")),
        }
    }
}

/// Constraint violations come from input (an unknown user, a reused token) and can never
/// succeed. A full disk (`SQLITE_FULL`: SQLite's unix VFS reports a write's ENOSPC so) is
/// `StorageFull`: the transaction was rolled back and the same input succeeds once space is
/// freed. Everything else (busy, IO) may pass, so it is `Unavailable`.
pub(super) fn db_error(operation: &str, error: rusqlite::Error) -> BackendError {
    let message = format!("{operation}: {error}");
    match error.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => BackendError::rejected(message),
        Some(ErrorCode::DiskFull) => BackendError::storage_full(message),
        _ => BackendError::unavailable(message),
    }
    .with_source(error)
}

/// The outcome of a store task on the blocking pool; a task that panicked or was
/// cancelled is `Unavailable`.
pub(super) fn joined<T>(
    operation: &str,
    result: Result<Result<T, BackendError>, JoinError>,
) -> Result<T, BackendError> {
    result.unwrap_or_else(|error| {
        if error.is_panic() {
            tracing::error!(operation, %error, "store task panicked");
        }
        Err(BackendError::unavailable(format!("{operation}: store task failed")).with_source(error))
    })
}
