//! Distribution: the owner of partition 0 puts every committed version on JetStream, in
//! version order per store, then the store's snapshot at its newest distributed version.
//! Woken by `NOTIFY tillsync_config`, with a poll every second as the fallback; a broker that
//! died between a commit and its publish leaves the version undistributed, and the next round
//! (on whichever instance leads) publishes it. `Nats-Msg-Id` makes a repeated publish harmless.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{GetStreamError, PublishError};
use async_nats::jetstream::stream::DirectGetError;
use async_nats::HeaderMap;
use futures::FutureExt as _;
use sqlx::postgres::PgListener;
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::Row;
use tillsync_schemas::config::{delta_subject, snapshot_subject, ConfigDelta, ConfigSnapshot};
use tillsync_schemas::{streams as names, SCHEMA_VERSION};

use super::model;
use super::rows::{self, CHANNEL};
use crate::error::Chain;
use crate::{metrics, Ctx};

const POLL: Duration = Duration::from_secs(1);
/// Versions (and snapshots) handled per round; the next round continues at once when full.
const ROUND: i64 = 500;
/// Snapshots per round: each is a query of the store's whole configuration, and the deltas of
/// the next round (what online devices wait for) must not queue behind a hundred of them.
const SNAPSHOTS_PER_ROUND: i64 = 10;
/// A store's snapshot is refreshed at most this often...
const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);
/// ...unless it is this many versions behind the store (well inside the deltas kept).
const SNAPSHOT_LAG: i64 = 20;
/// How often stores with devices but no configuration version are looked for.
const ADOPT_EVERY: Duration = Duration::from_secs(30);

pub use tillsync_schemas::config::{delta_msg_id, HEADER_VERSION as HEADER_CONFIG_VERSION};

