//! Command status feedback to the portal: one message per transition.

use serde::{Deserialize, Serialize};

/// A command's state. `[pending_approval ->] queued -> delivered -> acked | failed`; any
/// unfinished state -> `expired` or `cancelled`; `rejected` at intake or by an approver (or
/// when it expires still waiting for approval).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Recorded, waiting for the approvals its kind needs; nothing is delivered yet.
    PendingApproval,
    Queued,
    Delivered,
    Acked,
    Failed,
    Expired,
    Rejected,
    /// Cancelled by the portal or an operator before the device applied it.
    Cancelled,
}

impl CommandState {
    pub const ALL: &'static [CommandState] = &[
        CommandState::PendingApproval,
        CommandState::Queued,
        CommandState::Delivered,
        CommandState::Acked,
        CommandState::Failed,
        CommandState::Expired,
        CommandState::Rejected,
        CommandState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::PendingApproval => "pending_approval",
            CommandState::Queued => "queued",
            CommandState::Delivered => "delivered",
            CommandState::Acked => "acked",
            CommandState::Failed => "failed",
            CommandState::Expired => "expired",
            CommandState::Rejected => "rejected",
            CommandState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<CommandState> {
        CommandState::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// Final states never change again.
    pub fn is_final(self) -> bool {
        !matches!(self, CommandState::PendingApproval | CommandState::Queued | CommandState::Delivered)
    }
}

/// `tillsync.status.<tenant>.<store>.<command_id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandStatus {
    pub command_id: String,
    pub tenant_id: String,
    pub store_id: String,
    pub device_id: Option<String>,
    pub state: CommandState,
    pub attempt: u32,
    pub code: Option<String>,
    #[serde(default)]
    pub detail: String,
    pub at_ms: i64,
    /// Set on an `acked` status that corrects an earlier final one: the device applied the
    /// command after the portal was told it ended in this state (`failed`, `expired` or
    /// `cancelled`). Nil on every other status.
    #[serde(default)]
    pub corrects: Option<CommandState>,
}
