//! The SQL of configuration (migration 0012): tenant entities, a store's own settings,
//! versions and their changes.

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::{PgExecutor, Postgres, Row, Transaction};
use tillsync_schemas::config::{Change, EntityType};

use super::model::{Overrides, State};
use crate::ts;

type Tx<'a> = Transaction<'a, Postgres>;

/// The Postgres channel a publish notifies (payload: the tenant), so the distributor wakes.
pub const CHANNEL: &str = "tillsync_config";

/// Locks the tenant's row for the rest of the transaction: a tenant's publishes (and new
/// stores' first versions) happen one after another, in a definite order. Not `FOR UPDATE`,
/// which would also block devices being added to the tenant (their foreign key). False when
/// the tenant does not exist.
pub async fn lock_tenant(tx: &mut Tx<'_>, tenant: &str) -> Result<bool, sqlx::Error> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM tenants WHERE tenant_id = $1 FOR NO KEY UPDATE")
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(found.is_some())
}

/// Whether a store exists for configuration: it has devices or versions.
pub async fn store_known(db: impl PgExecutor<'_>, tenant: &str, store: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM devices WHERE tenant_id = $1 AND store_id = $2)
             OR EXISTS (SELECT 1 FROM config_stores WHERE tenant_id = $1 AND store_id = $2)",
    )
    .bind(tenant)
    .bind(store)
    .fetch_one(db)
    .await
}

/// Whether the store already has a version.
pub async fn has_versions(db: impl PgExecutor<'_>, tenant: &str, store: &str) -> Result<bool, sqlx::Error> {
    let v: Option<i64> = sqlx::query_scalar("SELECT version FROM config_stores WHERE tenant_id = $1 AND store_id = $2")
        .bind(tenant)
        .bind(store)
        .fetch_optional(db)
        .await?;
    Ok(v.unwrap_or(0) > 0)
}

/// The version rows of one store (`Some`) or of every store of the tenant with devices or
/// versions (`None`), created at version 0 where missing, locked, with their current versions.
pub async fn lock_stores(
    tx: &mut Tx<'_>,
    tenant: &str,
    store: Option<&str>,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    match store {
        Some(s) => {
            sqlx::query("INSERT INTO config_stores (tenant_id, store_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(tenant)
                .bind(s)
                .execute(&mut **tx)
                .await?;
        }
        None => {
            sqlx::query(
                "INSERT INTO config_stores (tenant_id, store_id)
                 SELECT DISTINCT tenant_id, store_id FROM devices WHERE tenant_id = $1 ON CONFLICT DO NOTHING",
            )
            .bind(tenant)
            .execute(&mut **tx)
            .await?;
        }
    }
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT store_id, version FROM config_stores WHERE tenant_id = $1 AND ($2::text IS NULL OR store_id = $2)
         ORDER BY store_id FOR UPDATE",
    )
    .bind(tenant)
    .bind(store)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().collect())
}

fn entity_type(s: &str) -> Option<EntityType> {
    let t = EntityType::parse(s);
    if t.is_none() {
        tracing::warn!(entity_type = s, "Unknown configuration type in Postgres; skipped.");
    }
    t
}

/// The tenant's configuration (tenant scope) as it is now.
pub async fn tenant_state(db: impl PgExecutor<'_>, tenant: &str) -> Result<State, sqlx::Error> {
    let rows: Vec<(String, String, Value)> =
        sqlx::query_as("SELECT entity_type, entity_id, body FROM config_entities WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().filter_map(|(t, id, body)| Some(((entity_type(&t)?, id), body))).collect())
}

/// The own settings of the given stores.
pub async fn store_overrides(
    db: impl PgExecutor<'_>,
    tenant: &str,
    stores: &[String],
) -> Result<BTreeMap<String, Overrides>, sqlx::Error> {
    let rows: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT store_id, setting_id, body FROM config_store_settings WHERE tenant_id = $1 AND store_id = ANY($2)",
    )
    .bind(tenant)
    .bind(stores)
    .fetch_all(db)
    .await?;
    let mut out: BTreeMap<String, Overrides> = BTreeMap::new();
    for (store, id, body) in rows {
        out.entry(store).or_default().insert(id, body);
    }
    Ok(out)
}

/// Column arrays of a list of changes, for `unnest`.
fn columns(changes: &[Change]) -> (Vec<String>, Vec<String>, Vec<Option<Value>>) {
    let types = changes.iter().map(|c| c.entity_type.as_str().to_string()).collect();
    let ids = changes.iter().map(|c| c.id.clone()).collect();
    let bodies = changes.iter().map(|c| c.body.clone()).collect();
    (types, ids, bodies)
}

/// Writes tenant-scope changes: upserts set the entity, deletes remove it.
pub async fn write_entities(tx: &mut Tx<'_>, tenant: &str, changes: &[Change]) -> Result<(), sqlx::Error> {
    let (types, ids, bodies) = columns(changes);
    sqlx::query(
        "DELETE FROM config_entities e USING unnest($2::text[], $3::text[], $4::jsonb[]) AS c(t, id, body)
         WHERE e.tenant_id = $1 AND e.entity_type = c.t AND e.entity_id = c.id AND c.body IS NULL",
    )
    .bind(tenant)
    .bind(&types)
    .bind(&ids)
    .bind(&bodies)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO config_entities (tenant_id, entity_type, entity_id, body)
         SELECT $1, t, id, body FROM unnest($2::text[], $3::text[], $4::jsonb[]) AS c(t, id, body) WHERE body IS NOT NULL
         ON CONFLICT (tenant_id, entity_type, entity_id) DO UPDATE SET body = EXCLUDED.body, updated_at = now()",
    )
    .bind(tenant)
    .bind(&types)
    .bind(&ids)
    .bind(&bodies)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes a store's own settings: upserts set them, deletes remove them.
