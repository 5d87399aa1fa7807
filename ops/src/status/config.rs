//! `tillsync status`, store configuration: versions head office published that are not on
//! JetStream yet, and devices running an older version than their store's. Read from Postgres
//! as the broker computes its gauges (`tillsync_config_versions_undistributed` in
//! broker/src/store_config/distribute.rs; `tillsync_config_devices_behind` and
//! `tillsync_config_drift_oldest_seconds` in drift.rs): only devices that have sent a
//! heartbeat count, as there; decommissioned devices do not (they never apply again).

use serde::Serialize;

use crate::output::table;

/// What Postgres says about configuration distribution and drift.
#[derive(Serialize, Default)]
pub struct Config {
    /// Versions committed and not yet on TILLSYNC_CONFIG.
    pub undistributed: i64,
    /// Of them, those committed longer ago than `undistributed_threshold_s`.
    pub undistributed_old: i64,
    pub undistributed_threshold_s: u64,
    /// Age of the oldest undistributed version, seconds.
    pub undistributed_oldest_s: Option<f64>,
    /// Devices below their store's version.
    pub devices_behind: i64,
    /// Of them, those lacking a version published longer ago than `drift_threshold_s`.
    pub devices_drifting: i64,
    pub drift_threshold_s: u64,
    /// Since when the longest-behind device lacks a version (the publish time of the first
    /// version above what it applied), seconds.
    pub drift_oldest_s: Option<f64>,
    /// Stores with a device behind.
    pub stores_behind: i64,
    /// Those stores, the longest behind first (at most ten).
    pub stores: Vec<StoreBehind>,
}

#[derive(Serialize, sqlx::FromRow)]
pub struct StoreBehind {
    pub tenant_id: String,
    pub store_id: String,
    /// The store's newest version: what its devices should run.
    pub version: i64,
    pub devices_behind: i64,
    /// The lowest version one of them reports applied.
    pub oldest_applied: i64,
    /// How long its longest-behind device has lacked a version, seconds.
    pub behind_s: Option<f64>,
}

/// Devices behind their store's version, one row each.
const BEHIND: &str = "WITH behind AS (
      SELECT d.tenant_id, d.store_id, c.version, d.config_revision,
             EXTRACT(EPOCH FROM now() - v.published_at)::float8 AS behind_s
      FROM devices d
      JOIN config_stores c ON c.tenant_id = d.tenant_id AND c.store_id = d.store_id
      LEFT JOIN config_versions v ON v.tenant_id = d.tenant_id AND v.store_id = d.store_id
           AND v.version = d.config_revision + 1
      WHERE d.config_revision IS NOT NULL AND d.config_revision < c.version AND d.decommissioned_at IS NULL
    )";

pub async fn read(pool: &sqlx::PgPool, undistributed_s: u64, drift_s: u64) -> Result<Config, sqlx::Error> {
    let (undistributed, undistributed_old, undistributed_oldest_s): (i64, i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE published_at < now() - make_interval(secs => $1)),
                EXTRACT(EPOCH FROM now() - min(published_at))::float8
         FROM config_versions WHERE distributed_at IS NULL",
    )
    .bind(undistributed_s as f64)
    .fetch_one(pool)
    .await?;
    let (devices_behind, devices_drifting, drift_oldest_s, stores_behind): (i64, i64, Option<f64>, i64) =
        sqlx::query_as(&format!(
            "{BEHIND} SELECT count(*), count(*) FILTER (WHERE behind_s > $1), max(behind_s),
                             count(DISTINCT (tenant_id, store_id))
             FROM behind"
        ))
        .bind(drift_s as f64)
        .fetch_one(pool)
        .await?;
    let stores = sqlx::query_as(&format!(
        "{BEHIND} SELECT tenant_id, store_id, version, count(*) AS devices_behind,
                         min(config_revision) AS oldest_applied, max(behind_s) AS behind_s
         FROM behind GROUP BY tenant_id, store_id, version
         ORDER BY max(behind_s) DESC NULLS LAST, tenant_id, store_id LIMIT $1"
    ))
    .bind(super::LISTED)
    .fetch_all(pool)
    .await?;
    Ok(Config {
        undistributed,
        undistributed_old,
        undistributed_threshold_s: undistributed_s,
        undistributed_oldest_s,
        devices_behind,
        devices_drifting,
        drift_threshold_s: drift_s,
        drift_oldest_s,
        stores_behind,
        stores,
    })
}

