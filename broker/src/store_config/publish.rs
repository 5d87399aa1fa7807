//! Publishing a change set: checked whole, then every affected store gets its next version in
//! one Postgres transaction, or nothing is written but the refusal.

use std::collections::BTreeMap;

use sqlx::types::chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use tillsync_schemas::config::{
    check_change_set, check_references, Change, ChangeSet, Refusal, Refused, MAX_CONFIG_BYTES,
};

use super::model::{self, Overrides, State};
use super::rows;
use crate::{metrics, now_ms};

/// A publish that was committed: the versions it gave, by store (empty when the tenant has no
/// store yet: stores that appear later get the configuration as their version 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub publish_id: String,
    pub versions: BTreeMap<String, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Refused whole, with its code; recorded in `config_refusals`.
    #[error("refused: {0}")]
    Refused(Refused),
    /// Postgres failed; nothing was published.
    #[error("postgres")]
    Db(#[from] sqlx::Error),
}

impl From<Refused> for PublishError {
    fn from(r: Refused) -> Self {
        PublishError::Refused(r)
    }
}

/// Publishes `cs` (the CLI, the portal responder and the bench share this). A refusal is
/// recorded durably and counted; the versions are put on JetStream by the distributor.
pub async fn publish(pool: &PgPool, cs: &ChangeSet) -> Result<Published, PublishError> {
    match attempt(pool, cs).await {
        Ok(p) => {
            metrics::config_publish("published", "none");
            tracing::info!(tenant = %cs.tenant_id, publish_id = %p.publish_id, stores = p.versions.len(), "Configuration published.");
            Ok(p)
        }
        Err(PublishError::Refused(r)) => {
            record_refusal(pool, cs, &r).await?;
            Err(PublishError::Refused(r))
        }
        Err(e) => Err(e),
    }
}

