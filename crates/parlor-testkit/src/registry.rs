//! The `registry` contract.
