//! Contract suites for the ports of `parlor-core`: every backend runs the same checks, so
//! the guarantees are the same everywhere. Each suite is a set of `pub async fn`s plus a
//! macro that turns them into one `#[tokio::test]` per check for a backend's factory.
//!
//! Also what the system tests and the bench share: `process` starts the `parlor` binary, a
//! nats-server and a PostgreSQL server of the caller's own; `client` speaks protocol v1 over
//! real sockets.

pub mod blobs;
pub mod client;
pub mod files;
pub mod images;
pub mod partitions;
pub mod process;
pub mod queue;
pub mod registry;
pub mod search;
pub mod store;
