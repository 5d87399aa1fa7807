//! Heartbeats: update the device row (software version, outbox depth, applied configuration
//! version, ...) and mark devices offline after a configurable silence. A device's first
//! heartbeat may bring a new store (it gets the tenant's configuration as its version 1); a
//! heartbeat whose applied configuration moved up observes the publish-to-applied latency.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Message;
use tillsync_schemas::{codec, streams as names, Heartbeat, WireError};

use crate::partitions::{fence, Fence};
use crate::spine::{self, Admitted, Committed, Consumer, Failure, Source, Verdict};
use crate::tasks::Job;
use crate::{metrics, store_config, ts, Ctx};

/// The heartbeat consumers of the spine. Only the latest heartbeat of a device is kept, so
/// batches are small.
pub const SOURCE: Source = Source {
    stream: names::HEARTBEATS,
    base: names::BROKER_HEARTBEATS_CONSUMER,
    max_batch: 64,
    linger: Duration::ZERO,
};

/// Records a partition's heartbeats, each under the partition's fence.
pub async fn handle_batch(ctx: &Arc<Ctx>, fence: Fence, batch: Vec<Message>) {
    spine::take(ctx, fence, &Heartbeats, batch).await
}

/// The heartbeat consumer: each heartbeat updates its device row on its own.
pub struct Heartbeats;

impl Consumer for Heartbeats {
    type Item = Heartbeat;
    type After = ();
    const STREAM: &'static str = names::HEARTBEATS;
    const NAME: &'static str = "heartbeat";

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<Heartbeat, WireError> {
        codec::decode_heartbeat(subject, payload)
    }

    fn tenant<'a>(&self, hb: &'a Heartbeat) -> &'a str {
        &hb.tenant_id
    }

    async fn commit(
        &self,
        ctx: &Arc<Ctx>,
        fence: Fence,
        batch: &[Admitted<Heartbeat>],
    ) -> Result<Committed<()>, Failure> {
        let mut verdicts = Vec::with_capacity(batch.len());
        for a in batch {
            verdicts.push(match record(ctx, fence, &a.item).await {
                Ok(()) => Verdict::Done,
                Err(error) => Verdict::Failed(error.into()),
            });
        }
        Ok(Committed { verdicts, after: () })
    }
}

/// Records one heartbeat, then counts what it says and follows up its configuration.
async fn record(ctx: &Ctx, fence: Fence, hb: &Heartbeat) -> Result<(), sqlx::Error> {
    let before = apply(ctx, fence, hb).await?;
    metrics::heartbeat();
    let refused = newly_refused(hb, &before);
    if refused > 0 {
        tracing::error!(
            tenant_id = %hb.tenant_id, store_id = %hb.store_id, device_id = %hb.device_id, refused,
            "A bridge refused watermarks that did not come from the broker about its events."
        );
        metrics::bridge_watermarks_refused(refused);
    }
    after_config(ctx, hb, before).await;
    Ok(())
}

/// What the device row said before a heartbeat: whether it existed, and the configuration
/// version it had applied.
struct Before {
    existed: bool,
    config_revision: Option<i64>,
    /// Watermarks the bridge had reported refused, and its uptime then.
    watermarks_refused: Option<i64>,
    uptime_s: Option<i64>,
}

/// Watermarks refused since the device's previous heartbeat: the bridge counts from its start,
/// so a lower uptime (or count) than before means it restarted and the whole count is new.
fn newly_refused(hb: &Heartbeat, before: &Before) -> u64 {
    let (was, up) = (before.watermarks_refused.unwrap_or(0).max(0) as u64, before.uptime_s.unwrap_or(0));
    if (hb.uptime_s as i64) < up || hb.watermarks_refused < was {
        hb.watermarks_refused
    } else {
        hb.watermarks_refused - was
    }
}

/// Configuration follow-ups of a recorded heartbeat; failures are logged (the distributor
/// gives new stores their version 1 anyway, within a second).
async fn after_config(ctx: &Ctx, hb: &Heartbeat, before: Before) {
    if !before.existed {
        if let Err(error) = store_config::ensure_store(&ctx.pool, &hb.tenant_id, &hb.store_id).await {
            tracing::warn!(%error, "New store's configuration not set up yet; the distributor retries.");
        }
    }
    let was = before.config_revision.unwrap_or(0).max(0) as u64;
    store_config::drift::applied(&ctx.pool, &hb.tenant_id, &hb.store_id, was, hb.config_revision).await;
}

