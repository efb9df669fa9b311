//! The cluster store: PostgreSQL.
