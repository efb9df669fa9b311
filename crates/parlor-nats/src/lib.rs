//! The cluster queues, connection registry, presence and relay, on NATS JetStream.

pub mod client;
pub mod queue;
pub mod registry;
pub mod relay;
