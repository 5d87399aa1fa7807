//! What the chaos run records as it goes (the POS's accepted events, the portal's commands and
//! the statuses it was told, the handler's applications) and what it reads from Postgres at
//! the end. Plain data: the checker is a set of pure functions over these.

use serde::Serialize;
use tillsync_schemas::EventBody;

/// One answer a bridge gave the POS (202 Accepted, or 200 for a retried `event_id`).
#[derive(Debug, Clone, Serialize)]
pub struct AcceptedEvent {
    pub device_id: String,
    pub seq: u64,
    pub event_id: String,
    pub body: EventBody,
    pub at_ms: i64,
}

/// A command the portal published on intake (`confirmed`: JetStream returned a PubAck).
#[derive(Debug, Clone, Serialize)]
pub struct SentCommand {
    pub command_id: String,
    pub device_id: String,
    pub kind: String,
    pub sent_ms: i64,
    pub confirmed: bool,
}

/// A status message the portal read from `TILLSYNC_STATUS`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusSeen {
    pub command_id: String,
    pub device_id: Option<String>,
    /// The state as on the wire (`acked`, `failed`, ...), kept as text so states added later
    /// (e.g. `cancelled`) need no change here.
    pub state: String,
    pub code: Option<String>,
    pub at_ms: i64,
    pub received_ms: i64,
}

impl StatusSeen {
    /// A final state, as the wire contract defines it (`CommandState::is_final`).
    pub fn is_final(&self) -> bool {
        tillsync_schemas::CommandState::parse(&self.state).is_some_and(|s| s.is_final())
    }

    /// Whether this status tells the portal the command was applied. Only `acked` says so,
    /// including the `acked` that corrects an earlier final state (`CommandStatus::corrects`).
    pub fn reports_applied(&self) -> bool {
        self.state == "acked"
    }
}

/// One run of the command handler at a device (recorded before the handler answers).
#[derive(Debug, Clone, Serialize)]
pub struct Application {
    pub command_id: String,
    pub device_id: String,
    pub at_ms: i64,
}

/// One `processed_events` ledger row.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerRow {
    pub device_id: String,
    pub event_id: String,
    pub seq: i64,
    pub outcome: String,
}

/// One read-model row of a device, reduced to what the events say (no timestamps, no seq
/// bookkeeping): `table` and `key` name it, `value` is its facts as text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ModelRow {
    pub device_id: String,
    pub table: &'static str,
    pub key: String,
    pub value: String,
}

/// One command copy as Postgres holds it.
#[derive(Debug, Clone, Serialize)]
pub struct CommandRecord {
    pub command_id: String,
    pub device_id: String,
    /// `command_inbox.state`, None when intake never queued it (rejected, or never received).
    pub inbox_state: Option<String>,
    pub rejected_code: Option<String>,
    /// Final states in `command_log` for this copy, in log order.
    pub final_log_states: Vec<String>,
}

/// Everything the checker reads.
#[derive(Debug, Default, Serialize)]
pub struct Histories {
    pub accepted: Vec<AcceptedEvent>,
    pub ledger: Vec<LedgerRow>,
    pub rows: Vec<ModelRow>,
    pub sent: Vec<SentCommand>,
    pub statuses: Vec<StatusSeen>,
    pub applications: Vec<Application>,
    pub commands: Vec<CommandRecord>,
}
