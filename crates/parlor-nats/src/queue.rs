//! queue on NATS.
