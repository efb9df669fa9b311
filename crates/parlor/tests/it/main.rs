//! System tests: the real `parlor` binary on a free port, spoken to over real sockets.

#[cfg(feature = "aws")]
mod aws;
mod cli;
mod cluster;
mod cluster_chaos;
mod cluster_outage;
mod cluster_partitions;
mod cluster_replicated;
mod cluster_takeover;
mod connections;
mod convergence;
mod delivery;
mod disk;
mod dlq;
mod durability;
mod events;
mod files;
mod harness;
mod nats_cluster;
mod protocol;
mod search;
mod security;
mod upgrade;
