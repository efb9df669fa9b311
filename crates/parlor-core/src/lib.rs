//! Parlor's core: identifiers, protocol v1 types, validation, the port traits the server
//! roles are written against, and the pure logic they share.
//!
//! This crate does no IO: no sockets, files, clients or runtime. Backends (`parlor-embedded`,
//! `parlor-nats`, `parlor-postgres`) implement its ports; `parlor-server` uses them as
//! `Arc<dyn _>`.

pub mod blobs;
pub mod error;
pub mod events;
pub mod files;
pub mod ids;
pub mod partitions;
pub mod ports;
pub mod protocol;
pub mod queue;
pub mod relay_codec;
pub mod rules;
pub mod search;
pub mod storage;
pub mod validate;

pub use error::{BackendError, BackendErrorKind, ErrorCode};
pub use ids::{ConnectionId, ConversationId, FileId, MessageId, NodeId, Seq, UserId};
