//! The store's configuration in SQLite: applied one change set at a time, all or nothing, in
//! one `BEGIN IMMEDIATE` transaction that moves the entities, the change log, the applied
//! version (`bridge_state.config_revision`), the stream position and the hand-off record
//! together. A crash at any point leaves the old version or the new one. Read by the local API
//! (`GET /v1/config`, `GET /v1/config/changes`), so the POS has its configuration with NATS down.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use sqlx::sqlite::SqlitePool;
use tillsync_schemas::config::{Change, ConfigDelta, ConfigSnapshot};

use crate::now_ms;

/// Refusal codes of a delta or snapshot the bridge cannot apply ([`refuse`]).
pub const UNDECODABLE: &str = "undecodable";
pub const WRONG_STORE: &str = "wrong_store";
pub const REFUSAL_CODES: &[&str] = &[UNDECODABLE, WRONG_STORE];

/// Versions whose changes stay in the log for `changes?since=V`.
pub const LOG_VERSIONS: u64 = 200;

/// A change set to apply: a delta (the next version) or a snapshot (replaces everything).
#[derive(Debug, Clone, Copy)]
pub enum Applying<'a> {
    Delta { delta: &'a ConfigDelta, seq: u64 },
    Snapshot(&'a ConfigSnapshot),
}

impl Applying<'_> {
    pub fn version(&self) -> u64 {
        match self {
            Applying::Delta { delta, .. } => delta.version,
            Applying::Snapshot(s) => s.version,
        }
    }

    /// The stream seq the device continues after.
    fn seq(&self) -> u64 {
        match self {
            Applying::Delta { seq, .. } => *seq,
            Applying::Snapshot(s) => s.delta_seq,
        }
    }

    fn changes(&self) -> &[Change] {
        match self {
            Applying::Delta { delta, .. } => &delta.changes,
            Applying::Snapshot(s) => &s.entities,
        }
    }

    fn published_at_ms(&self) -> i64 {
        match self {
            Applying::Delta { delta, .. } => delta.published_at_ms,
            Applying::Snapshot(s) => s.published_at_ms,
        }
    }

    pub fn is_snapshot(&self) -> bool {
        matches!(self, Applying::Snapshot(_))
    }

    /// The document handed to the handler once this is committed.
    pub fn document(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "config_applied",
            "version": self.version(),
            "snapshot": self.is_snapshot(),
            "changes": self.changes(),
        })
    }
}

/// Where the device stands: applied version and the stream seq it continues after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub version: u64,
    pub seq: u64,
}

pub async fn position(pool: &SqlitePool) -> Result<Position, sqlx::Error> {
    let (v, s): (i64, i64) = sqlx::query_as("SELECT config_revision, config_delta_seq FROM bridge_state WHERE id = 1")
        .fetch_one(pool)
        .await?;
    Ok(Position { version: v as u64, seq: s as u64 })
}

