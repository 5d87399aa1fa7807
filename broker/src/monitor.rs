//! The monitor: every `TILLSYNC_MONITOR_INTERVAL_MS` it refreshes the gauges that are read
//! rather than counted, so whatever can stall without an error has a series:
//!
//! - from JetStream, each tillsync stream's bytes and messages against its byte limit, and the
//!   lag of the consumers of the partitions this instance owns (summed per consumer kind, and
//!   per partition). While the broker's NATS connection is down these are NaN (unknown)
//!   from the next refresh on, never the last value read: a frozen "pending 0" looks healthy.
//!   `tillsync_nats_connected` itself follows the connection's events at once ([`crate::nats`]).
//! - from Postgres, per tenant, open device gaps and the age of the oldest, and devices whose
//!   watermark has waited longer than `TILLSYNC_WATERMARK_STALL_S` for a seq their bridge
//!   reported acked by JetStream ([`track_watermarks`]). These cover every store, so only the
//!   lead instance ([`crate::partitions::Ownership::leads`]) reports them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::consumer::pull;
use tillsync_schemas::streams as names;

use crate::tasks::Job;
use crate::{metrics, Ctx};

/// The broker's durable consumers, by stream.
const BROKER_CONSUMERS: [(&str, &str); 4] = [
    (names::EVENTS, names::BROKER_EVENTS_CONSUMER),
    (names::HEARTBEATS, names::BROKER_HEARTBEATS_CONSUMER),
    (names::INTAKE, names::BROKER_INTAKE_CONSUMER),
    (names::COMMAND_ACKS, names::BROKER_ACKS_CONSUMER),
];

/// Every instance refreshes what it can see (Postgres, the streams, its partitions' lag); the
/// lead also the gauges over every store.
pub async fn run(ctx: Arc<Ctx>, job: Job) {
    // The tenants whose gap and stall gauges this instance exports, so they can read NaN
    // while Postgres cannot be read.
    let tenants = Mutex::new(Vec::new());
    job.run(&ctx, || refresh(&ctx, &tenants)).await
}

async fn refresh(ctx: &Ctx, tenants: &Mutex<Vec<String>>) {
    let postgres = postgres_up(&ctx.pool);
    if ctx.partitions.leads() {
        let (up, (), read) = tokio::join!(postgres, refresh_jetstream(ctx), refresh_devices(ctx));
        metrics::postgres_up(up);
        let mut tenants = tenants.lock().unwrap_or_else(|e| e.into_inner());
        match read {
            Some(read) => *tenants = read,
            None => tenants.iter().for_each(|t| metrics::tenant_signals_unknown(t)),
        }
    } else {
        let (up, ()) = tokio::join!(postgres, refresh_jetstream(ctx));
        metrics::postgres_up(up);
    }
}

/// How long a Postgres probe may take: inside a readiness probe's usual timeout, and far
/// below the pool's acquire timeout, which would hide "connection refused" for 10 s.
pub const POSTGRES_PROBE: Duration = Duration::from_secs(1);

/// `SELECT 1` answered within [`POSTGRES_PROBE`].
pub async fn postgres_up(pool: &sqlx::PgPool) -> bool {
    let probe = sqlx::query("SELECT 1").execute(pool);
    matches!(tokio::time::timeout(POSTGRES_PROBE, probe).await, Ok(Ok(_)))
}

/// JetStream answers within its request timeout (5 s) or not at all; the whole refresh is
/// bounded so a half-dead server cannot hold the monitor.
const JETSTREAM_WITHIN: Duration = Duration::from_secs(10);

async fn refresh_jetstream(ctx: &Ctx) {
    let streams: Vec<String> = crate::streams::stream_configs(&ctx.config).into_iter().map(|c| c.name).collect();
    let connected = ctx.nats.connection_state() == State::Connected;
    if !connected || tokio::time::timeout(JETSTREAM_WITHIN, read_jetstream(ctx, &streams)).await.is_err() {
        for stream in &streams {
            metrics::stream_info(stream, None);
        }
        for (_, consumer) in BROKER_CONSUMERS {
            metrics::consumer_unknown(consumer);
        }
        for p in ctx.partitions.owned() {
            metrics::partition_lag(p, None);
        }
    }
}

