//! relay on NATS.
