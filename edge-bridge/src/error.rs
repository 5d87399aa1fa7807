//! Errors of the bridge. A [`SubmitError`] leaves the process (HTTP bodies, metric labels), so
//! its codes are stable: validation failures reuse the wire contract's [`Reason`] codes.

use tillsync_schemas::{Reason, WireError};

use crate::settings::SettingsError;

/// Why the bridge refused an event. `code()` is the stable string the POS sees.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The event is malformed or fails the wire contract's checks.
    #[error("{0}")]
    Invalid(WireError),
    /// The outbox reached its configured row or byte limit; nothing was written.
    #[error("outbox full: {rows} rows, {bytes} bytes (limits {max_rows} rows, {max_bytes} bytes)")]
    OutboxFull { rows: u64, bytes: u64, max_rows: u64, max_bytes: u64 },
    /// SQLite failed; nothing was written and the POS should retry.
    #[error("local storage failed: {0}")]
    Storage(String),
    /// The bridge is stopping and takes no more events.
    #[error("the bridge is shutting down")]
    ShuttingDown,
    /// The broker refuses this device's credential ([`crate::cutoff::Reason::Revoked`]): a new
    /// event could never leave. What the outbox holds stays.
    #[error("{0}")]
    Revoked(String),
    /// Likewise, because head office decommissioned the device
    /// ([`crate::cutoff::Reason::Decommissioned`]).
    #[error("{0}")]
    Decommissioned(String),
    /// The POS sent an `event_id` the bridge holds with other content; the original is kept.
    #[error("event_id {event_id} is already held (seq {seq}) with other content; the original is kept: give a new event a new event_id")]
    EventIdReused { event_id: String, seq: u64 },
}

pub const OUTBOX_FULL: &str = "outbox_full";
pub const STORAGE_UNAVAILABLE: &str = "storage_unavailable";
pub const SHUTTING_DOWN: &str = "shutting_down";
pub const REVOKED: &str = "revoked";
pub const DECOMMISSIONED: &str = "decommissioned";
pub const EVENT_ID_REUSED: &str = "event_id_reused";

impl SubmitError {
    pub fn code(&self) -> &'static str {
        match self {
            SubmitError::Invalid(e) => e.reason.as_str(),
            SubmitError::OutboxFull { .. } => OUTBOX_FULL,
            SubmitError::Storage(_) => STORAGE_UNAVAILABLE,
            SubmitError::ShuttingDown => SHUTTING_DOWN,
            SubmitError::Revoked(_) => REVOKED,
            SubmitError::Decommissioned(_) => DECOMMISSIONED,
            SubmitError::EventIdReused { .. } => EVENT_ID_REUSED,
        }
    }

    /// HTTP status for the local API: 4xx for the POS's mistakes, 507/503 for the bridge's
    /// state, 403 while the device is revoked (no retry helps), 409 for a reused event_id.
    pub fn http_status(&self) -> u16 {
        match self {
            SubmitError::Invalid(e) if e.reason == Reason::Oversize => 413,
            SubmitError::Invalid(e) if e.reason == Reason::Undecodable => 400,
            SubmitError::Invalid(_) => 422,
            SubmitError::OutboxFull { .. } => 507,
            SubmitError::Storage(_) | SubmitError::ShuttingDown => 503,
            SubmitError::Revoked(_) | SubmitError::Decommissioned(_) => 403,
            SubmitError::EventIdReused { .. } => 409,
        }
    }

    pub fn detail(&self) -> String {
        match self {
            SubmitError::Invalid(e) => e.detail.clone(),
            other => other.to_string(),
        }
    }
}

impl From<WireError> for SubmitError {
    fn from(e: WireError) -> Self {
        SubmitError::Invalid(e)
    }
}

/// Why the bridge could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A setting refused before start. Its message is the [`SettingsError`]'s (no `#[source]`):
    /// a configuration error has no cause of its own.
    #[error("invalid configuration: {0}")]
    Config(SettingsError),
    #[error("SQLite: {0}")]
    Db(#[from] sqlx::Error),
    #[error("SQLite migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("this outbox belongs to {found}, not {configured}: use another --db")]
    WrongDevice { found: String, configured: String },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("HTTP API: {0}")]
    Http(#[from] std::io::Error),
}
