//! The command sweeper: the broker's only command timer. Device actors are passivated when
//! idle and the broker may be killed at any moment, so check and expiry deadlines live in
//! Postgres (`next_attempt_at`, `expires_at`, indexed) and this task wakes the actors of devices
//! with something due. It also resends status messages a crash left unpublished, deletes the
//! stream copies of commands that ended (those an ack ended, and any a failure left behind),
//! ends commands that expired waiting for approval, and exports the inbox gauges by tenant.
//!
//! Two jobs of the task registry: every instance wakes the devices of the partitions it owns
//! (their actors live there) every [`interval`] ([`wake`]); the rest covers every store and is
//! idempotent, and runs on the lead instance only, every [`OUTBOX_EVERY`] ([`outbox`]).

use std::sync::Arc;
use std::time::Duration;

use super::{copies, publish, sql};
use crate::error::Chain;
use crate::tasks::Job;
use crate::{metrics, Ctx};

/// Devices woken per sweep; the rest wait for the next one.
const DUE_LIMIT: i64 = 2_000;
/// A status is resent only when this old, so the normal path gets to publish it first.
const OUTBOX_AGE_MS: i64 = 3_000;
/// How often the outbox and gauges are refreshed.
pub const OUTBOX_EVERY: Duration = Duration::from_secs(1);

/// Ended entries whose copies are deleted per sweep.
const PURGE_LIMIT: i64 = 500;

/// A fifth of the first retry delay, between 50 ms and 1 s: checks and expiries happen at
/// most that late.
pub fn interval(retry_ms: u64) -> Duration {
    Duration::from_millis(retry_ms / 5).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Wakes the actors of this instance's devices with a check or an expiry due.
pub async fn wake(ctx: Arc<Ctx>, job: Job) {
    job.run(&ctx, || wake_due(&ctx)).await
}

/// Ends commands that expired waiting for approval, resends unpublished statuses, deletes the
/// copies of ended commands and exports the inbox gauges (a lead-only job).
pub async fn outbox(ctx: Arc<Ctx>, job: Job) {
    job.run(&ctx, || async {
        expire_pending(&ctx).await;
        resend_unpublished(&ctx).await;
        purge_copies(&ctx).await;
        export_gauges(&ctx).await;
    })
    .await
}

async fn wake_due(ctx: &Ctx) {
    match sql::due_devices(&ctx.pool, crate::now_ms(), DUE_LIMIT).await {
        Ok(mut devices) => {
            devices.retain(|d| ctx.partitions.owns_store(&d.tenant_id, &d.store_id));
            if !devices.is_empty() {
                super::tick(ctx, devices).await
            }
        }
        Err(error) => tracing::warn!(error = %Chain(&error), "Command sweep query failed."),
    }
}

/// Commands that expired waiting for approval end `rejected` (`expired`); the portal hears
/// it here, or from the outbox pass if this publish fails.
async fn expire_pending(ctx: &Ctx) {
    match sql::expire_pending(&ctx.pool, 500).await {
        Ok(rows) if !rows.is_empty() => {
            tracing::info!(count = rows.len(), "Commands expired waiting for approval.");
            if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &rows).await {
                tracing::warn!(error = %Chain(&error), "Expiry status not published; the sweeper retries it.");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(error = %Chain(&error), "Pending-approval expiry query failed."),
    }
}

async fn resend_unpublished(ctx: &Ctx) {
    match sql::unpublished(&ctx.pool, OUTBOX_AGE_MS, 500).await {
        Ok(rows) if !rows.is_empty() => {
            tracing::info!(count = rows.len(), "Resending unpublished command statuses.");
            if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &rows).await {
                tracing::warn!(error = %Chain(&error), "Command status resend failed; retrying next sweep.");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(error = %Chain(&error), "Command outbox query failed."),
    }
}

async fn purge_copies(ctx: &Ctx) {
    let entries = match sql::final_with_copies(&ctx.pool, PURGE_LIMIT).await {
        Ok(e) => e,
        Err(error) => return tracing::warn!(error = %Chain(&error), "Command copies query failed."),
    };
    if let Err(error) = copies::purge(&ctx.js, &ctx.pool, &entries).await {
        tracing::warn!(error = %Chain(&error), "Command copies not deleted; retrying next sweep.");
    }
}

async fn export_gauges(ctx: &Ctx) {
    match sql::depth_by_tenant(&ctx.pool).await {
        Ok(rows) => {
            for (tenant, depth, oldest, waiting, oldest_waiting) in &rows {
                metrics::command_inbox(tenant, *depth, *oldest);
                metrics::commands_awaiting_approval(tenant, *waiting, *oldest_waiting);
            }
        }
        Err(error) => tracing::warn!(error = %Chain(&error), "Inbox depth query failed."),
    }
}
