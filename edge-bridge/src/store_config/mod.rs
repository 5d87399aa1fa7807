//! The store's configuration from head office (menu, prices, tenders, taxes, ...): kept in
//! SQLite version by version, served to the POS and handed to the handler. In this crate
//! "config" means this; the process's own settings are [`crate::settings`].
//!
//! - [`sync`]: the configuration downlink (`crate::downlink`): keeps the store in step.
//! - [`error`]: why a round of it failed.
//! - [`cache`]: the SQLite copy, applied a version at a time.
//! - [`handoff`]: hands each applied change set to the handler.

pub mod cache;
pub mod error;
pub mod handoff;
pub mod sync;
