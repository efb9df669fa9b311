//! The cluster store: [`PgStore`], a `parlor_core::ports::Store` on PostgreSQL 15 or later,
//! with its schema migrations.
//!
//! Depends on `parlor-core` and its one client library (tokio-postgres with a deadpool
//! pool); never on `parlor-server` or another backend crate.

mod store;

pub use store::PgStore;
