//! object_store's errors as the port's: what the caller should do about them.

use std::error::Error;

use parlor_core::BackendError;

/// Everything is `Unavailable` (retry later: the service, the network or the credentials are
/// failing) except a full MinIO (`507 Insufficient Storage`), which is `StorageFull`. object_store
/// has already retried what was transient, within the options' bounds.
pub(crate) fn backend_error(doing: &str, error: object_store::Error) -> BackendError {
    let message = format!("s3: {doing}: {error}");
    if status_in_chain(&error) == Some(507) {
        BackendError::storage_full(message)
    } else {
        BackendError::unavailable(message)
    }
    .with_source(error)
}

/// The HTTP status a request failed with, if a response said one. object_store does not
/// expose its request error type, only its message ("Server returned non-2xx status code:
/// 507 Insufficient Storage: …"), so this reads that; if the wording ever changes, a full
/// MinIO is reported as `Unavailable`, which is still retried.
fn status_in_chain(error: &(dyn Error + 'static)) -> Option<u16> {
    const MARKER: &str = "status code: ";
    let mut next = Some(error);
    while let Some(error) = next {
        let message = error.to_string();
        if let Some(at) = message.find(MARKER) {
            let digits: String = message[at + MARKER.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(status) = digits.parse() {
                return Some(status);
            }
        }
        next = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use parlor_core::BackendErrorKind;

    use super::*;

    fn generic(message: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: message.into(),
        }
    }

    #[test]
    fn a_full_minio_is_storage_full() {
        let error = backend_error(
            "put",
            generic(
                "Error performing PUT http://minio/b/k in 2ms - Server returned non-2xx status \
                 code: 507 Insufficient Storage: <Code>XMinioStorageFull</Code>",
            ),
        );
        assert_eq!(error.kind, BackendErrorKind::StorageFull);
    }

    #[test]
    fn other_failures_are_unavailable() {
        for message in [
            "Error performing PUT http://s3/b/k in 2ms - Server returned non-2xx status code: \
             503 Service Unavailable: slow down",
            "Error performing GET http://127.0.0.1:1/b/k in 1ms - error sending request",
        ] {
            let error = backend_error("get", generic(message));
            assert_eq!(error.kind, BackendErrorKind::Unavailable, "{message}");
            assert!(error.message.starts_with("s3: get: "), "{}", error.message);
        }
    }
}
