//! Gap repair: the broker asks a device for what it is missing. JetStream acks a publish before
//! it is on disk, so an acked event can be lost; the bridge keeps every row until the
//! watermark covers it, and this task tells it which ones to send again
//! (`tillsync.rs.<tenant>.<store>.<device>`, a [`ResendRequest`] over core NATS):
//! - `gap`: an open gap (`device_gaps`, not filled) older than `TILLSYNC_GAP_REPAIR_AFTER_S`;
//! - `behind`: the device's last heartbeat reports seqs beyond the watermark (its watermark
//!   plus its outbox depth), and the watermark has not moved for as long.
//!
//! A device is asked at most once per bound (`device_repairs.requested_at`); a request lost
//! while the device is offline is asked again later. The ledger dedupes what was not lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tillsync_schemas::{codec, subject, DeviceAddr, ResendRequest, SCHEMA_VERSION};

use crate::{metrics, Ctx};

/// Gaps and behind devices looked at per tick; the rest wait for the next one.
const LIMIT: i64 = 500;

/// Why a range is requested (the metric's `why` label).
pub const WHY: &[&str] = &["gap", "behind"];

/// An open gap old enough to be requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenGap {
    pub addr: DeviceAddr,
    pub from_seq: u64,
    pub to_seq: u64,
    pub watermark: u64,
}

/// A device that has reported seqs beyond a stalled watermark for longer than the bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behind {
    pub addr: DeviceAddr,
    pub watermark: u64,
    /// Highest seq the broker has committed (beyond the watermark when gaps are open).
    pub last_seq: u64,
    /// The device's last seq as its heartbeat reports it.
    pub reported: u64,
}

/// One request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub addr: DeviceAddr,
    pub from_seq: u64,
    pub to_seq: u64,
    pub why: &'static str,
}

/// Decides the requests: each gap from above the watermark; a behind device's range is
/// (watermark, reported], or only the tail beyond the broker's last seq when its gaps are
/// requested in the same tick. Empty ranges are dropped.
pub fn plan(gaps: &[OpenGap], behind: &[Behind]) -> Vec<Request> {
    let mut out = Vec::new();
    let mut gapped = HashSet::new();
    for g in gaps {
        let from = g.from_seq.max(g.watermark + 1);
        if from <= g.to_seq {
            gapped.insert(&g.addr);
            out.push(Request { addr: g.addr.clone(), from_seq: from, to_seq: g.to_seq, why: "gap" });
        }
    }
    for b in behind {
        let above = if gapped.contains(&b.addr) { b.last_seq.max(b.watermark) } else { b.watermark };
        if above < b.reported {
            out.push(Request { addr: b.addr.clone(), from_seq: above + 1, to_seq: b.reported, why: "behind" });
        }
    }
    out
}

/// How often the task looks: half the bound, between 250 ms and 5 s.
pub fn interval(bound: Duration) -> Duration {
    (bound / 2).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

/// Registered as a lead-only job every [`interval`] of the bound (`Broker::start`).
pub async fn run(ctx: Arc<Ctx>, job: crate::tasks::Job) {
    for why in WHY {
        metrics::resend_requested(why, 0);
    }
    let bound = Duration::from_secs(ctx.config.gap_repair_after_s);
    job.run(&ctx, || repair(&ctx, bound.as_secs_f64())).await
}

async fn repair(ctx: &Ctx, bound_s: f64) -> Result<(), sqlx::Error> {
    track_behind(ctx).await?;
    let requests = plan(&open_gaps(ctx, bound_s).await?, &behind(ctx, bound_s).await?);
    if requests.is_empty() {
        return Ok(());
    }
    for r in &requests {
        let msg = ResendRequest {
            schema_version: SCHEMA_VERSION,
            tenant_id: r.addr.tenant_id.clone(),
            store_id: r.addr.store_id.clone(),
            device_id: r.addr.device_id.clone(),
            from_seq: r.from_seq,
            to_seq: r.to_seq,
        };
        match ctx.nats.publish(subject::resend_requests(&r.addr), codec::encode(&msg).into()).await {
            Ok(()) => {
                metrics::resend_requested(r.why, 1);
                tracing::info!(device_id = %r.addr.device_id, from = r.from_seq, to = r.to_seq, why = r.why, "Asked a device to resend.");
            }
            Err(error) => tracing::warn!(%error, "Resend request not sent; asked again after the bound."),
        }
    }
    mark_requested(ctx, &requests).await
}

/// Starts (or restarts, when the watermark moved) the behind clock of devices that report
/// seqs beyond the watermark, and stops it for the others.
async fn track_behind(ctx: &Ctx) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO device_repairs (tenant_id, store_id, device_id, behind_since, behind_watermark)
         SELECT tenant_id, store_id, device_id, now(), watermark FROM devices
         WHERE online AND coalesce(last_acked_seq, 0) + coalesce(outbox_depth, 0) > watermark
         LIMIT $1
         ON CONFLICT (tenant_id, store_id, device_id) DO UPDATE
         SET behind_since = now(), behind_watermark = excluded.behind_watermark
         WHERE device_repairs.behind_since IS NULL OR device_repairs.behind_watermark <> excluded.behind_watermark",
    )
    .bind(LIMIT * 20)
    .execute(&ctx.pool)
    .await?;
    sqlx::query(
        "UPDATE device_repairs r SET behind_since = NULL FROM devices d
         WHERE r.behind_since IS NOT NULL
           AND d.tenant_id = r.tenant_id AND d.store_id = r.store_id AND d.device_id = r.device_id
           AND NOT (d.online AND coalesce(d.last_acked_seq, 0) + coalesce(d.outbox_depth, 0) > d.watermark)",
    )
    .execute(&ctx.pool)
    .await?;
    Ok(())
}

