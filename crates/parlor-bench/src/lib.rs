//! parlor-bench as a library: the scenarios and what they share, so that a system test can
//! run one (the delivery checker, `scenarios::check`) in process against the binary it built.

pub mod client;
pub mod delay_proxy;
pub mod report;
pub mod rng;
pub mod scenarios;
pub mod server;
