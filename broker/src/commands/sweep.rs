//! The command sweeper: the broker's only command timer. Device actors are passivated when
//! idle and the broker may be killed at any moment, so check and expiry deadlines live in
//! Postgres (`next_attempt_at`, `expires_at`, indexed) and this task wakes the actors of devices
//! with something due. It also resends status messages a crash left unpublished, deletes the
//! stream copies of commands that ended (those an ack ended, and any a failure left behind),
//! ends commands that expired waiting for approval, and exports the inbox gauges by tenant.
//!
//! Every instance wakes the devices of the partitions it owns (their actors live there); the
//! rest covers every store and is idempotent, and runs on the lead instance only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{copies, pause, publish, store};
use crate::{metrics, Ctx};

/// Devices woken per sweep; the rest wait for the next one.
const DUE_LIMIT: i64 = 2_000;
/// A status is resent only when this old, so the normal path gets to publish it first.
const OUTBOX_AGE_MS: i64 = 3_000;
/// How often the outbox and gauges are refreshed.
const SLOW_EVERY: Duration = Duration::from_secs(1);

/// Ended entries whose copies are deleted per sweep.
const PURGE_LIMIT: i64 = 500;

/// A fifth of the first retry delay, between 50 ms and 1 s: checks and expiries happen at
/// most that late.
pub fn interval(retry_ms: u64) -> Duration {
    Duration::from_millis(retry_ms / 5).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

pub async fn run(ctx: Arc<Ctx>) {
    let every = interval(ctx.config.command_retry_ms);
    let mut last_slow = Instant::now() - SLOW_EVERY;
    loop {
        if !pause(&ctx, every).await {
            return;
        }
        wake_due(&ctx).await;
        if last_slow.elapsed() >= SLOW_EVERY && ctx.partitions.leads() {
            last_slow = Instant::now();
            expire_pending(&ctx).await;
            resend_unpublished(&ctx).await;
            purge_copies(&ctx).await;
            export_gauges(&ctx).await;
        }
    }
}

async fn wake_due(ctx: &Ctx) {
    match store::due_devices(&ctx.pool, crate::now_ms(), DUE_LIMIT).await {
        Ok(mut devices) => {
            devices.retain(|d| ctx.partitions.owns_store(&d.tenant_id, &d.store_id));
            if !devices.is_empty() {
                super::tick(ctx, devices).await
            }
        }
        Err(error) => tracing::warn!(%error, "Command sweep query failed."),
    }
}

/// Commands that expired waiting for approval end `rejected` (`expired`); the portal hears
/// it here, or from the outbox pass if this publish fails.
async fn expire_pending(ctx: &Ctx) {
    match store::expire_pending(&ctx.pool, 500).await {
        Ok(rows) if !rows.is_empty() => {
            tracing::info!(count = rows.len(), "Commands expired waiting for approval.");
            if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &rows).await {
                tracing::warn!(%error, "Expiry status not published; the sweeper retries it.");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "Pending-approval expiry query failed."),
    }
}

async fn resend_unpublished(ctx: &Ctx) {
    match store::unpublished(&ctx.pool, OUTBOX_AGE_MS, 500).await {
        Ok(rows) if !rows.is_empty() => {
            tracing::info!(count = rows.len(), "Resending unpublished command statuses.");
            if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &rows).await {
                tracing::warn!(%error, "Command status resend failed; retrying next sweep.");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "Command outbox query failed."),
    }
}

async fn purge_copies(ctx: &Ctx) {
    let entries = match store::final_with_copies(&ctx.pool, PURGE_LIMIT).await {
        Ok(e) => e,
        Err(error) => return tracing::warn!(%error, "Command copies query failed."),
    };
    if let Err(error) = copies::purge(&ctx.js, &ctx.pool, &entries).await {
        tracing::warn!(%error, "Command copies not deleted; retrying next sweep.");
    }
}

async fn export_gauges(ctx: &Ctx) {
    match store::depth_by_tenant(&ctx.pool).await {
        Ok(rows) => {
            for (tenant, depth, oldest, waiting, oldest_waiting) in &rows {
                metrics::command_inbox(tenant, *depth, *oldest);
                metrics::commands_awaiting_approval(tenant, *waiting, *oldest_waiting);
            }
        }
        Err(error) => tracing::warn!(%error, "Inbox depth query failed."),
    }
}