/// Why a round stopped short; what it did not distribute waits for the next round.
#[derive(Debug, thiserror::Error)]
pub enum DistributeError {
    #[error("Postgres")]
    Db(#[from] sqlx::Error),
    #[error("publishing the delta of {tenant}/{store} version {version}")]
    Delta {
        tenant: String,
        store: String,
        version: i64,
        #[source]
        source: PublishError,
    },
    #[error("publishing the snapshot of {tenant}/{store} version {version}")]
    Snapshot {
        tenant: String,
        store: String,
        version: i64,
        #[source]
        source: PublishError,
    },
    #[error("looking up stream {}", names::CONFIG_SNAPSHOTS)]
    Stream(#[source] GetStreamError),
    #[error("reading the stored snapshot of {tenant}/{store}")]
    Stored {
        tenant: String,
        store: String,
        #[source]
        source: DirectGetError,
    },
}

pub async fn run(ctx: Arc<Ctx>) {
    let mut listener: Option<PgListener> = None;
    // `devices add` and a store's first heartbeat give a new store its version 1; the sweep
    // catches what they missed (a failed attempt), so it need not scan devices every round.
    let mut adopt = tokio::time::interval(ADOPT_EVERY);
    loop {
        if listener.is_none() {
            listener = listen(&ctx).await;
        }
        if ctx.partitions.leads() {
            if adopt.tick().now_or_never().is_some() {
                if let Err(error) = adopt_new_stores(&ctx).await {
                    tracing::warn!(%error, "New stores not given their configuration this round; retrying.");
                }
            }
            match round(&ctx).await {
                // A full round: more may wait, go again without sleeping.
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(error = %Chain(&error), "Configuration not distributed this round; retrying.")
                }
            }
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            woke = notified(&mut listener) => {
                if let Err(error) = woke {
                    tracing::warn!(%error, "Configuration listener lost; polling until it is back.");
                    listener = None;
                }
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

async fn listen(ctx: &Ctx) -> Option<PgListener> {
    let mut l = PgListener::connect_with(&ctx.pool).await.ok()?;
    l.listen(CHANNEL).await.ok()?;
    Some(l)
}

async fn notified(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(l) => l.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

/// One round: new stores, undistributed deltas, then stale snapshots. True when a limit was
/// reached (more work waits).
async fn round(ctx: &Ctx) -> Result<bool, DistributeError> {
    let deltas = publish_deltas(ctx).await?;
    let snapshots = publish_snapshots(ctx).await?;
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM config_versions WHERE distributed_at IS NULL")
        .fetch_one(&ctx.pool)
        .await?;
    metrics::config_undistributed(waiting);
    Ok(deltas >= ROUND as usize || snapshots >= SNAPSHOTS_PER_ROUND as usize)
}

/// Stores with devices and no version, of tenants that have a configuration (devices added
/// with `tillsync devices add` or activated): they get version 1.
async fn adopt_new_stores(ctx: &Ctx) -> Result<(), sqlx::Error> {
    let stores: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT d.tenant_id, d.store_id FROM devices d
         WHERE NOT EXISTS (SELECT 1 FROM config_stores c WHERE c.tenant_id = d.tenant_id AND c.store_id = d.store_id AND c.version > 0)
           AND EXISTS (SELECT 1 FROM config_entities e WHERE e.tenant_id = d.tenant_id)
         LIMIT 100",
    )
    .fetch_all(&ctx.pool)
    .await?;
    for (tenant, store) in stores {
        super::ensure_store(&ctx.pool, &tenant, &store).await?;
    }
    Ok(())
}

/// Publishes undistributed versions in (store, version) order and records their stream
/// sequences. Every delta of the round is sent before any PubAck is awaited: one connection
/// keeps them in order on the stream, and a round of a hundred stores costs one round trip
/// rather than a hundred. The acks are taken in order up to the first failure; what follows
/// it stays undistributed and is sent again next round (its `Nats-Msg-Id` makes a copy
/// already stored a no-op, and a device that meets a gap takes the snapshot).
async fn publish_deltas(ctx: &Ctx) -> Result<usize, DistributeError> {
    let pending = sqlx::query(
        "SELECT tenant_id, store_id, version, publish_id, published_by, published_at FROM config_versions
         WHERE distributed_at IS NULL ORDER BY tenant_id, store_id, version LIMIT $1",
    )
    .bind(ROUND)
    .fetch_all(&ctx.pool)
    .await?;
    let n = pending.len();
    if n == 0 {
        return Ok(0);
    }
    let keys: Vec<(String, String, i64)> =
        pending.iter().map(|r| (r.get("tenant_id"), r.get("store_id"), r.get("version"))).collect();
    let mut changes = rows::changes_of(&ctx.pool, &keys).await?;
    let mut acks = Vec::with_capacity(n);
    for (row, (tenant, store, version)) in pending.iter().zip(&keys) {
        let published_at: DateTime<Utc> = row.get("published_at");
        let delta = ConfigDelta {
            schema_version: SCHEMA_VERSION,
            version: *version as u64,
            publish_id: row.get("publish_id"),
            published_by: row.get("published_by"),
            published_at_ms: published_at.timestamp_millis(),
            changes: changes.remove(&(tenant.clone(), store.clone(), *version)).unwrap_or_default(),
            tenant_id: tenant.clone(),
            store_id: store.clone(),
        };
        let mut headers = headers(*version as u64);
        headers.insert(names::HEADER_MSG_ID, delta_msg_id(tenant, store, *version as u64).as_str());
        let subject = delta_subject(tenant, store);
        let sent = ctx.js.publish_with_headers(subject, headers, tillsync_schemas::encode(&delta).into()).await;
        let delta_of =
            |source| DistributeError::Delta { tenant: tenant.clone(), store: store.clone(), version: *version, source };
        acks.push(sent.map_err(delta_of)?);
    }
    let (mut ts, mut ss, mut vs, mut seqs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut failed = None;
    for ((tenant, store, version), ack) in keys.into_iter().zip(acks) {
        match ack.await {
            Ok(ack) => {
                ts.push(tenant);
                ss.push(store);
                vs.push(version);
                seqs.push(ack.sequence as i64);
            }
            Err(source) => {
                failed = Some(DistributeError::Delta { tenant, store, version, source });
                break;
            }
        }
    }
    sqlx::query(
        "UPDATE config_versions v SET delta_seq = p.seq, distributed_at = now()
         FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS p(t, s, v, seq)
         WHERE v.tenant_id = p.t AND v.store_id = p.s AND v.version = p.v",
    )
    .bind(&ts)
    .bind(&ss)
    .bind(&vs)
    .bind(&seqs)
    .execute(&ctx.pool)
    .await?;
    tracing::debug!(deltas = ts.len(), "Configuration deltas distributed.");
    match failed {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

fn headers(version: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(names::HEADER_CONTENT_TYPE, names::CONTENT_TYPE);
    h.insert(HEADER_CONFIG_VERSION, version.to_string().as_str());
    h
}

/// Publishes the snapshot of every store whose newest version is distributed and newer than
/// its last snapshot, at most every [`SNAPSHOT_EVERY`] per store unless it lags
/// [`SNAPSHOT_LAG`] versions: online devices live on deltas, and a snapshot (the whole
/// configuration) per version would cost a hundred times a delta. A device that takes a
/// lagging snapshot catches up on the deltas after it, which the stream keeps. Version and state are read in one repeatable-read transaction, so the
/// state is that version's even while another publish commits.
async fn publish_snapshots(ctx: &Ctx) -> Result<usize, DistributeError> {
    let stale: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.tenant_id, c.store_id FROM config_stores c
         JOIN config_versions v ON v.tenant_id = c.tenant_id AND v.store_id = c.store_id AND v.version = c.version
         WHERE c.snapshot_version < c.version AND v.distributed_at IS NOT NULL
           AND (c.snapshot_at IS NULL OR c.snapshot_at < now() - $2 * interval '1 millisecond'
                OR c.snapshot_version <= c.version - $3)
         LIMIT $1",
    )
    .bind(SNAPSHOTS_PER_ROUND)
    .bind(SNAPSHOT_EVERY.as_millis() as f64)
    .bind(SNAPSHOT_LAG)
    .fetch_all(&ctx.pool)
    .await?;
    let n = stale.len();
    for (tenant, store) in stale {
        let mut tx = ctx.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let (version, delta_seq, published_at): (i64, Option<i64>, DateTime<Utc>) = sqlx::query_as(
            "SELECT v.version, v.delta_seq, v.published_at FROM config_stores c
             JOIN config_versions v ON v.tenant_id = c.tenant_id AND v.store_id = c.store_id AND v.version = c.version
             WHERE c.tenant_id = $1 AND c.store_id = $2",
        )
        .bind(&tenant)
        .bind(&store)
        .fetch_one(&mut *tx)
        .await?;
        // A newer version committed since the list was read: its delta goes first, next round.
        let Some(delta_seq) = delta_seq else { continue };
        let state = rows::effective_state(&mut *tx, &tenant, &store).await?;
        tx.commit().await?;
        // Never replace a newer snapshot: an instance that lost partition 0 while paused could
        // wake here with an older state. It publishes only over the snapshot it saw, and only
        // if that one is older; JetStream refuses the publish if another landed meanwhile.
        let held = stored_snapshot(ctx, &tenant, &store).await?;
        if held.is_some_and(|(_, v)| v >= version as u64) {
            mark_snapshot(ctx, &tenant, &store, version).await?;
            continue;
        }
        let mut headers = headers(version as u64);
        if let Some((seq, _)) = held {
            headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, seq.to_string().as_str());
        }
        let snapshot = ConfigSnapshot {
            schema_version: SCHEMA_VERSION,
            tenant_id: tenant.clone(),
            store_id: store.clone(),
            version: version as u64,
            delta_seq: delta_seq as u64,
            published_at_ms: published_at.timestamp_millis(),
            entities: model::as_changes(&state),
        };
        let subject = snapshot_subject(&tenant, &store);
        let stored =
            match ctx.js.publish_with_headers(subject, headers, tillsync_schemas::encode(&snapshot).into()).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
        match stored {
            Ok(_) => {}
            // Another snapshot landed since the look: the next round looks again.
            Err(e) if e.kind() == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence => continue,
            Err(source) => return Err(DistributeError::Snapshot { tenant, store, version, source }),
        }
        mark_snapshot(ctx, &tenant, &store, version).await?;
    }
    Ok(n)
}

/// The stream sequence and version of the snapshot JetStream holds for a store, if any.
async fn stored_snapshot(ctx: &Ctx, tenant: &str, store: &str) -> Result<Option<(u64, u64)>, DistributeError> {
    let stream = ctx.js.get_stream_no_info(names::CONFIG_SNAPSHOTS).await.map_err(DistributeError::Stream)?;
    match stream.direct_get_last_for_subject(snapshot_subject(tenant, store)).await {
        Ok(m) => {
            let version = m.headers.get(HEADER_CONFIG_VERSION).and_then(|v| v.as_str().parse().ok()).unwrap_or(0);
            Ok(Some((m.sequence, version)))
        }
        Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(source) => Err(DistributeError::Stored { tenant: tenant.into(), store: store.into(), source }),
    }
}

async fn mark_snapshot(ctx: &Ctx, tenant: &str, store: &str, version: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE config_stores SET snapshot_version = GREATEST(snapshot_version, $3), snapshot_at = now()
         WHERE tenant_id = $1 AND store_id = $2",
    )
    .bind(tenant)
    .bind(store)
    .bind(version)
    .execute(&ctx.pool)
    .await?;
    Ok(())
}