pub async fn write_overrides(
    tx: &mut Tx<'_>,
    tenant: &str,
    store: &str,
    changes: &[Change],
) -> Result<(), sqlx::Error> {
    for c in changes.iter().filter(|c| c.entity_type == EntityType::Setting) {
        let q = match &c.body {
            Some(body) => sqlx::query(
                "INSERT INTO config_store_settings (tenant_id, store_id, setting_id, body) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant_id, store_id, setting_id) DO UPDATE SET body = EXCLUDED.body, updated_at = now()",
            )
            .bind(tenant)
            .bind(store)
            .bind(&c.id)
            .bind(body),
            None => sqlx::query(
                "DELETE FROM config_store_settings WHERE tenant_id = $1 AND store_id = $2 AND setting_id = $3",
            )
            .bind(tenant)
            .bind(store)
            .bind(&c.id),
        };
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Records a store's new version and its changes (the store's version row is locked).
#[allow(clippy::too_many_arguments)]
pub async fn write_version(
    tx: &mut Tx<'_>,
    tenant: &str,
    store: &str,
    version: i64,
    publish_id: &str,
    by: &str,
    at_ms: i64,
    changes: &[Change],
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE config_stores SET version = $3 WHERE tenant_id = $1 AND store_id = $2")
        .bind(tenant)
        .bind(store)
        .bind(version)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO config_versions (tenant_id, store_id, version, publish_id, published_by, published_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant)
    .bind(store)
    .bind(version)
    .bind(publish_id)
    .bind(by)
    .bind(ts(at_ms))
    .execute(&mut **tx)
    .await?;
    let (types, ids, bodies) = columns(changes);
    sqlx::query(
        "INSERT INTO config_changes (tenant_id, store_id, version, ord, entity_type, entity_id, body)
         SELECT $1, $2, $3, ord - 1, t, id, body
         FROM unnest($4::text[], $5::text[], $6::jsonb[]) WITH ORDINALITY AS c(t, id, body, ord)",
    )
    .bind(tenant)
    .bind(store)
    .bind(version)
    .bind(&types)
    .bind(&ids)
    .bind(&bodies)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Wakes the distributor once the transaction commits.
pub async fn notify(tx: &mut Tx<'_>, tenant: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(tenant).execute(&mut **tx).await?;
    Ok(())
}

/// The changes of many versions at once, keyed by (tenant, store, version), each in order.
pub async fn changes_of(
    db: impl PgExecutor<'_>,
    keys: &[(String, String, i64)],
) -> Result<std::collections::HashMap<(String, String, i64), Vec<Change>>, sqlx::Error> {
    let ts: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let ss: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let vs: Vec<i64> = keys.iter().map(|k| k.2).collect();
    let rows = sqlx::query(
        "SELECT c.tenant_id, c.store_id, c.version, c.entity_type, c.entity_id, c.body FROM config_changes c
         JOIN UNNEST($1::text[], $2::text[], $3::bigint[]) AS p(t, s, v)
           ON c.tenant_id = p.t AND c.store_id = p.s AND c.version = p.v
         ORDER BY c.tenant_id, c.store_id, c.version, c.ord",
    )
    .bind(&ts)
    .bind(&ss)
    .bind(&vs)
    .fetch_all(db)
    .await?;
    let mut out: std::collections::HashMap<_, Vec<Change>> = std::collections::HashMap::new();
    for r in rows {
        let Some(t) = entity_type(r.get("entity_type")) else { continue };
        out.entry((r.get("tenant_id"), r.get("store_id"), r.get("version"))).or_default().push(Change {
            entity_type: t,
            id: r.get("entity_id"),
            body: r.get("body"),
        });
    }
    Ok(out)
}

/// A store's current version (0: none).
pub async fn current_version(db: impl PgExecutor<'_>, tenant: &str, store: &str) -> Result<i64, sqlx::Error> {
    let v: Option<i64> = sqlx::query_scalar("SELECT version FROM config_stores WHERE tenant_id = $1 AND store_id = $2")
        .bind(tenant)
        .bind(store)
        .fetch_optional(db)
        .await?;
    Ok(v.unwrap_or(0))
}

/// A store's configuration at `version`, folded from its stored changes (each entity's last
/// change at or below the version).
pub async fn state_at(db: impl PgExecutor<'_>, tenant: &str, store: &str, version: i64) -> Result<State, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT DISTINCT ON (entity_type, entity_id) entity_type, entity_id, body FROM config_changes
         WHERE tenant_id = $1 AND store_id = $2 AND version <= $3
         ORDER BY entity_type, entity_id, version DESC, ord DESC",
    )
    .bind(tenant)
    .bind(store)
    .bind(version)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let body: Option<Value> = r.get("body");
            Some(((entity_type(r.get("entity_type"))?, r.get("entity_id")), body?))
        })
        .collect())
}

/// A store's current effective configuration (the `config_effective` view).
pub async fn effective_state(db: impl PgExecutor<'_>, tenant: &str, store: &str) -> Result<State, sqlx::Error> {
    let rows: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT entity_type, entity_id, body FROM config_effective WHERE tenant_id = $1 AND store_id = $2",
    )
    .bind(tenant)
    .bind(store)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().filter_map(|(t, id, body)| Some(((entity_type(&t)?, id), body))).collect())
}
