//! How a store call fails: [`Failure`], what stopped a call (the database, the pool, input
//! that can never succeed, or stored data this build cannot read), and its classification
//! into a [`BackendError`] kind (`Rejected`, `StorageFull`, `Unavailable`) at the boundary.

use std::error::Error as _;
use std::future::Future;

use deadpool_postgres::PoolError;
use parlor_core::error::BackendError;
use parlor_core::storage::TimeOutOfRange;
use tokio_postgres::error::SqlState;

/// Why a call stopped; becomes a [`BackendError`] at the boundary.
#[derive(Debug)]
pub(super) enum Failure {
    Db(tokio_postgres::Error),
    Pool(PoolError),
    /// The input can never succeed.
    Rejected(String),
    /// A stored value this build cannot read (an event's `data` that does not parse).
    Unreadable(String),
    /// The lease a fenced write was made under is no longer current.
    Fenced(String),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Failure::Db(error)
    }
}

impl From<PoolError> for Failure {
    fn from(error: PoolError) -> Self {
        Failure::Pool(error)
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
            // No connection (a timeout, a refused or failed connect, a closed pool): the
            // database may be back in a moment.
            Failure::Pool(error) => {
                let message = match error.source() {
                    Some(source) => format!("{operation}: {error}: {source}"),
                    None => format!("{operation}: {error}"),
                };
                BackendError::unavailable(message).with_source(error)
            }
            Failure::Rejected(reason) => BackendError::rejected(format!("{operation}: {reason}")),
            Failure::Fenced(reason) => BackendError::fenced(format!("{operation}: {reason}")),
            // As a column the driver cannot decode (an unknown kind or role): the caller's
            // input is not at fault, so it is not `Rejected`.
            Failure::Unreadable(reason) => {
                BackendError::unavailable(format!("{operation}: unreadable stored data: {reason}"))
            }
        }
    }
}

/// Data exceptions (class 22: NUL in text, a value out of range) and integrity violations
/// (class 23: an unknown user, a reused token) come from the input and can never succeed:
/// `Rejected`. A full disk (53100 `disk_full`) is an outage that ends when space is freed:
/// `StorageFull`. Everything else (a lost connection, a restarting server, a deadlock) may
/// pass: `Unavailable`.
fn db_error(operation: &str, error: tokio_postgres::Error) -> BackendError {
    let message = match (error.as_db_error(), error.source()) {
        (Some(db), _) => format!("{operation}: {db}"),
        (None, Some(source)) => format!("{operation}: {error}: {source}"),
        (None, None) => format!("{operation}: {error}"),
    };
    if error.code() == Some(&SqlState::DISK_FULL) {
        return BackendError::storage_full(message).with_source(error);
    }
    let class = error.code().map(|code| &code.code()[..2]);
    match class {
        Some("22" | "23") => BackendError::rejected(message),
        _ => BackendError::unavailable(message),
    }
    .with_source(error)
}

/// Runs `work` and names the operation in its error.
pub(super) async fn run<T>(
    operation: &str,
    work: impl Future<Output = Result<T, Failure>>,
) -> Result<T, BackendError> {
    work.await
        .map_err(|failure| failure.into_backend(operation))
}
