//! `tillsync status`, partitions: which broker instance owns which partitions (Postgres'
//! `partition_owners`, the fence the broker's commits check), each partition's lag (its four
//! consumers in JetStream), and the partitions nobody works on: no owner, or an owner that
//! stopped reporting. Their stores' messages wait in JetStream until an instance takes them.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::output::{table, ts};
use crate::partitions::{ranges, CONSUMERS};

/// An owner is silent once its last report is older than the lease TTL plus this: the broker
/// reports every 2 s, so two missed reports and some clock skew fit in it.
pub const SILENT_MARGIN_S: u64 = 5;

/// A partition's current owner, from Postgres. One that gave the partition up because it
/// could not renew its lease (`lost_at`) owns it no longer: the partition is unowned.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OwnerRow {
    pub partition: i32,
    pub epoch: i64,
    pub instance_id: String,
    pub acquired_at: DateTime<Utc>,
    /// `broker_instances.last_seen` of the owner; `None` when it has no row (it stopped).
    pub last_seen: Option<DateTime<Utc>>,
    /// It reported within the lease TTL plus [`SILENT_MARGIN_S`].
    pub reporting: bool,
}

/// A broker instance from `broker_instances`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InstanceRow {
    pub instance_id: String,
    pub last_seen: DateTime<Utc>,
    /// It reported within the lease TTL plus [`SILENT_MARGIN_S`].
    pub reporting: bool,
}

/// What Postgres says about partitions.
#[derive(Debug, Default)]
pub struct DbPartitions {
    /// `partition_settings.partitions`; `None` before a partitioned broker first ran.
    pub count: Option<u16>,
    pub owners: Vec<OwnerRow>,
    pub instances: Vec<InstanceRow>,
}

pub async fn read(pool: &sqlx::PgPool, silent_after_s: u64) -> Result<DbPartitions, sqlx::Error> {
    let count = crate::partitions::count(pool).await?;
    let instances = sqlx::query_as(
        "SELECT instance_id, last_seen, last_seen > now() - make_interval(secs => $1) AS reporting
         FROM broker_instances ORDER BY instance_id",
    )
    .bind(silent_after_s as f64)
    .fetch_all(pool)
    .await?;
    let owners = sqlx::query_as(
        "SELECT o.partition, o.epoch, o.instance_id, o.acquired_at, b.last_seen,
                coalesce(b.last_seen > now() - make_interval(secs => $1), false) AS reporting
         FROM partition_owners o LEFT JOIN broker_instances b USING (instance_id)
         WHERE o.released_at IS NULL AND o.lost_at IS NULL ORDER BY o.partition",
    )
    .bind(silent_after_s as f64)
    .fetch_all(pool)
    .await?;
    Ok(DbPartitions { count, owners, instances })
}

/// What JetStream says: each partition's lag summed over the broker's consumers, and which
/// partition consumers exist per (stream, base name).
#[derive(Debug, Default)]
pub struct JsPartitions {
    pub lag: BTreeMap<u16, u64>,
    pub present: BTreeMap<&'static str, BTreeSet<u16>>,
}

#[derive(Serialize, Default)]
pub struct Partitions {
    /// The partition count (Postgres'; else the highest partition consumer + 1; 0 when unknown).
    pub count: u16,
    /// An owner is silent when it has not reported for this long (lease TTL + margin), seconds.
    pub silent_after_s: u64,
    pub instances: Vec<Holder>,
    pub partitions: Vec<PartitionStatus>,
    /// Partitions with no current owner.
    pub unowned: Vec<u16>,
    /// Partitions whose owner has not reported for `silent_after_s`.
    pub silent: Vec<u16>,
    /// Owned partitions without their consumer, as `<stream>/<base> (partitions 0-3,8)`.
    pub missing_consumers: Vec<String>,
}

/// A broker instance and the partitions it owns.
#[derive(Serialize)]
pub struct Holder {
    pub instance_id: String,
    pub partitions: Vec<u16>,
    /// `partitions` as ranges, `0-3,8`.
    pub ranges: String,
    /// Summed over its partitions; `None` when NATS did not answer.
    pub lag: Option<u64>,
    pub last_seen: Option<DateTime<Utc>>,
    pub reporting: bool,
}

