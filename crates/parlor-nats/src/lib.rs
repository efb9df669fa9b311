//! The cluster queues, connection registry, presence and relay, on NATS JetStream.

pub mod queue;
pub mod registry;
pub mod relay;
