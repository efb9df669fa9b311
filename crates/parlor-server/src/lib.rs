//! Parlor's server roles: the gateway (HTTP + WebSocket), the persister, the notifier and
//! presence, each a `run(deps, config, shutdown)` that talks to the world only through the
//! ports of `parlor-core`. This crate never names a backend; `parlor` wires one in.

pub mod auth;
pub mod config;
pub mod consumer;
mod deliver;
pub mod gateway;
pub mod janitor;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod notifier;
pub mod persister;
pub mod presence;
mod retry;
mod shutdown;

use std::sync::Arc;

use parlor_core::blobs::BlobStore;
use parlor_core::ports::{Leases, Presence, Queue, Registry, Relay, Store};
use parlor_core::search::Search;

pub use shutdown::{Shutdown, ShutdownSignal};

/// The ports every role is given. Cheap to clone.
#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    /// Accepted messages on their way to the persister.
    pub inbound: Arc<dyn Queue>,
    /// Stored messages on their way to connected members.
    pub notifications: Arc<dyn Queue>,
    pub registry: Arc<dyn Registry>,
    pub presence: Arc<dyn Presence>,
    pub relay: Arc<dyn Relay>,
    /// Full-text search over messages; `None` where the store has no index (the gateway
    /// answers `not_available`).
    pub search: Option<Arc<dyn Search>>,
    /// The bytes of files shared in conversations.
    pub blobs: Arc<dyn BlobStore>,
    /// Where several persisters may consume the inbound queue (the cluster): the lease that
    /// lets one at a time, and fences the others' batches. `None`: this one alone.
    pub inbound_lease: Option<InboundLease>,
}

/// How the persisters share the inbound queue where several run (the cluster): its
/// partitions, each held by one persister at a time through a lease that also fences the
/// others' batches, and divided among the live persisters. The notification queue has as
/// many partitions, placed by the same rule: the holder of inbound partition `p` delivers
/// notification partition `p` too, so that delivering grows with the persisters as storing
/// does.
#[derive(Clone)]
pub struct InboundLease {
    pub leases: Arc<dyn Leases>,
    /// How long a lease or a membership lasts unless renewed (every quarter of it): about
    /// how soon the others take over a persister that died.
    pub ttl: std::time::Duration,
    /// The inbound queue's partitions, by number (`Deps::inbound` appends to them all).
    pub partitions: Vec<Arc<dyn Queue>>,
    /// The notification queue's partitions, by number, as many as `partitions`.
    pub notifications: Vec<Arc<dyn Queue>>,
}