#[derive(Serialize)]
pub struct PartitionStatus {
    pub partition: u16,
    pub owner: Option<String>,
    pub epoch: Option<i64>,
    pub acquired_at: Option<DateTime<Utc>>,
    pub lag: Option<u64>,
}

/// Puts the facts together. `db` is `None` when Postgres did not answer, `js` when NATS did not.
pub fn assemble(db: Option<&DbPartitions>, js: Option<&JsPartitions>, silent_after_s: u64) -> Partitions {
    let seen_in_js = js.and_then(|j| j.present.values().flatten().max()).map_or(0, |p| p + 1);
    let count = db.and_then(|d| d.count).unwrap_or(seen_in_js);
    let lag = |p: u16| js.map(|j| j.lag.get(&p).copied().unwrap_or(0));
    let owners: BTreeMap<u16, &OwnerRow> = db
        .map(|d| d.owners.iter().filter_map(|o| Some((u16::try_from(o.partition).ok()?, o))).collect())
        .unwrap_or_default();
    let mut out = Partitions { count, silent_after_s, ..Partitions::default() };
    let mut missing: BTreeMap<(&str, &str), Vec<u16>> = BTreeMap::new();
    // Every instance, those owning nothing included; an owner with no row (it stopped) joins below.
    let mut holders: BTreeMap<&str, Holder> = db
        .iter()
        .flat_map(|d| &d.instances)
        .map(|i| (i.instance_id.as_str(), holder(&i.instance_id, Some(i.last_seen), i.reporting, js.is_some())))
        .collect();
    for p in 0..count {
        let owner = owners.get(&p);
        out.partitions.push(PartitionStatus {
            partition: p,
            owner: owner.map(|o| o.instance_id.clone()),
            epoch: owner.map(|o| o.epoch),
            acquired_at: owner.map(|o| o.acquired_at),
            lag: lag(p),
        });
        let Some(o) = owner else {
            // Without Postgres nobody is known to own anything; that is its own problem.
            if db.is_some() {
                out.unowned.push(p);
            }
            continue;
        };
        let h = holders
            .entry(o.instance_id.as_str())
            .or_insert_with(|| holder(&o.instance_id, o.last_seen, o.reporting, js.is_some()));
        h.partitions.push(p);
        h.lag = h.lag.zip(lag(p)).map(|(a, b)| a + b);
        if !o.reporting {
            out.silent.push(p);
        }
        for (stream, base) in CONSUMERS {
            if js.is_some_and(|j| !j.present.get(base).is_some_and(|s| s.contains(&p))) {
                missing.entry((stream, base)).or_default().push(p);
            }
        }
    }
    out.missing_consumers = missing
        .into_iter()
        .map(|((stream, base), ps)| format!("{stream}/{base} (partitions {})", ranges(&ps)))
        .collect();
    out.instances = holders
        .into_values()
        .map(|mut h| {
            h.ranges = ranges(&h.partitions);
            h
        })
        .collect();
    out
}

fn holder(id: &str, last_seen: Option<DateTime<Utc>>, reporting: bool, lag_known: bool) -> Holder {
    Holder {
        instance_id: id.into(),
        partitions: Vec::new(),
        ranges: String::new(),
        lag: lag_known.then_some(0),
        last_seen,
        reporting,
    }
}

/// What needs a look: partitions nobody works on, and owned partitions a consumer is missing for.
pub fn problems(p: &Partitions) -> Vec<String> {
    let mut out = Vec::new();
    if !p.unowned.is_empty() {
        out.push(format!(
            "{} partition(s) have no owner: {} (their stores' messages wait in JetStream)",
            p.unowned.len(),
            ranges(&p.unowned)
        ));
    }
    for h in p.instances.iter().filter(|h| !h.reporting && !h.partitions.is_empty()) {
        out.push(format!(
            "partition(s) {} are owned by {}, which has not reported for over {} s (last seen {})",
            h.ranges,
            h.instance_id,
            p.silent_after_s,
            ts(h.last_seen)
        ));
    }
    if !p.missing_consumers.is_empty() {
        out.push(format!("owned partitions without their consumer: {}", p.missing_consumers.join(", ")));
    }
    out
}

