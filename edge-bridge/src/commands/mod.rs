//! Commands down: head office's commands for this device, verified, decided against the
//! ledger, run by the handler ([`crate::handler`]) and acked with their outcome.
//!
//! - [`executor`]: the commands downlink (`crate::downlink`): receives, decides, runs, acks.
//! - [`error`]: why a round of it failed.
//! - [`keys`]: keeps the keys whose command signatures are trusted current.
//! - [`ledger`]: the SQLite command ledger, the dedupe authority down.

pub mod error;
pub mod executor;
pub mod keys;
pub mod ledger;
