//! registry on NATS.
