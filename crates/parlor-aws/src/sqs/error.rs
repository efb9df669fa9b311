//! SDK failures as `BackendError` kinds, and a bound on every call.

use std::time::Duration;

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use parlor_core::{BackendError, BackendErrorKind};

/// How long a call may take beyond its long poll: the SDK sets no operation timeout, and a
/// call that hangs must become `Unavailable`, never a stuck consumer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Bounds `work` by `limit`.
pub async fn timed<T>(
    limit: Duration,
    what: &str,
    work: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(BackendError::unavailable(format!(
            "{what}: SQS did not answer within {limit:?}"
        )))
    })
}

/// Throttling, timeouts, dropped connections and 5xx are transient; a queue that is gone
/// or access that is denied will not heal by retrying (`Poisoned`: stop with the cause);
/// any other refusal is of the request itself (`Rejected`).
pub fn sqs_error<E>(what: &str, error: SdkError<E, HttpResponse>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = match &error {
        SdkError::ServiceError(service) => {
            kind_of(service.err().code(), service.raw().status().as_u16())
        }
        SdkError::ConstructionFailure(_) => BackendErrorKind::Rejected,
        // Timeouts, dispatch (connection) failures, unreadable responses.
        _ => BackendErrorKind::Unavailable,
    };
    BackendError::new(kind, format!("{what}: {}", DisplayErrorContext(&error))).with_source(error)
}

/// The kind of a refusal by its code (the JSON protocol's, or the query protocol's that the
/// SDK may report instead) and HTTP status.
pub fn kind_of(code: Option<&str>, status: u16) -> BackendErrorKind {
    match code.unwrap_or_default() {
        "ThrottlingException"
        | "RequestThrottled"
        | "KmsThrottled"
        | "OverLimit"
        | "ServiceUnavailable"
        | "InternalError"
        | "InternalFailure"
        | "ExpiredToken"
        | "RequestExpired" => BackendErrorKind::Unavailable,
        code if is_missing_queue(Some(code)) => BackendErrorKind::Poisoned,
        "QueueDeletedRecently"
        | "AWS.SimpleQueueService.QueueDeletedRecently"
        | "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "InvalidSecurity" => BackendErrorKind::Poisoned,
        _ if status >= 500 || status == 429 => BackendErrorKind::Unavailable,
        _ => BackendErrorKind::Rejected,
    }
}

/// An entry of a batch that SQS refused on its own.
pub fn entry_error(
    what: &str,
    code: &str,
    message: Option<&str>,
    sender_fault: bool,
) -> BackendError {
    let kind = match kind_of(Some(code), 400) {
        BackendErrorKind::Rejected if !sender_fault => BackendErrorKind::Unavailable,
        kind => kind,
    };
    BackendError::new(
        kind,
        format!("{what}: {code}: {}", message.unwrap_or("no message")),
    )
}

pub fn is_missing_queue(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("QueueDoesNotExist" | "AWS.SimpleQueueService.NonExistentQueue")
    )
}

/// A receipt handle SQS no longer honours: the delivery's visibility ended and the entry is
/// back in the queue (or handed to another consumer).
pub fn is_stale_receipt(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ReceiptHandleIsInvalid"
                | "InvalidReceiptHandle"
                | "MessageNotInflight"
                | "AWS.SimpleQueueService.MessageNotInflight"
        )
    )
}