/// Not asked within the bound (or never).
const NOT_ASKED: &str = "(r.requested_at IS NULL OR r.requested_at < now() - make_interval(secs => $1))";

async fn open_gaps(ctx: &Ctx, bound_s: f64) -> Result<Vec<OpenGap>, sqlx::Error> {
    let rows: Vec<(String, String, String, i64, i64, i64)> = sqlx::query_as(&format!(
        "SELECT g.tenant_id, g.store_id, g.device_id, g.from_seq, g.to_seq, d.watermark
         FROM device_gaps g
         JOIN devices d ON d.tenant_id = g.tenant_id AND d.store_id = g.store_id AND d.device_id = g.device_id
         LEFT JOIN device_repairs r
           ON r.tenant_id = g.tenant_id AND r.store_id = g.store_id AND r.device_id = g.device_id
         WHERE g.filled_at IS NULL AND g.detected_at < now() - make_interval(secs => $1) AND {NOT_ASKED}
         ORDER BY g.detected_at LIMIT $2"
    ))
    .bind(bound_s)
    .bind(LIMIT)
    .fetch_all(&ctx.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t, s, d, from, to, wm)| OpenGap {
            addr: DeviceAddr::new(t, s, d),
            from_seq: from as u64,
            to_seq: to as u64,
            watermark: wm as u64,
        })
        .collect())
}

async fn behind(ctx: &Ctx, bound_s: f64) -> Result<Vec<Behind>, sqlx::Error> {
    let rows: Vec<(String, String, String, i64, i64, i64)> = sqlx::query_as(&format!(
        "SELECT r.tenant_id, r.store_id, r.device_id, d.watermark, d.last_seq,
                coalesce(d.last_acked_seq, 0) + coalesce(d.outbox_depth, 0)
         FROM device_repairs r
         JOIN devices d ON d.tenant_id = r.tenant_id AND d.store_id = r.store_id AND d.device_id = r.device_id
         WHERE r.behind_since < now() - make_interval(secs => $1) AND {NOT_ASKED}
         LIMIT $2"
    ))
    .bind(bound_s)
    .bind(LIMIT)
    .fetch_all(&ctx.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t, s, d, wm, last, reported)| Behind {
            addr: DeviceAddr::new(t, s, d),
            watermark: wm as u64,
            last_seq: last as u64,
            reported: reported as u64,
        })
        .collect())
}

async fn mark_requested(ctx: &Ctx, requests: &[Request]) -> Result<(), sqlx::Error> {
    let devices: HashSet<&DeviceAddr> = requests.iter().map(|r| &r.addr).collect();
    let col = |f: fn(&DeviceAddr) -> &String| devices.iter().map(|a| f(a).clone()).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO device_repairs (tenant_id, store_id, device_id, requested_at, requests)
         SELECT t, s, d, now(), 1 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(t, s, d)
         ON CONFLICT (tenant_id, store_id, device_id) DO UPDATE
         SET requested_at = now(), requests = device_repairs.requests + 1",
    )
    .bind(col(|a| &a.tenant_id))
    .bind(col(|a| &a.store_id))
    .bind(col(|a| &a.device_id))
    .execute(&ctx.pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(d: &str) -> DeviceAddr {
        DeviceAddr::new("acme", "s1", d)
    }

    fn req(d: &str, from: u64, to: u64, why: &'static str) -> Request {
        Request { addr: dev(d), from_seq: from, to_seq: to, why }
    }

    #[test]
    fn gaps_are_requested_from_above_the_watermark() {
        let gaps = [
            OpenGap { addr: dev("a"), from_seq: 4, to_seq: 6, watermark: 3 },
            OpenGap { addr: dev("b"), from_seq: 4, to_seq: 6, watermark: 5 },
            OpenGap { addr: dev("c"), from_seq: 4, to_seq: 6, watermark: 9 },
        ];
        assert_eq!(plan(&gaps, &[]), vec![req("a", 4, 6, "gap"), req("b", 6, 6, "gap")]);
    }

    #[test]
    fn behind_asks_for_the_tail_or_the_whole_uncovered_range() {
        let gaps = [OpenGap { addr: dev("a"), from_seq: 4, to_seq: 4, watermark: 3 }];
        let behind = [
            // Gaps requested: only what the broker never saw, beyond its last seq.
            Behind { addr: dev("a"), watermark: 3, last_seq: 10, reported: 12 },
            // No gap requested: everything the watermark does not cover.
            Behind { addr: dev("b"), watermark: 3, last_seq: 3, reported: 5 },
            // Gaps cover all of it: nothing more.
            Behind { addr: dev("a"), watermark: 3, last_seq: 10, reported: 10 },
            // Not behind after all (the heartbeat was older than the watermark).
            Behind { addr: dev("c"), watermark: 7, last_seq: 7, reported: 7 },
        ];
        assert_eq!(
            plan(&gaps, &behind),
            vec![req("a", 4, 4, "gap"), req("a", 11, 12, "behind"), req("b", 4, 5, "behind")]
        );
    }

    #[test]
    fn looks_often_enough_for_the_bound() {
        assert_eq!(interval(Duration::from_secs(10)), Duration::from_secs(5));
        assert_eq!(interval(Duration::from_secs(1)), Duration::from_millis(500));
    }
}
