//! The parts of the `tillsync` operator CLI that `tillsync-lab` (benchmarks and the chaos run,
//! lab/) uses too: the global options, Postgres and NATS connections, how a failure ends,
//! the replay lanes, test approvers, activation codes, partitions and output. The operator
//! subcommands themselves live in the binary (src/main.rs), which uses these as its own.
//!
//! These modules were written as the binary's and still return `anyhow` errors; the typed
//! ones a caller may match on are in [`failure`].

pub mod approvers;
pub mod db;
pub mod failure;
pub mod global;
pub mod identity;
pub mod known;
pub mod nats_server;
pub mod output;
pub mod partitions;
pub mod replay;
pub mod usage;
