//! Commands down: what head office approved in the portal, addressed to one device or to every
//! device of a store. Idempotent by `command_id`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Reason, WireError};
use crate::ids::{check_amount, check_currency, check_id, check_text, check_uuid_or_ulid};
use crate::SUPPORTED_SCHEMA_VERSIONS;

/// Most approvals a command may carry.
pub const MAX_APPROVALS: usize = 8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandEnvelope {
    pub schema_version: u16,
    /// UUID or ULID chosen by the portal; the idempotency key down.
    pub command_id: String,
    pub tenant_id: String,
    pub store_id: String,
    /// Target device; `None` means every device of the store (fanned out by the broker, which
    /// fills this in on each delivered copy).
    pub device_id: Option<String>,
    pub body: CommandBody,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    pub requested_by: String,
    pub approvals: Vec<Approval>,
    /// Apply only if the device's current revision of the target equals this.
    #[serde(default)]
    pub if_match: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// A registered approver of the tenant (`tillsync approvers add`).
    pub approver: String,
    pub role: String,
    pub approved_at_ms: i64,
    /// The approver's signature over this command ([`crate::approval`]). Without one the
    /// approval is refused (`unsigned_approval`): a name alone proves nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum CommandBody {
    RefundOrder { order_id: String, payment_id: String, amount_minor: i64, currency: String, reason: String },
    VoidOrder { order_id: String, reason: String },
    SetOrderStatus { order_id: String, status: String },
    ApplyMenuPublish { menu_id: String, version: u64 },
    SettingsPatch { revision: u64, settings: BTreeMap<String, String> },
    UserUpsert { user_id: String, display_name: String, role: String },
}

/// Every command kind code, as on the wire.
pub const COMMAND_KINDS: &[&str] =
    &["refund_order", "void_order", "set_order_status", "apply_menu_publish", "settings_patch", "user_upsert"];

impl CommandBody {
    pub fn kind(&self) -> &'static str {
        match self {
            CommandBody::RefundOrder { .. } => "refund_order",
            CommandBody::VoidOrder { .. } => "void_order",
            CommandBody::SetOrderStatus { .. } => "set_order_status",
            CommandBody::ApplyMenuPublish { .. } => "apply_menu_publish",
            CommandBody::SettingsPatch { .. } => "settings_patch",
            CommandBody::UserUpsert { .. } => "user_upsert",
        }
    }

    /// Refunds, voids and order changes need two distinct approvers, neither the requester.
    pub fn required_approvals(&self) -> usize {
        match self {
            CommandBody::RefundOrder { .. } | CommandBody::VoidOrder { .. } | CommandBody::SetOrderStatus { .. } => 2,
            _ => 1,
        }
    }

    fn validate(&self) -> Result<(), WireError> {
        match self {
            CommandBody::RefundOrder { order_id, payment_id, amount_minor, currency, reason } => {
                check_id("order_id", order_id)?;
                check_id("payment_id", payment_id)?;
                check_amount("amount_minor", *amount_minor)?;
                check_currency(currency)?;
                check_text("reason", reason, true)
            }
            CommandBody::VoidOrder { order_id, reason } => {
                check_id("order_id", order_id)?;
                check_text("reason", reason, true)
            }
            CommandBody::SetOrderStatus { order_id, status } => {
                check_id("order_id", order_id)?;
                check_text("status", status, true)
            }
            CommandBody::ApplyMenuPublish { menu_id, .. } => check_id("menu_id", menu_id),
            CommandBody::SettingsPatch { settings, .. } => {
                for (k, v) in settings {
                    check_id("settings key", k)?;
                    check_text("settings value", v, false)?;
                }
                Ok(())
            }
            CommandBody::UserUpsert { user_id, display_name, role } => {
                check_id("user_id", user_id)?;
                check_text("display_name", display_name, true)?;
                check_id("role", role)
            }
        }
    }
}

impl CommandEnvelope {
    /// Structural checks only; the approval policy and expiry are decisions of the broker.
    pub fn validate(&self) -> Result<(), WireError> {
        check_addressing(self.schema_version, &self.command_id, &self.tenant_id, &self.store_id)?;
        if let Some(d) = &self.device_id {
            check_id("device_id", d)?;
        }
        check_id("requested_by", &self.requested_by)?;
        if self.approvals.len() > MAX_APPROVALS {
            return Err(WireError::new(Reason::InvalidField, format!("more than {MAX_APPROVALS} approvals")));
        }
        for a in &self.approvals {
            check_id("approver", &a.approver)?;
            check_id("role", &a.role)?;
            if a.signature.as_ref().is_some_and(|s| s.len() > crate::approval::MAX_SIGNATURE_CHARS) {
                return Err(WireError::new(Reason::InvalidField, "approval signature too long"));
            }
        }
        if self.expires_at_ms <= self.issued_at_ms {
            return Err(WireError::new(Reason::InvalidField, "expires_at_ms must be after issued_at_ms"));
        }
        self.body.validate()
    }
}

/// A cancel request from the portal, on `tillsync.intake.<tenant>.<store>._cancel` (so it is
/// ordered with the store's commands). The answer is on the command's status subject: a
/// `cancelled` status per device copy not yet finished, or, for a copy already final, a
/// status repeating its state with code [`CANCEL_REFUSED`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandCancel {
    pub schema_version: u16,
    pub command_id: String,
    pub tenant_id: String,
    pub store_id: String,
    pub requested_by: String,
    pub at_ms: i64,
}

/// Status code of a copy that was cancelled.
pub const CANCELLED: &str = "cancelled";
/// Status code answering a cancel that came too late: the copy was already final.
pub const CANCEL_REFUSED: &str = "cancel_refused";

impl CommandCancel {
    pub fn validate(&self) -> Result<(), WireError> {
        check_addressing(self.schema_version, &self.command_id, &self.tenant_id, &self.store_id)?;
        check_id("requested_by", &self.requested_by)
    }
}

/// What every message about a command carries: a readable version, its id, tenant and store.
fn check_addressing(schema_version: u16, command_id: &str, tenant: &str, store: &str) -> Result<(), WireError> {
    if !SUPPORTED_SCHEMA_VERSIONS.contains(&schema_version) {
        return Err(WireError::new(Reason::UnsupportedVersion, format!("schema_version {schema_version}")));
    }
    check_uuid_or_ulid("command_id", command_id)?;
    check_id("tenant_id", tenant)?;
    check_id("store_id", store)
}
