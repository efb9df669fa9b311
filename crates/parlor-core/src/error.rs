//! Errors: one catalog for the wire ([`ErrorCode`]) and one for the backend boundary
//! ([`BackendError`]). `parlor-server` maps codes to HTTP statuses in one place.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Every error a client can see. The wire form is the snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request or frame is not valid JSON of the expected shape.
    InvalidJson,
    /// A WebSocket frame with an unknown `type`.
    UnknownType,
    /// A field is missing, malformed or out of range.
    InvalidInput,
    /// A message body is over the size limit.
    BodyTooLarge,
    /// A username that is malformed.
    InvalidUsername,
    /// A password that is too short or too long.
    WeakPassword,
    /// The username is taken.
    UsernameTaken,
    /// Missing, unknown, expired or revoked credentials.
    Unauthorized,
    /// A cross-site request: foreign `Origin` or missing CSRF header.
    Forbidden,
    /// No such thing, or the caller may not know that it exists.
    NotFound,
    /// The change contradicts the conversation's state (already a member, already reacted,
    /// the last admin stepping down); nothing was changed.
    Conflict,
    /// The caller is over a rate limit.
    RateLimited,
    /// A backend is unavailable; nothing was accepted. Retry later.
    Unavailable,
    /// A bug or an unexpected failure; the cause is in the server log.
    Internal,
    /// A request body that is not JSON (`Content-Type` other than `application/json`).
    UnsupportedMediaType,
    /// The server is out of disk space; nothing was accepted. Retry later.
    StorageFull,
    /// This deployment does not offer the feature (search on a store without a full-text
    /// index); asking again will not help.
    NotAvailable,
    /// The user's files would take more than their quota; nothing was stored.
    QuotaExceeded,
    /// A `Range` outside the file.
    RangeNotSatisfiable,
}

impl ErrorCode {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::InvalidUsername => "invalid_username",
            ErrorCode::WeakPassword => "weak_password",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::NotAvailable => "not_available",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client-visible error: a code, a human-readable message and, for `rate_limited`, how
/// long to wait before the same request can succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// `rate_limited`, with the wait after which the limit allows the next one.
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Self {
            retry_after_ms: Some(
                retry_after
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX)
                    .max(1),
            ),
            ..Self::new(ErrorCode::RateLimited, message)
        }
    }
}

/// What went wrong in a backend, and so what the caller should do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendErrorKind {
    /// Transient (disk busy, network, database restarting): retry with backoff.
    Unavailable,
    /// This input can never succeed: dead-letter it with the reason.
    Rejected,
    /// Durability can no longer be promised (a failed fsync): stop acknowledging, exit,
    /// recover on restart.
    Poisoned,
    /// The backend is out of space: an outage, not a bad input; nothing was written. Retry
    /// later without spending attempts (the same input succeeds once space is freed).
    StorageFull,
    /// The write was made under a [`Lease`](crate::ports::Lease) that lapsed or changed
    /// hands: nothing was written, and the writer must stop (another process consumes now).
    Fenced,
}

/// The error of every port method.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct BackendError {
    pub kind: BackendErrorKind,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Unavailable, message)
    }

    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Rejected, message)
    }

    pub fn poisoned(message: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Poisoned, message)
    }

    pub fn storage_full(message: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::StorageFull, message)
    }

    pub fn fenced(message: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Fenced, message)
    }

    pub fn new(kind: BackendErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause (kept for logs, never sent to clients).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}