async fn read_jetstream(ctx: &Ctx, streams: &[String]) {
    for name in streams {
        let state = match ctx.js.get_stream(name).await {
            Ok(s) => {
                let info = s.cached_info();
                Some((info.state.bytes, info.config.max_bytes, info.state.messages))
            }
            Err(error) => {
                tracing::debug!(%error, stream = %name, "Stream info unavailable.");
                None
            }
        };
        metrics::stream_info(name, state);
    }
    let owned = ctx.partitions.owned();
    let mut lag = vec![Some(0u64); usize::from(ctx.config.partitions)];
    for (stream, base) in BROKER_CONSUMERS {
        let Ok(s) = ctx.js.get_stream(stream).await else {
            metrics::consumer_unknown(base);
            continue;
        };
        let mut sum = Some((0u64, 0usize, 0usize));
        for &p in &owned {
            // Getting a consumer reads its info.
            let name = names::partition_consumer(base, p);
            match s.get_consumer::<pull::Config>(&name).await.ok().map(|c| c.cached_info().clone()) {
                Some(i) => {
                    sum = sum.map(|(a, b, c)| (a + i.num_pending, b + i.num_ack_pending, c + i.num_redelivered));
                    lag[usize::from(p)] = lag[usize::from(p)].map(|l| l + i.num_pending + i.num_ack_pending as u64);
                }
                None => {
                    sum = None;
                    lag[usize::from(p)] = None;
                }
            }
        }
        match sum {
            Some((pending, ack_pending, redelivered)) => {
                metrics::consumer_info(base, pending, ack_pending, redelivered)
            }
            None => metrics::consumer_unknown(base),
        }
    }
    for (p, l) in lag.into_iter().enumerate() {
        let p = p as u16;
        metrics::partition_lag(p, if owned.contains(&p) { l } else { Some(0) });
    }
}

/// The tenants whose gauges were refreshed, or `None` when Postgres could not be read.
async fn refresh_devices(ctx: &Ctx) -> Option<Vec<String>> {
    if let Err(error) = track_watermarks(&ctx.pool).await {
        tracing::warn!(%error, "Watermark stall tracking failed; retrying next refresh.");
    }
    match by_tenant(&ctx.pool, ctx.config.watermark_stall_s).await {
        Ok(rows) => {
            let tenants = rows.iter().map(|t| t.tenant_id.clone()).collect();
            for t in rows {
                metrics::device_gaps(&t.tenant_id, t.open_gaps, t.oldest_gap_s);
                metrics::watermarks_stalled(&t.tenant_id, t.stalled);
                // The offline sweep reports tenants that have devices; a tenant without any
                // still gets its series, at 0.
                if !t.has_devices {
                    metrics::devices_by_state(&t.tenant_id, 0, 0);
                }
            }
            Some(tenants)
        }
        Err(error) => {
            tracing::warn!(%error, "Gap and stall gauges not refreshed; they read NaN until Postgres answers.");
            None
        }
    }
}

/// Keeps each device's watermark wait current. A heartbeat reports the watermark the bridge has
/// seen (`last_acked_seq`) and the events it holds beyond it (`outbox_depth`), so their sum is
/// the device's last seq. When that is above the broker's watermark, the wait starts (that seq, now) unless one is running; once
/// the watermark reaches the awaited seq the wait ends, and starts again at the newer seq if
/// the watermark is still behind. A watermark that keeps up under load thus never waits long;
/// one that events lost in JetStream hold back waits until they are resent.
pub async fn track_watermarks(pool: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE devices SET
           watermark_wait_seq = CASE
             WHEN coalesce(last_acked_seq, 0) + coalesce(outbox_depth, 0) <= watermark THEN NULL
             WHEN watermark_wait_seq IS NULL OR watermark >= watermark_wait_seq
               THEN coalesce(last_acked_seq, 0) + coalesce(outbox_depth, 0)
             ELSE watermark_wait_seq END,
           watermark_wait_since = CASE
             WHEN coalesce(last_acked_seq, 0) + coalesce(outbox_depth, 0) <= watermark THEN NULL
             WHEN watermark_wait_seq IS NULL OR watermark >= watermark_wait_seq THEN now()
             ELSE watermark_wait_since END
         WHERE watermark_wait_seq IS NOT NULL
            OR coalesce(last_acked_seq, 0) + coalesce(outbox_depth, 0) > watermark",
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

#[derive(sqlx::FromRow)]
struct TenantSignals {
    tenant_id: String,
    open_gaps: i64,
    oldest_gap_s: f64,
    stalled: i64,
    has_devices: bool,
}

async fn by_tenant(pool: &sqlx::PgPool, stall_s: u64) -> Result<Vec<TenantSignals>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.tenant_id,
                coalesce(g.open, 0) AS open_gaps,
                coalesce(g.oldest_s, 0)::float8 AS oldest_gap_s,
                (SELECT count(*) FROM devices d WHERE d.tenant_id = t.tenant_id AND d.decommissioned_at IS NULL
                   AND d.watermark_wait_since < now() - make_interval(secs => $1)) AS stalled,
                EXISTS (SELECT 1 FROM devices d WHERE d.tenant_id = t.tenant_id AND d.decommissioned_at IS NULL)
                  AS has_devices
         FROM tenants t
         LEFT JOIN LATERAL (
           SELECT count(*) AS open, EXTRACT(EPOCH FROM now() - min(detected_at)) AS oldest_s
           FROM device_gaps g WHERE g.tenant_id = t.tenant_id AND g.filled_at IS NULL
             AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.tenant_id = g.tenant_id AND d.store_id = g.store_id
                               AND d.device_id = g.device_id AND d.decommissioned_at IS NOT NULL)
         ) g ON true",
    )
    .bind(stall_s as f64)
    .fetch_all(pool)
    .await
}
