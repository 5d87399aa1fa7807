//! Heartbeats up: the device's health, every 30 s by default.

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::ids::check_text;
use crate::subject::DeviceAddr;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub schema_version: u16,
    pub tenant_id: String,
    pub store_id: String,
    pub device_id: String,
    pub at_ms: i64,
    pub software_version: String,
    /// Events written locally and not yet covered by the broker's watermark.
    pub outbox_depth: u64,
    /// Age of the oldest event not yet published, seconds (0 when none).
    pub oldest_unsent_age_s: u64,
    pub last_acked_seq: u64,
    pub config_revision: u64,
    pub uptime_s: u64,
    /// Watermarks the bridge refused since it started (they named another device, or were
    /// above every seq it assigned while it held unconfirmed sales): the cloud counts and
    /// alerts on them. Left out when 0, so older brokers and golden bytes see no change.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub watermarks_refused: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Heartbeat {
    pub fn addr(&self) -> DeviceAddr {
        DeviceAddr::new(&self.tenant_id, &self.store_id, &self.device_id)
    }

    pub fn validate(&self) -> Result<(), WireError> {
        self.addr().validate()?;
        check_text("software_version", &self.software_version, true)
    }
}