/// What needs a look: versions stuck before JetStream, devices lacking an old version.
pub fn problems(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if c.undistributed_old > 0 {
        out.push(format!(
            "{} configuration version(s) committed more than {} s ago are not on TILLSYNC_CONFIG (the oldest {:.0} s): \
             no device gets them; is a broker leading partition 0, and can it publish?",
            c.undistributed_old,
            c.undistributed_threshold_s,
            c.undistributed_oldest_s.unwrap_or(0.0)
        ));
    }
    if c.devices_drifting > 0 {
        let longest = c.stores.first().map(|s| {
            format!(
                " (longest: store {}/{}, {} device(s) behind version {} for {:.0} s)",
                s.tenant_id,
                s.store_id,
                s.devices_behind,
                s.version,
                s.behind_s.unwrap_or(0.0)
            )
        });
        out.push(format!(
            "{} device(s) lack a configuration version published more than {} s ago{}; `tillsync config status \
             --behind` names them",
            c.devices_drifting,
            c.drift_threshold_s,
            longest.unwrap_or_default()
        ));
    }
    out
}

pub fn human(c: &Config) -> String {
    let oldest = |s: Option<f64>| s.map(|s| format!(", the oldest {s:.0} s")).unwrap_or_default();
    let mut out = format!(
        "\nCONFIGURATION: {} version(s) undistributed{}; {} device(s) behind in {} store(s){}\n",
        c.undistributed,
        oldest(c.undistributed_oldest_s),
        c.devices_behind,
        c.stores_behind,
        c.drift_oldest_s.map(|s| format!(", the longest for {s:.0} s")).unwrap_or_default(),
    );
    let rows: Vec<Vec<String>> = c
        .stores
        .iter()
        .map(|s| {
            vec![
                format!("{}/{}", s.tenant_id, s.store_id),
                s.version.to_string(),
                s.devices_behind.to_string(),
                s.oldest_applied.to_string(),
                s.behind_s.map_or_else(|| "-".into(), |b| format!("{b:.0}")),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out += &table(&["STORE", "VERSION", "BEHIND", "OLDEST APPLIED", "SINCE S"], &rows);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(behind_s: f64) -> StoreBehind {
        StoreBehind {
            tenant_id: "acme".into(),
            store_id: "s1".into(),
            version: 5,
            devices_behind: 2,
            oldest_applied: 3,
            behind_s: Some(behind_s),
        }
    }

    #[test]
    fn only_old_undistributed_versions_and_old_drift_are_problems() {
        let young = Config {
            undistributed: 1,
            undistributed_threshold_s: 60,
            undistributed_oldest_s: Some(0.4),
            devices_behind: 2,
            drift_threshold_s: 900,
            drift_oldest_s: Some(12.0),
            stores_behind: 1,
            stores: vec![store(12.0)],
            ..Default::default()
        };
        assert!(problems(&young).is_empty());
        let old = Config { undistributed_old: 1, devices_drifting: 2, stores: vec![store(1000.0)], ..young };
        let p = problems(&old);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("1 configuration version(s) committed more than 60 s ago"), "{p:?}");
        assert!(p[1].contains("2 device(s) lack a configuration version published more than 900 s ago"), "{p:?}");
        assert!(p[1].contains("store acme/s1, 2 device(s) behind version 5 for 1000 s"), "{p:?}");
    }

    #[test]
    fn stores_behind_are_listed() {
        let c = Config { devices_behind: 2, stores_behind: 1, stores: vec![store(12.0)], ..Default::default() };
        let text = human(&c);
        assert!(text.contains("CONFIGURATION: 0 version(s) undistributed; 2 device(s) behind in 1 store(s)"), "{text}");
        assert!(text.contains("acme/s1  5        2       3               12"), "{text}");
    }
}
