//! System tests: the real `parlor` binary on a free port, spoken to over real sockets.

mod cli;
mod cluster;
mod dlq;
mod durability;
mod harness;
mod protocol;
