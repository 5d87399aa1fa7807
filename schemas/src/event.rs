//! Events up: append-only facts from a device. The device is authoritative for orders and
//! payments; the cloud keeps a replica.

use serde::{Deserialize, Serialize};

use crate::error::{Reason, WireError};
use crate::ids::{check_amount, check_currency, check_id, check_text, check_uuid_or_ulid};
use crate::subject::DeviceAddr;
use crate::SUPPORTED_SCHEMA_VERSIONS;

/// One event as it travels on `tillsync.ev.<tenant>.<store>.<device>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub schema_version: u16,
    pub tenant_id: String,
    pub store_id: String,
    pub device_id: String,
    /// UUIDv7 or ULID, unique per device forever.
    pub event_id: String,
    /// Device-local sequence, starting at 1 and contiguous.
    pub seq: u64,
    /// When it happened on the device, Unix milliseconds.
    pub occurred_at_ms: i64,
    pub body: EventBody,
}

/// The typed payload: `{"kind": "...", "payload": {...}}` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum EventBody {
    OrderOpened(OrderOpened),
    OrderItemAdded(OrderItemAdded),
    OrderItemRemoved(OrderItemRemoved),
    OrderStatusChanged(OrderStatusChanged),
    PaymentCaptured(PaymentCaptured),
    PaymentRefunded(PaymentRefunded),
    ReceiptIssued(ReceiptIssued),
    AvailabilityOverridden(AvailabilityOverridden),
}

/// Every event kind code, as on the wire.
pub const EVENT_KINDS: &[&str] = &[
    "order_opened",
    "order_item_added",
    "order_item_removed",
    "order_status_changed",
    "payment_captured",
    "payment_refunded",
    "receipt_issued",
    "availability_overridden",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderOpened {
    pub order_id: String,
    pub currency: String,
    #[serde(default)]
    pub table: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderItemAdded {
    pub order_id: String,
    pub line_id: String,
    pub sku: String,
    pub name: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderItemRemoved {
    pub order_id: String,
    pub line_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderStatusChanged {
    pub order_id: String,
    /// open, held, paid, closed, voided (free text up to 32 bytes; the device decides).
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub order_id: String,
    pub payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub method: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub order_id: String,
    pub payment_id: String,
    pub refund_id: String,
    pub amount_minor: i64,
    pub currency: String,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptIssued {
    pub order_id: String,
    pub receipt_id: String,
    pub number: String,
    pub total_minor: i64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AvailabilityOverridden {
    pub sku: String,
    pub available: bool,
    /// Until when the override holds, Unix ms; `None` until changed again.
    #[serde(default)]
    pub until_ms: Option<i64>,
}

impl EventBody {
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::OrderOpened(_) => "order_opened",
            EventBody::OrderItemAdded(_) => "order_item_added",
            EventBody::OrderItemRemoved(_) => "order_item_removed",
            EventBody::OrderStatusChanged(_) => "order_status_changed",
            EventBody::PaymentCaptured(_) => "payment_captured",
            EventBody::PaymentRefunded(_) => "payment_refunded",
            EventBody::ReceiptIssued(_) => "receipt_issued",
            EventBody::AvailabilityOverridden(_) => "availability_overridden",
        }
    }

    /// The order this event belongs to, if any: the unit of staleness checks.
    pub fn order_id(&self) -> Option<&str> {
        match self {
            EventBody::OrderOpened(e) => Some(&e.order_id),
            EventBody::OrderItemAdded(e) => Some(&e.order_id),
            EventBody::OrderItemRemoved(e) => Some(&e.order_id),
            EventBody::OrderStatusChanged(e) => Some(&e.order_id),
            EventBody::PaymentCaptured(e) => Some(&e.order_id),
            EventBody::PaymentRefunded(e) => Some(&e.order_id),
            EventBody::ReceiptIssued(e) => Some(&e.order_id),
            EventBody::AvailabilityOverridden(_) => None,
        }
    }

    fn validate(&self) -> Result<(), WireError> {
        if let Some(order_id) = self.order_id() {
            check_id("order_id", order_id)?;
        }
        match self {
            EventBody::OrderOpened(e) => {
                check_currency(&e.currency)?;
                check_text("table", e.table.as_deref().unwrap_or(""), false)
            }
            EventBody::OrderItemAdded(e) => {
                check_id("line_id", &e.line_id)?;
                check_id("sku", &e.sku)?;
                check_text("name", &e.name, true)?;
                if !(1..=10_000).contains(&e.quantity) {
                    return Err(WireError::new(
                        Reason::InvalidField,
                        format!("quantity {} not in 1..=10000", e.quantity),
                    ));
                }
                check_amount("unit_price_minor", e.unit_price_minor)
            }
            EventBody::OrderItemRemoved(e) => check_id("line_id", &e.line_id),
            EventBody::OrderStatusChanged(e) => {
                if e.status.is_empty() || e.status.len() > 32 {
                    return Err(WireError::new(Reason::InvalidField, "status must be 1..=32 bytes"));
                }
                Ok(())
            }
            EventBody::PaymentCaptured(e) => {
                check_id("payment_id", &e.payment_id)?;
                check_amount("amount_minor", e.amount_minor)?;
                check_currency(&e.currency)?;
                check_text("method", &e.method, true)
            }
            EventBody::PaymentRefunded(e) => {
                check_id("payment_id", &e.payment_id)?;
                check_id("refund_id", &e.refund_id)?;
                check_amount("amount_minor", e.amount_minor)?;
                check_currency(&e.currency)?;
                check_text("reason", &e.reason, false)
            }
            EventBody::ReceiptIssued(e) => {
                check_id("receipt_id", &e.receipt_id)?;
                check_text("number", &e.number, true)?;
                check_amount("total_minor", e.total_minor)?;
                check_currency(&e.currency)
            }
            EventBody::AvailabilityOverridden(e) => check_id("sku", &e.sku),
        }
    }
}

impl EventEnvelope {
    pub fn addr(&self) -> DeviceAddr {
        DeviceAddr::new(&self.tenant_id, &self.store_id, &self.device_id)
    }

    /// Checks every field; subject agreement is checked by [`crate::codec::decode_event`].
    pub fn validate(&self) -> Result<(), WireError> {
        if !SUPPORTED_SCHEMA_VERSIONS.contains(&self.schema_version) {
            return Err(WireError::new(
                Reason::UnsupportedVersion,
                format!("schema_version {} not in {SUPPORTED_SCHEMA_VERSIONS:?}", self.schema_version),
            ));
        }
        self.addr().validate()?;
        check_uuid_or_ulid("event_id", &self.event_id)?;
        if self.seq == 0 {
            return Err(WireError::new(Reason::InvalidField, "seq starts at 1"));
        }
        if self.occurred_at_ms <= 0 {
            return Err(WireError::new(Reason::InvalidField, "occurred_at_ms must be positive"));
        }
        self.body.validate()
    }
}
