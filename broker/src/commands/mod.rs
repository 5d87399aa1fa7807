//! Commands down: intake, approval policy, per-device inbox, delivery, acks, expiry, feedback.
//!
//! - [`intake`] takes approved commands from the portal, validates them (subject, tenant,
//!   approvals, expiry, TTL, known device), records them and fans store-wide ones out to one
//!   inbox entry per device; refused ones are recorded as `rejected` and never delivered.
//! - The device actor ([`tillsync_actors::inbox`]) publishes each command to its device's
//!   stream once, in issue order, through the inbox ports ([`io`]), which persist every
//!   transition before publishing it; JetStream's durable consumer redelivers it to the device.
//!   [`copies`] checks a published copy is still there and deletes the copies of what ended.
//! - [`acks`] records device acks, a batch per statement, with the transitions they make, and
//!   the applies that came after the portal was told a command ended (corrections).
//! - [`approvals`] counts approvers' signed decisions about commands waiting for approval and
//!   releases a command once it has enough.
//! - [`cancel`] cancels what has not been applied, on the portal's request.
//! - [`misnamed`] deletes device command consumers no device may use.
//! - [`sweep`] wakes device actors for due checks and expiries (actors are passivated when
//!   idle, so no timer lives in them), republishes status messages a crash left unpublished,
//!   deletes copies of ended commands and exports the inbox gauges.
//!
//! Every transition is a `command_log` row and a status message on
//! `tillsync.status.<tenant>.<store>.<command_id>`.

pub mod ack_store;
pub mod acks;
pub mod approvals;
pub mod cancel;
pub mod copies;
pub mod intake;
pub mod intake_store;
pub mod io;
pub mod misnamed;
pub mod publish;
pub mod store;
pub mod sweep;

use std::time::Duration;

use futures::StreamExt;
use tillsync_actors::policy::InboxParams;
use tillsync_schemas::{DeviceAddr, WireError};

use crate::config::Config;
use crate::partitions::Fence;
use crate::spine::Settle;
use crate::Ctx;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("JetStream publish: {0}")]
    Publish(String),
    #[error("stored envelope unreadable: {0}")]
    Stored(WireError),
    #[error(transparent)]
    Actor(#[from] tillsync_actors::ActorError),
}

/// The delivery knobs of the device inboxes.
pub fn params(c: &Config) -> InboxParams {
    InboxParams { max_attempts: c.command_max_attempts, first_retry_ms: c.command_retry_ms.max(1) }
}

/// How a command message whose effect did not commit is settled: redelivered, and when the
/// fence refused the commit, the partition's work stops (another instance owns it now).
pub fn not_committed(ctx: &Ctx, fence: Fence, what: &str, error: &CommandError) -> Settle {
    match error {
        CommandError::Db(e) if crate::partitions::fence::is_fenced(e) => ctx.partitions.report_fenced(fence),
        _ => tracing::warn!(%error, what, "Command message not recorded; redelivering in 2 s."),
    }
    Settle::RETRY
}

/// Runs the inboxes of these devices now (after intake), a few at a time.
pub async fn tick(ctx: &Ctx, devices: Vec<DeviceAddr>) {
    let p = params(&ctx.config);
    futures::stream::iter(devices)
        .for_each_concurrent(16, |addr| async move {
            match ctx.actors.inbox_tick(&addr, p).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, device_id = %addr.device_id, "Inbox tick failed; the sweeper retries.")
                }
                Err(error) => {
                    tracing::warn!(%error, device_id = %addr.device_id, "Device actor unavailable; the sweeper retries.")
                }
            }
        })
        .await;
}

/// Waits `d` unless the broker stops first; `false` when it stopped.
async fn pause(ctx: &Ctx, d: Duration) -> bool {
    tokio::select! {
        _ = ctx.cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}
