//! The bridge's status: outbox counters, last ack, connection state and why it is cut off,
//! uptime. Served on `GET /v1/status`, printed by `tillsync-edge status`, and the source of heartbeats.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tillsync_schemas::DeviceAddr;
use tokio::sync::watch;

use crate::cutoff::CutOff;
use crate::events::outbox::{Outbox, OutboxStats};
use crate::events::publisher::SentMark;

/// What this build calls itself, in the status and the heartbeats.
pub const SOFTWARE_VERSION: &str = concat!("tillsync-edge/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub tenant_id: String,
    pub store_id: String,
    pub device_id: String,
    /// `connected`, `disconnected`, or `unknown` (read from the file while the bridge is stopped).
    pub connection: String,
    /// Why the bridge has no NATS connection (`null` while connected, and before the first
    /// attempt has failed): `reason` is `unreachable`, `unavailable`, `revoked` or `refused`
    /// ([`crate::cutoff::Reason`]), with `refuses_events` true when new events are refused.
    #[serde(default)]
    pub cut_off: Option<CutOff>,
    pub outbox: OutboxStats,
    /// Highest seq acked by JetStream in this run (0 before the first).
    pub last_sent_seq: u64,
    /// The applied configuration version (0: none yet); commands' `if_match` refers to it.
    pub config_revision: u64,
    pub commands_applied: u64,
    /// Events published (JetStream-acked) by this run.
    pub published: u64,
    pub uptime_s: u64,
    pub software_version: String,
}

/// Everything a status is computed from.
pub struct StatusSource {
    pub outbox: Arc<Outbox>,
    pub connected: watch::Receiver<bool>,
    pub cut_off: watch::Receiver<Option<CutOff>>,
    pub sent: Arc<SentMark>,
    pub published: Arc<AtomicU64>,
    pub started: Instant,
}

impl StatusSource {
    pub fn addr(&self) -> &DeviceAddr {
        self.outbox.addr()
    }

    pub async fn status(&self) -> Result<Status, sqlx::Error> {
        let cut_off = self.cut_off.borrow().clone();
        let outbox = self.outbox.stats().await?;
        let pool = self.outbox.pool();
        let addr = self.addr();
        Ok(Status {
            tenant_id: addr.tenant_id.clone(),
            store_id: addr.store_id.clone(),
            device_id: addr.device_id.clone(),
            connection: if *self.connected.borrow() { "connected" } else { "disconnected" }.into(),
            cut_off,
            outbox,
            last_sent_seq: self.sent.0.load(Ordering::Relaxed),
            config_revision: crate::db::config_revision(pool).await?,
            commands_applied: crate::commands::ledger::applied_count(pool).await?,
            published: self.published.load(Ordering::Relaxed),
            uptime_s: self.started.elapsed().as_secs(),
            software_version: SOFTWARE_VERSION.into(),
        })
    }
}

impl Status {
    /// The human form printed by `tillsync-edge status`.
    pub fn render(&self) -> String {
        let o = &self.outbox;
        let mut out = format!(
            "device       {}/{}/{}\nconnection   {}\n",
            self.tenant_id, self.store_id, self.device_id, self.connection
        );
        if let Some(c) = &self.cut_off {
            let since_s = (crate::now_ms() - c.since_ms).max(0) / 1000;
            let events = if c.refuses_events { "NEW EVENTS REFUSED" } else { "events kept" };
            out.push_str(&format!(
                "cut off      {} for {} s, {} failed attempts, {}: {}\n",
                c.reason, since_s, c.attempts, events, c.detail
            ));
        }
        out.push_str(&format!(
            "outbox       {} rows, {} bytes, {} not yet acked by the broker, {} unsent (oldest {} s)\nlast seq     {}\nlast ack     {} (broker watermark)\nresent       {} events sent again (reconnect, stall or broker request)\nconfig       version {} applied\ncommands     {} applied\nuptime       {} s\nversion      {}",
            o.rows,
            o.bytes,
            o.unacked,
            o.unsent,
            o.oldest_unsent_age_s,
            o.last_seq,
            o.watermark,
            o.resent,
            self.config_revision,
            self.commands_applied,
            self.uptime_s,
            self.software_version
        ));
        out
    }
}

/// Reads a status straight from the SQLite file of a stopped bridge (connection `unknown`).
pub async fn from_file(path: &std::path::Path) -> Result<Status, crate::BridgeError> {
    let pool = crate::db::open_read_only(path).await?;
    let (tenant, store, device, last_seq, watermark, rev, resent): (
        Option<String>,
        Option<String>,
        Option<String>,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT tenant_id, store_id, device_id, last_seq, watermark, config_revision, events_resent
         FROM bridge_state WHERE id = 1",
    )
    .fetch_one(&pool)
    .await?;
    let (rows, bytes): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(sum(length(envelope)), 0) FROM outbox").fetch_one(&pool).await?;
    let (unsent, oldest): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), min(accepted_at_ms) FROM outbox WHERE sent_at_ms IS NULL AND seq > ?")
            .bind(watermark)
            .fetch_one(&pool)
            .await?;
    let applied = crate::commands::ledger::applied_count(&pool).await?;
    pool.close().await;
    Ok(Status {
        tenant_id: tenant.unwrap_or_default(),
        store_id: store.unwrap_or_default(),
        device_id: device.unwrap_or_default(),
        connection: "unknown".into(),
        cut_off: None,
        outbox: OutboxStats {
            rows: rows as u64,
            bytes: bytes as u64,
            unacked: (last_seq - watermark).max(0) as u64,
            unsent: unsent as u64,
            oldest_unsent_age_s: oldest.map_or(0, |t| (crate::now_ms() - t).max(0) as u64 / 1000),
            last_seq: last_seq as u64,
            watermark: watermark as u64,
            resent: resent as u64,
            // Counted by a running bridge only.
            watermarks_refused: 0,
        },
        last_sent_seq: 0,
        config_revision: rev as u64,
        commands_applied: applied,
        published: 0,
        uptime_s: 0,
        software_version: SOFTWARE_VERSION.into(),
    })
}
