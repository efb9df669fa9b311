//! The embedded backends: everything Parlor needs in one process and one data directory.
//!
//! - [`WalQueue`]: the inbound and notification queues and their dead-letter sides, on
//!   `parlor-wal`.
//! - [`SqliteStore`]: users, sessions, conversations, messages and read markers in SQLite.
//! - [`DirBlobStore`]: the files shared in conversations, content-addressed, under the data
//!   directory's `blobs/`.
//! - [`MemoryRegistry`]: connections and presence in memory; [`LocalRelay`]: commands to the
//!   gateway node in this process.
//!
//! Depends on `parlor-core` and `parlor-wal`; never on `parlor-server`.

mod blobs;
mod queue;
mod registry;
mod relay;
mod store;

pub use blobs::DirBlobStore;
/// For fault-injection tests ([`WalQueue::open_with_sync_hook`]).
#[doc(hidden)]
pub use parlor_wal::SyncHook;
pub use queue::{WalQueue, WalQueueOptions};
pub use registry::MemoryRegistry;
pub use relay::LocalRelay;
pub use store::SqliteStore;
