//! Desired against applied: the version each device should run (its store's newest) against
//! the one its heartbeats report. The owner of partition 0 exports, per tenant, how many
//! devices are behind and since when the oldest of them differs (the publish time of the first
//! version above what it applied). Only devices that have reported a heartbeat count.

use std::sync::Arc;

use crate::tasks::Job;
use crate::{metrics, Ctx};

pub async fn run(ctx: Arc<Ctx>, job: Job) {
    job.run(&ctx, || async {
        for (tenant, behind, oldest) in by_tenant(&ctx.pool).await? {
            metrics::config_drift(&tenant, behind, oldest);
        }
        Ok::<_, sqlx::Error>(())
    })
    .await
}

/// (tenant, devices behind, age in seconds of the oldest difference) for every tenant, so a
/// tenant without configuration or drift exports 0. A decommissioned till never catches up
/// and is not counted.
pub async fn by_tenant(pool: &sqlx::PgPool) -> Result<Vec<(String, i64, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.tenant_id,
                count(v.version) AS behind,
                COALESCE(max(EXTRACT(EPOCH FROM now() - v.published_at)), 0)::float8 AS oldest
         FROM tenants t
         LEFT JOIN config_stores c ON c.tenant_id = t.tenant_id
         LEFT JOIN devices d ON d.tenant_id = c.tenant_id AND d.store_id = c.store_id
              AND d.config_revision IS NOT NULL AND d.config_revision < c.version
              AND d.decommissioned_at IS NULL
         LEFT JOIN config_versions v ON v.tenant_id = d.tenant_id AND v.store_id = d.store_id
              AND v.version = d.config_revision + 1
         GROUP BY t.tenant_id",
    )
    .fetch_all(pool)
    .await
}

/// A heartbeat reported `applied`, up from `before`: observes publish-to-applied latency.
pub async fn applied(pool: &sqlx::PgPool, tenant: &str, store: &str, before: u64, applied: u64) {
    if applied <= before {
        return;
    }
    match super::publish::published_at(pool, tenant, store, applied).await {
        Ok(Some(at)) => {
            let secs = (sqlx::types::chrono::Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::config_apply_latency(secs);
        }
        Ok(None) => tracing::debug!(tenant, store, applied, "A device reports a version this store never had."),
        Err(error) => tracing::warn!(%error, "Config apply latency not observed."),
    }
}
