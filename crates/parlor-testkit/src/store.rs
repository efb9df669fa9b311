//! The `store` contract.
