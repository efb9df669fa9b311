//! Contract suites for the ports of `parlor-core`: every backend runs the same checks, so
//! the guarantees are the same everywhere. Each suite is a set of `pub async fn`s plus a
//! macro that turns them into one `#[tokio::test]` per check for a backend's factory.

pub mod queue;
pub mod registry;
pub mod store;
