//! Snapshots NATS no longer holds. The distributor republishes a store's snapshot only when
//! its version moves, so a snapshot lost by NATS (a stream recreated, a lost write, a node's
//! storage gone) would leave every device on first boot waiting for head office's next
//! publish. Every [`CHECK_EVERY`] the distributing instance lists the snapshot stream's
//! subjects (one paged request, not one per store) and marks each store whose subject is
//! missing as never snapshotted; the next round republishes it at its newest version.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::context::GetStreamError;
use async_nats::jetstream::stream::InfoError;
use futures::TryStreamExt as _;
use tillsync_schemas::config::snapshot_subject;
use tillsync_schemas::streams as names;

use crate::{metrics, Ctx};

pub const CHECK_EVERY: Duration = Duration::from_secs(60);

/// Why a check for lost snapshots failed; the next check tries again.
#[derive(Debug, thiserror::Error)]
pub enum LostError {
    #[error("reading the stores with a snapshot")]
    Stores(#[source] sqlx::Error),
    #[error("looking up stream {}", names::CONFIG_SNAPSHOTS)]
    Stream(#[source] GetStreamError),
    #[error("listing the subjects of stream {}", names::CONFIG_SNAPSHOTS)]
    Subjects(#[source] InfoError),
    #[error("marking lost snapshots")]
    Mark(#[source] sqlx::Error),
}

pub async fn run(ctx: std::sync::Arc<Ctx>, job: crate::tasks::Job) {
    job.run(&ctx, || async { mark_lost(&ctx).await.map(|_| ()) }).await
}

/// Marks the stores whose snapshot is missing from JetStream; returns how many.
pub async fn mark_lost(ctx: &Ctx) -> Result<usize, LostError> {
    // Stores first, subjects second: a snapshot recorded before this read was stored before it
    // (the row moves only after the PubAck), so the listing below holds it.
    let stores: Vec<(String, String)> =
        sqlx::query_as("SELECT tenant_id, store_id FROM config_stores WHERE snapshot_version > 0")
            .fetch_all(&ctx.pool)
            .await
            .map_err(LostError::Stores)?;
    if stores.is_empty() {
        return Ok(0);
    }
    let stream = ctx.js.get_stream_no_info(names::CONFIG_SNAPSHOTS).await.map_err(LostError::Stream)?;
    let held: HashSet<String> = stream
        .info_with_subjects(snapshot_subject("*", "*"))
        .await
        .map_err(LostError::Subjects)?
        .map_ok(|(subject, _)| subject)
        .try_collect()
        .await
        .map_err(LostError::Subjects)?;
    let lost: Vec<&(String, String)> = stores.iter().filter(|(t, s)| !held.contains(&snapshot_subject(t, s))).collect();
    let (tenants, stores): (Vec<&str>, Vec<&str>) = lost.iter().map(|(t, s)| (t.as_str(), s.as_str())).unzip();
    sqlx::query(
        "UPDATE config_stores c SET snapshot_version = 0, snapshot_at = NULL
         FROM unnest($1::text[], $2::text[]) AS l(tenant_id, store_id)
         WHERE c.tenant_id = l.tenant_id AND c.store_id = l.store_id",
    )
    .bind(&tenants)
    .bind(&stores)
    .execute(&ctx.pool)
    .await
    .map_err(LostError::Mark)?;
    if !lost.is_empty() {
        metrics::config_snapshots_lost(lost.len() as u64);
        tracing::warn!(stores = lost.len(), first = ?lost[0], "Configuration snapshots missing from JetStream; republishing them.");
    }
    Ok(lost.len())
}