pub fn human(p: &Partitions) -> String {
    let mut out = format!("\nPARTITIONS: {}\n", p.count);
    let show = |lag: Option<u64>| lag.map_or_else(|| "-".into(), |l| l.to_string());
    let rows: Vec<Vec<String>> = p
        .instances
        .iter()
        .map(|h| {
            vec![
                h.instance_id.clone(),
                if h.ranges.is_empty() { "-".into() } else { h.ranges.clone() },
                show(h.lag),
                ts(h.last_seen),
                if h.reporting { "reporting" } else { "SILENT" }.into(),
            ]
        })
        .collect();
    out += &table(&["INSTANCE", "PARTITIONS", "LAG", "LAST SEEN", "STATE"], &rows);
    if !p.unowned.is_empty() {
        let lag = p.partitions.iter().filter(|s| s.owner.is_none()).filter_map(|s| s.lag).sum::<u64>();
        out += &format!("unowned: {} (lag {lag})\n", ranges(&p.unowned));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(partition: i32, id: &str, reporting: bool) -> OwnerRow {
        OwnerRow {
            partition,
            epoch: 1,
            instance_id: id.into(),
            acquired_at: Utc::now(),
            last_seen: reporting.then(Utc::now),
            reporting,
        }
    }

    fn js(count: u16, lag_each: u64) -> JsPartitions {
        let all: BTreeSet<u16> = (0..count).collect();
        JsPartitions {
            lag: (0..count).map(|p| (p, lag_each)).collect(),
            present: CONSUMERS.iter().map(|(_, base)| (*base, all.clone())).collect(),
        }
    }

    #[test]
    fn owners_are_grouped_with_their_ranges_and_lag() {
        let db = DbPartitions {
            count: Some(8),
            owners: vec![owner(0, "b1", true), owner(1, "b1", true), owner(2, "b1", true), owner(5, "b2", true)],
            instances: vec![InstanceRow { instance_id: "b3".into(), last_seen: Utc::now(), reporting: true }],
        };
        let p = assemble(Some(&db), Some(&js(8, 10)), 10);
        let got: Vec<_> = p.instances.iter().map(|h| (h.instance_id.as_str(), h.ranges.as_str(), h.lag)).collect();
        assert_eq!(got, [("b1", "0-2", Some(30)), ("b2", "5", Some(10)), ("b3", "", Some(0))]);
        assert_eq!(p.unowned, [3, 4, 6, 7]);
        let problems = problems(&p);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("4 partition(s) have no owner: 3-4,6-7"), "{problems:?}");
        assert!(human(&p).contains("unowned: 3-4,6-7 (lag 40)"), "{}", human(&p));
    }

    #[test]
    fn a_silent_owner_and_a_missing_consumer_are_problems() {
        let db = DbPartitions {
            count: Some(2),
            owners: vec![owner(0, "b1", true), owner(1, "gone", false)],
            instances: Vec::new(),
        };
        let mut j = js(2, 0);
        j.present.get_mut(tillsync_schemas::streams::BROKER_ACKS_CONSUMER).unwrap().remove(&0);
        let p = assemble(Some(&db), Some(&j), 10);
        assert_eq!(p.silent, [1]);
        let problems = problems(&p);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("partition(s) 1 are owned by gone, which has not reported for over 10 s"));
        assert_eq!(
            problems[1],
            "owned partitions without their consumer: TILLSYNC_COMMAND_ACKS/broker-acks (partitions 0)"
        );
    }

    #[test]
    fn all_owned_and_reporting_is_healthy_and_without_postgres_nothing_is_unowned() {
        let db = DbPartitions {
            count: Some(2),
            owners: vec![owner(0, "b1", true), owner(1, "b1", true)],
            instances: Vec::new(),
        };
        assert!(problems(&assemble(Some(&db), Some(&js(2, 0)), 10)).is_empty());
        let blind = assemble(None, Some(&js(4, 1)), 10);
        assert_eq!((blind.count, blind.unowned.len()), (4, 0));
        assert!(problems(&blind).is_empty());
    }
}
