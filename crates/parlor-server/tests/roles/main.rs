//! The roles (persister, notifier, presence) run in this process on the embedded backends,
//! with scripted faults around the ports and paused time: each delicate behaviour is a test
//! of milliseconds. See `harness` for what can be scripted.

mod harness;
mod notifier;
mod persist_batch;
mod persister;
mod presence;
