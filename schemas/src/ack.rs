//! Command acks up and ack watermarks down.

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::ids::{check_id, check_text, check_uuid_or_ulid};
use crate::subject::DeviceAddr;

/// What the device did with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    /// Tried and failed (handler error, timeout).
    Failed,
    /// Refused without trying (expired on arrival, precondition failed).
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Failed => "failed",
            Outcome::Rejected => "rejected",
        }
    }
}

/// Well-known ack codes a bridge sends. Handlers may add their own codes for `failed`.
pub mod codes {
    pub const OK: &str = "ok";
    pub const EXPIRED: &str = "expired";
    pub const PRECONDITION_FAILED: &str = "precondition_failed";
    pub const HANDLER_TIMEOUT: &str = "handler_timeout";
    pub const HANDLER_ERROR: &str = "handler_error";
    pub const UNSUPPORTED: &str = "unsupported";
    /// The command is unsigned, signed by a key the device does not trust, altered, or signed
    /// for another device.
    pub const BAD_SIGNATURE: &str = "bad_signature";
}

/// `tillsync.cack.<tenant>.<store>.<device>`: one per command outcome; resent acks are idempotent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandAck {
    pub schema_version: u16,
    pub command_id: String,
    pub tenant_id: String,
    pub store_id: String,
    pub device_id: String,
    pub outcome: Outcome,
    pub code: String,
    #[serde(default)]
    pub detail: String,
    pub at_ms: i64,
}

impl CommandAck {
    pub fn addr(&self) -> DeviceAddr {
        DeviceAddr::new(&self.tenant_id, &self.store_id, &self.device_id)
    }

    pub fn validate(&self) -> Result<(), WireError> {
        self.addr().validate()?;
        check_uuid_or_ulid("command_id", &self.command_id)?;
        check_id("code", &self.code)?;
        check_text("detail", &self.detail, false)
    }
}

/// `tillsync.wm.<tenant>.<store>.<device>`: the highest seq such that every event 1..=seq of
/// the device is committed in the cloud. Bridges prune their outbox up to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub tenant_id: String,
    pub store_id: String,
    pub device_id: String,
    pub seq: u64,
    pub at_ms: i64,
}
