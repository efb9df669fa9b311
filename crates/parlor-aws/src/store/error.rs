//! SDK errors → [`BackendError`], whose kind tells the caller what to do: what a retry may
//! mend (throttling, a 5xx, a timeout, a lost connection, a transaction in the way) is
//! `Unavailable`; what says our tables are not what this build expects (a missing table,
//! a key that does not match its schema, an item we cannot read) is `Poisoned`; input
//! DynamoDB refuses (an item over 400 KB) is `Rejected`.

use std::fmt::Debug;

use aws_sdk_dynamodb::error::{BuildError, ProvideErrorMetadata, SdkError};
use parlor_core::error::{BackendError, BackendErrorKind};

/// Codes DynamoDB answers for load or transient trouble; the same call later succeeds.
const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionConflictException",
    "TransactionInProgressException",
    "LimitExceededException",
    // Credentials or permissions being fixed by an operator: waiting is all we can do.
    "AccessDeniedException",
    "UnrecognizedClientException",
    "ExpiredTokenException",
];

/// `error` of the call `what`, classified.
pub(super) fn sdk<E, R>(what: &str, error: SdkError<E, R>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: Debug + Send + Sync + 'static,
{
    let (kind, detail) = match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (BackendErrorKind::Unavailable, format!("{error}"))
        }
        SdkError::ServiceError(_) => {
            let code = error.code().unwrap_or("");
            let message = error.message().unwrap_or("");
            (service_kind(code, message), format!("{code}: {message}"))
        }
        SdkError::ConstructionFailure(_) => (BackendErrorKind::Rejected, format!("{error}")),
        _ => (BackendErrorKind::Unavailable, format!("{error}")),
    };
    BackendError::new(kind, format!("{what}: {detail}")).with_source(error)
}

/// The kind of a service error by its code (and, for validation, its message).
pub(super) fn service_kind(code: &str, message: &str) -> BackendErrorKind {
    if TRANSIENT_CODES.contains(&code) {
        return BackendErrorKind::Unavailable;
    }
    match code {
        "ResourceNotFoundException" => BackendErrorKind::Poisoned,
        // A key that does not fit the table is our schema's fault, not the input's.
        "ValidationException" if message.contains("key") && message.contains("schema") => {
            BackendErrorKind::Poisoned
        }
        "ValidationException" | "ConditionalCheckFailedException" => BackendErrorKind::Rejected,
        // Unknown trouble: retrying is safer than dead-lettering a change.
        _ => BackendErrorKind::Unavailable,
    }
}

/// A request this build failed to put together: our bug.
pub(super) fn build(what: &str, error: BuildError) -> BackendError {
    BackendError::rejected(format!("{what}: cannot build the request: {error}")).with_source(error)
}

/// An item that does not read as this build wrote it: the table is not ours (or not this
/// version's), so nothing read from it can be trusted.
pub(super) fn unreadable(table: &str, what: impl std::fmt::Display) -> BackendError {
    BackendError::poisoned(format!("item of {table} unreadable: {what}"))
}

/// The same error with `what` in front: which store method failed.
pub(super) fn context(what: &str, error: BackendError) -> BackendError {
    BackendError {
        message: format!("{what}: {}", error.message),
        ..error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_errors_are_classified_by_what_a_retry_can_mend() {
        use BackendErrorKind::{Poisoned, Rejected, Unavailable};
        let cases = [
            ("ProvisionedThroughputExceededException", "", Unavailable),
            ("ThrottlingException", "", Unavailable),
            ("InternalServerError", "", Unavailable),
            ("TransactionConflictException", "", Unavailable),
            (
                "ResourceNotFoundException",
                "Requested resource not found",
                Poisoned,
            ),
            (
                "ValidationException",
                "The provided key element does not match the schema",
                Poisoned,
            ),
            (
                "ValidationException",
                "Item size has exceeded the maximum allowed size",
                Rejected,
            ),
            ("SomethingNew", "", Unavailable),
        ];
        for (code, message, kind) in cases {
            assert_eq!(service_kind(code, message), kind, "{code}: {message}");
        }
    }
}