/// Applies `change` if it moves the store forward: a delta only onto `version - 1`, a snapshot
/// onto anything older. Returns false (and writes nothing) otherwise. `db_path` is only for the
/// test pause hook.
pub async fn apply(pool: &SqlitePool, db_path: &Path, change: Applying<'_>) -> Result<bool, sqlx::Error> {
    let version = change.version() as i64;
    let mut tx = crate::db::begin_write(pool).await?;
    let applied: i64 =
        sqlx::query_scalar("SELECT config_revision FROM bridge_state WHERE id = 1").fetch_one(&mut *tx).await?;
    let fits = match change {
        Applying::Delta { .. } => applied + 1 == version,
        Applying::Snapshot(_) => applied < version,
    };
    if !fits {
        return Ok(false);
    }
    if change.is_snapshot() {
        sqlx::query("DELETE FROM config_entities").execute(&mut *tx).await?;
        sqlx::query("DELETE FROM config_changes").execute(&mut *tx).await?;
    }
    let changes = change.changes();
    for (ord, c) in changes.iter().enumerate() {
        if ord == changes.len() / 2 {
            pause_for_tests(db_path).await;
        }
        let body = c.body.as_ref().map(|b| b.to_string());
        match &body {
            Some(b) => {
                sqlx::query(
                    "INSERT INTO config_entities (type, id, body, version) VALUES (?, ?, ?, ?)
                     ON CONFLICT (type, id) DO UPDATE SET body = excluded.body, version = excluded.version",
                )
                .bind(c.entity_type.as_str())
                .bind(&c.id)
                .bind(b)
                .bind(version)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM config_entities WHERE type = ? AND id = ?")
                    .bind(c.entity_type.as_str())
                    .bind(&c.id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if !change.is_snapshot() {
            sqlx::query("INSERT INTO config_changes (version, ord, type, id, body) VALUES (?, ?, ?, ?, ?)")
                .bind(version)
                .bind(ord as i64)
                .bind(c.entity_type.as_str())
                .bind(&c.id)
                .bind(&body)
                .execute(&mut *tx)
                .await?;
        }
    }
    // The log answers `since` from log_from on: a snapshot restarts it, pruning moves it up.
    let keep_from = version - LOG_VERSIONS as i64;
    let log_from = if change.is_snapshot() { "?" } else { "max(config_log_from, ?)" };
    sqlx::query(&format!(
        "UPDATE bridge_state SET config_revision = ?, config_delta_seq = ?, config_log_from = {log_from} WHERE id = 1"
    ))
    .bind(version)
    .bind(change.seq() as i64)
    .bind(if change.is_snapshot() { version } else { keep_from.max(0) })
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM config_changes WHERE version <= ?").bind(keep_from).execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO config_applied (version, snapshot, document, published_at_ms, applied_at_ms) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (version) DO UPDATE SET snapshot = excluded.snapshot, document = excluded.document,
             published_at_ms = excluded.published_at_ms, applied_at_ms = excluded.applied_at_ms, handed_at_ms = NULL",
    )
    .bind(version)
    .bind(change.is_snapshot())
    .bind(change.document().to_string())
    .bind(change.published_at_ms())
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    // Handed-off records are only history; the last few are enough to look at.
    sqlx::query("DELETE FROM config_applied WHERE handed_at_ms IS NOT NULL AND version <= ?")
        .bind(keep_from)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// Debug builds only: with `TILLSYNC_EDGE_TEST_APPLY_PAUSE_MS` set, halfway through a change set
/// (inside the transaction) creates `<db>.applying` and waits, so a test can kill -9 mid-apply.
#[cfg(debug_assertions)]
async fn pause_for_tests(db_path: &Path) {
    let Some(ms) = std::env::var("TILLSYNC_EDGE_TEST_APPLY_PAUSE_MS").ok().and_then(|v| v.parse::<u64>().ok()) else {
        return;
    };
    let mut marker = db_path.as_os_str().to_owned();
    marker.push(".applying");
    let _ = std::fs::write(std::path::PathBuf::from(marker), b"");
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

#[cfg(not(debug_assertions))]
async fn pause_for_tests(_db_path: &Path) {}

/// A change set that could not be applied: kept once per stream message. True when new.
pub async fn refuse(
    pool: &SqlitePool,
    subject: &str,
    stream_seq: u64,
    code: &str,
    detail: &str,
    payload: &[u8],
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO refused_config (subject, stream_seq, code, detail, payload, at_ms) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (subject, stream_seq) DO NOTHING",
    )
    .bind(subject)
    .bind(stream_seq as i64)
    .bind(code)
    .bind(detail)
    .bind(payload)
    .bind(now_ms())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The whole configuration: `{"version": V, "entities": {type: {id: body}}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Current {
    pub version: u64,
    pub entities: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
}

pub async fn current(pool: &SqlitePool) -> Result<Current, sqlx::Error> {
    // One read transaction, so the version and the entities agree.
    let mut tx = pool.begin().await?;
    let version: i64 =
        sqlx::query_scalar("SELECT config_revision FROM bridge_state WHERE id = 1").fetch_one(&mut *tx).await?;
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT type, id, body FROM config_entities ORDER BY type, id").fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let mut entities: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    for (t, id, body) in rows {
        entities.entry(t).or_default().insert(id, parse(&body));
    }
    Ok(Current { version: version as u64, entities })
}

/// One logged change, as `GET /v1/config/changes` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedChange {
    pub version: u64,
    #[serde(rename = "type")]
    pub entity_type: String,
    pub id: String,
    pub body: Option<serde_json::Value>,
}

/// The changes after `since`, or None when the log does not reach back that far (a snapshot
/// or pruning came in between): the POS must read the whole configuration.
pub async fn changes_since(pool: &SqlitePool, since: u64) -> Result<Option<(u64, Vec<LoggedChange>)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (version, log_from): (i64, i64) =
        sqlx::query_as("SELECT config_revision, config_log_from FROM bridge_state WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
    if (since as i64) < log_from || since as i64 > version {
        return Ok(None);
    }
    let rows: Vec<(i64, String, String, Option<String>)> =
        sqlx::query_as("SELECT version, type, id, body FROM config_changes WHERE version > ? ORDER BY version, ord")
            .bind(since as i64)
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    let changes = rows
        .into_iter()
        .map(|(v, t, id, body)| LoggedChange {
            version: v as u64,
            entity_type: t,
            id,
            body: body.as_deref().map(parse),
        })
        .collect();
    Ok(Some((version as u64, changes)))
}

fn parse(body: &str) -> serde_json::Value {
    // Written by this module from a serde_json::Value, so it always parses.
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// The oldest applied change set not yet handed to the handler: (version, document).
pub async fn next_unhanded(pool: &SqlitePool) -> Result<Option<(u64, String)>, sqlx::Error> {
    let row: Option<(i64, String)> = sqlx::query_as(
        "SELECT version, document FROM config_applied WHERE handed_at_ms IS NULL ORDER BY version LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(v, d)| (v as u64, d)))
}

pub async fn mark_handed(pool: &SqlitePool, version: u64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE config_applied SET handed_at_ms = ? WHERE version = ?")
        .bind(now_ms())
        .bind(version as i64)
        .execute(pool)
        .await?;
    Ok(())
}

/// When the version applied was published, for the publish-to-applied latency.
pub async fn published_at_ms(pool: &SqlitePool, version: u64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT published_at_ms FROM config_applied WHERE version = ?")
        .bind(version as i64)
        .fetch_optional(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tillsync_schemas::config::EntityType;

    fn delta(version: u64, changes: Vec<Change>) -> ConfigDelta {
        ConfigDelta {
            schema_version: 1,
            tenant_id: "acme".into(),
            store_id: "s1".into(),
            version,
            publish_id: format!("p{version}"),
            published_by: "hq".into(),
            published_at_ms: 1,
            changes,
        }
    }

    fn tender(id: &str, name: Option<&str>) -> Change {
        Change { entity_type: EntityType::Tender, id: id.into(), body: name.map(|n| json!({"name": n})) }
    }

    #[tokio::test]
    async fn deltas_apply_in_order_snapshots_replace_and_the_log_follows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.db");
        let pool = crate::db::open(&path, false).await.unwrap();
        let d1 = delta(1, vec![tender("cash", Some("Cash")), tender("card", Some("Card"))]);
        assert!(apply(&pool, &path, Applying::Delta { delta: &d1, seq: 10 }).await.unwrap());
        // Not the next version: nothing written.
        let d3 = delta(3, vec![tender("cheque", Some("Cheque"))]);
        assert!(!apply(&pool, &path, Applying::Delta { delta: &d3, seq: 12 }).await.unwrap());
        let d2 = delta(2, vec![tender("card", None)]);
        assert!(apply(&pool, &path, Applying::Delta { delta: &d2, seq: 11 }).await.unwrap());
        assert_eq!(position(&pool).await.unwrap(), Position { version: 2, seq: 11 });
        let now = current(&pool).await.unwrap();
        assert_eq!(now.version, 2);
        assert_eq!(now.entities["tender"].keys().collect::<Vec<_>>(), vec!["cash"]);
        let (v, changes) = changes_since(&pool, 1).await.unwrap().unwrap();
        assert_eq!((v, changes.len(), changes[0].body.clone()), (2, 1, None));
        assert_eq!(changes_since(&pool, 0).await.unwrap().unwrap().1.len(), 3);

        let snap = ConfigSnapshot {
            schema_version: 1,
            tenant_id: "acme".into(),
            store_id: "s1".into(),
            version: 9,
            delta_seq: 40,
            published_at_ms: 1,
            entities: vec![tender("voucher", Some("Voucher"))],
        };
        assert!(apply(&pool, &path, Applying::Snapshot(&snap)).await.unwrap());
        assert_eq!(current(&pool).await.unwrap().entities["tender"].keys().collect::<Vec<_>>(), vec!["voucher"]);
        assert_eq!(position(&pool).await.unwrap(), Position { version: 9, seq: 40 });
        assert_eq!(changes_since(&pool, 2).await.unwrap(), None, "the log restarted at the snapshot");
        assert_eq!(changes_since(&pool, 9).await.unwrap(), Some((9, vec![])));
        // Every applied change set waits for the handler, oldest first.
        assert_eq!(next_unhanded(&pool).await.unwrap().unwrap().0, 1);
        for v in [1, 2, 9] {
            mark_handed(&pool, v).await.unwrap();
        }
        assert_eq!(next_unhanded(&pool).await.unwrap(), None);
        assert!(refuse(&pool, "s", 5, "undecodable", "x", b"?").await.unwrap());
        assert!(!refuse(&pool, "s", 5, "undecodable", "x", b"?").await.unwrap(), "kept once per message");
    }
}