async fn apply(ctx: &Ctx, fence: Fence, hb: &Heartbeat) -> Result<Before, sqlx::Error> {
    let mut tx = ctx.pool.begin().await?;
    fence::check(&mut tx, fence).await?;
    // Every part of one statement sees the rows as they were before it: `old` is the row
    // before this heartbeat.
    let (existed, config_revision, watermarks_refused, uptime_s): (bool, Option<i64>, Option<i64>, Option<i64>) =
        sqlx::query_as(
            "WITH old AS (SELECT config_revision, watermarks_refused, uptime_s FROM devices
                          WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3)
             INSERT INTO devices (tenant_id, store_id, device_id, first_seen, last_seen, software_version, outbox_depth,
                                  oldest_unsent_age_s, last_acked_seq, config_revision, uptime_s, last_heartbeat, online,
                                  watermarks_refused)
             VALUES ($1, $2, $3, now(), now(), $4, $5, $6, $7, $8, $9, $10, true, $11)
             ON CONFLICT (tenant_id, store_id, device_id) DO UPDATE SET
               last_seen = now(), software_version = $4, outbox_depth = $5, oldest_unsent_age_s = $6,
               last_acked_seq = $7, config_revision = $8, uptime_s = $9, last_heartbeat = $10, online = true,
               watermarks_refused = $11
             RETURNING EXISTS (SELECT 1 FROM old), (SELECT config_revision FROM old),
                       (SELECT watermarks_refused FROM old), (SELECT uptime_s FROM old)",
        )
    .bind(&hb.tenant_id)
    .bind(&hb.store_id)
    .bind(&hb.device_id)
    .bind(&hb.software_version)
    .bind(hb.outbox_depth as i64)
    .bind(hb.oldest_unsent_age_s as i64)
    .bind(hb.last_acked_seq as i64)
    .bind(hb.config_revision as i64)
    .bind(hb.uptime_s as i64)
    .bind(ts(hb.at_ms))
    .bind(hb.watermarks_refused as i64)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Before { existed, config_revision, watermarks_refused, uptime_s })
}

/// A third of the silence after which a device is offline (`offline_after_s`), between 1 and
/// 30 s: a silent device is marked offline at most that late.
pub fn offline_sweep_every(offline_after_s: u64) -> Duration {
    Duration::from_secs((offline_after_s / 3).clamp(1, 30))
}

/// Marks silent devices offline and exports online/offline counts by tenant every
/// [`offline_sweep_every`]: a lead-only job ([`crate::partitions::Ownership::leads`]), since
/// both cover every store.
pub async fn sweep_offline(ctx: Arc<Ctx>, job: Job) {
    job.run(&ctx, || sweep_once(&ctx)).await
}

async fn sweep_once(ctx: &Ctx) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE devices SET online = false WHERE online AND last_seen < now() - make_interval(secs => $1)")
        .bind(ctx.config.offline_after_s as f64)
        .execute(&ctx.pool)
        .await?;
    let counts: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT tenant_id, count(*) FILTER (WHERE online), count(*) FILTER (WHERE NOT online) FROM devices
         WHERE decommissioned_at IS NULL GROUP BY tenant_id",
    )
    .fetch_all(&ctx.pool)
    .await?;
    for (tenant, on, off) in counts {
        metrics::devices_by_state(&tenant, on, off);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(uptime_s: u64, watermarks_refused: u64) -> Heartbeat {
        Heartbeat {
            schema_version: tillsync_schemas::SCHEMA_VERSION,
            tenant_id: "acme".into(),
            store_id: "s1".into(),
            device_id: "till-1".into(),
            at_ms: 0,
            software_version: "test".into(),
            outbox_depth: 0,
            oldest_unsent_age_s: 0,
            last_acked_seq: 0,
            config_revision: 0,
            uptime_s,
            watermarks_refused,
        }
    }

    fn before(uptime_s: i64, watermarks_refused: i64) -> Before {
        Before {
            existed: true,
            config_revision: None,
            watermarks_refused: Some(watermarks_refused),
            uptime_s: Some(uptime_s),
        }
    }

    #[test]
    fn refusals_are_counted_once_across_heartbeats_and_restarts() {
        assert_eq!(
            newly_refused(
                &hb(10, 0),
                &Before { existed: false, config_revision: None, watermarks_refused: None, uptime_s: None }
            ),
            0
        );
        assert_eq!(newly_refused(&hb(10, 2), &before(5, 0)), 2, "two new");
        assert_eq!(newly_refused(&hb(15, 2), &before(10, 2)), 0, "the same two again (or a redelivered heartbeat)");
        assert_eq!(newly_refused(&hb(3, 1), &before(15, 2)), 1, "restarted: its count starts over");
        assert_eq!(newly_refused(&hb(3, 4), &before(15, 2)), 4, "restarted and refused more than before");
    }
}