/// Records a refused publish (`config_refusals`) and counts it. The portal responder and the
/// CLI call it for refusals they decide before [`publish`] (wrong_tenant, undecodable).
pub async fn record_refusal(pool: &PgPool, cs: &ChangeSet, r: &Refused) -> Result<(), sqlx::Error> {
    metrics::config_publish("refused", r.code.as_str());
    tracing::info!(tenant = %cs.tenant_id, code = r.code.as_str(), detail = %r.detail, "Configuration publish refused.");
    sqlx::query(
        "INSERT INTO config_refusals (tenant_id, store_id, code, detail, published_by, changes)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&cs.tenant_id)
    .bind(&cs.store_id)
    .bind(r.code.as_str())
    .bind(&r.detail)
    .bind(publisher(cs))
    .bind(cs.changes.len() as i32)
    .execute(pool)
    .await?;
    Ok(())
}

fn publisher(cs: &ChangeSet) -> &str {
    match cs.published_by.trim() {
        "" => "unknown",
        by => by,
    }
}

async fn attempt(pool: &PgPool, cs: &ChangeSet) -> Result<Published, PublishError> {
    let changes = check_change_set(cs)?;
    let tenant = cs.tenant_id.as_str();
    let mut tx = pool.begin().await?;
    if !rows::lock_tenant(&mut tx, tenant).await? {
        return Err(Refused::new(Refusal::UnknownTenant, format!("tenant {tenant:?} is not provisioned")).into());
    }
    let stores = affected_stores(&mut tx, tenant, cs.store_id.as_deref()).await?;
    if let Some(want) = cs.if_match {
        if let Some((store, at)) = stores.iter().find(|(_, v)| **v != want as i64) {
            return Err(Refused::new(
                Refusal::PreconditionFailed,
                format!("store {store:?} is at version {at}, not {want}"),
            )
            .into());
        }
    }
    let mut tenant_state = rows::tenant_state(&mut *tx, tenant).await?;
    let names: Vec<String> = stores.keys().cloned().collect();
    let mut overrides = rows::store_overrides(&mut *tx, tenant, &names).await?;
    match &cs.store_id {
        Some(store) => model::apply_overrides(overrides.entry(store.clone()).or_default(), &changes),
        None => model::apply(&mut tenant_state, &changes),
    }
    // Only tenant-scope entities reference others (stores may own settings only), so the
    // tenant's state decides the references of every store.
    check_references(&tenant_state)?;
    let deltas = plan(&changes, &tenant_state, &overrides, &stores)?;

    let publish_id = uuid::Uuid::now_v7().to_string();
    let at = now_ms();
    let by = publisher(cs);
    match &cs.store_id {
        Some(store) => rows::write_overrides(&mut tx, tenant, store, &changes).await?,
        None => rows::write_entities(&mut tx, tenant, &changes).await?,
    }
    let mut versions = BTreeMap::new();
    for (store, delta) in deltas {
        let version = stores[&store] + 1;
        rows::write_version(&mut tx, tenant, &store, version, &publish_id, by, at, &delta).await?;
        versions.insert(store, version as u64);
    }
    rows::notify(&mut tx, tenant).await?;
    tx.commit().await?;
    Ok(Published { publish_id, versions })
}

/// Each affected store's delta, after checking that no delta or resulting snapshot is too big.
/// Stores without their own settings and with a version already share one delta and one size.
fn plan(
    changes: &[Change],
    tenant: &State,
    overrides: &BTreeMap<String, Overrides>,
    stores: &BTreeMap<String, i64>,
) -> Result<Vec<(String, Vec<Change>)>, Refused> {
    let none = Overrides::new();
    let shared = model::store_delta(changes, tenant, &none, false);
    let shared_snapshot = model::encoded_size(&model::as_changes(tenant));
    check_size("the delta", model::encoded_size(&shared))?;
    check_size("the resulting snapshot", shared_snapshot)?;
    let mut out = Vec::with_capacity(stores.len());
    for (store, version) in stores {
        let own = overrides.get(store).unwrap_or(&none);
        let first = *version == 0;
        if own.is_empty() && !first {
            out.push((store.clone(), shared.clone()));
            continue;
        }
        let delta = model::store_delta(changes, tenant, own, first);
        check_size(&format!("store {store:?}'s delta"), model::encoded_size(&delta))?;
        let snapshot = model::as_changes(&model::effective(tenant, own));
        check_size(&format!("store {store:?}'s snapshot"), model::encoded_size(&snapshot))?;
        out.push((store.clone(), delta));
    }
    Ok(out)
}

fn check_size(what: &str, bytes: usize) -> Result<(), Refused> {
    if bytes > MAX_CONFIG_BYTES {
        return Err(Refused::new(
            Refusal::Oversize,
            format!("{what} would be {bytes} bytes, more than {MAX_CONFIG_BYTES}"),
        ));
    }
    Ok(())
}

/// The stores a publish reaches, with their current versions, locked: the one named (it must
/// have devices or versions), or every store of the tenant with devices or versions.
async fn affected_stores(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    store: Option<&str>,
) -> Result<BTreeMap<String, i64>, PublishError> {
    match store {
        Some(store) => {
            if !rows::store_known(&mut **tx, tenant, store).await? {
                return Err(Refused::new(
                    Refusal::UnknownStore,
                    format!("store {store:?} of tenant {tenant:?} has no devices and no configuration"),
                )
                .into());
            }
            Ok(rows::lock_stores(tx, tenant, Some(store)).await?)
        }
        None => Ok(rows::lock_stores(tx, tenant, None).await?),
    }
}

/// Gives a store that appeared (a device added, or its first heartbeat) its version 1: the
/// tenant's configuration as it is now. Nothing when the store already has a version or the
/// tenant has no configuration yet. Returns the version written.
pub async fn ensure_store(pool: &PgPool, tenant: &str, store: &str) -> Result<Option<u64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !rows::lock_tenant(&mut tx, tenant).await? || rows::has_versions(&mut *tx, tenant, store).await? {
        return Ok(None);
    }
    let state = rows::tenant_state(&mut *tx, tenant).await?;
    if state.is_empty() {
        return Ok(None);
    }
    let stores = rows::lock_stores(&mut tx, tenant, Some(store)).await?;
    let own = rows::store_overrides(&mut *tx, tenant, &[store.to_string()]).await?;
    let changes = model::as_changes(&model::effective(&state, own.get(store).unwrap_or(&Overrides::new())));
    let version = stores.get(store).copied().unwrap_or(0) + 1;
    let publish_id = uuid::Uuid::now_v7().to_string();
    rows::write_version(&mut tx, tenant, store, version, &publish_id, "store_added", now_ms(), &changes).await?;
    rows::notify(&mut tx, tenant).await?;
    tx.commit().await?;
    tracing::info!(tenant, store, version, "A new store got the tenant's configuration.");
    Ok(Some(version as u64))
}

/// When a version was published, for the apply-latency histogram.
pub async fn published_at(
    pool: &PgPool,
    tenant: &str,
    store: &str,
    version: u64,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT published_at FROM config_versions WHERE tenant_id = $1 AND store_id = $2 AND version = $3",
    )
    .bind(tenant)
    .bind(store)
    .bind(version as i64)
    .fetch_optional(pool)
    .await
}
