//! The `queue` contract.
