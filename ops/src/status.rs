//! `tillsync status`: NATS and Postgres reachability, streams (bytes against their limit), the
//! broker's consumers (each summed over its partitions), broker instances and their resident
//! actors, which instance owns which partitions and their lag, devices online per tenant,
//! quarantine size, open device gaps, stalled watermarks and store configuration (versions
//! not distributed, devices behind: [`config`]). Exit code 3 when something needs a look; the
//! checks and their thresholds are listed in docs/operations.md. Each server gets
//! `--timeout-s` to answer, so an unreachable one is reported, not waited for; what was not
//! read is shown as unknown, never as 0.

mod config;
mod partitions;

use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;
use tillsync_schemas::streams as names;

use crate::global::Global;
use crate::output::{emit, table, ts};
use crate::partitions::{Backlog, CONSUMERS};
use partitions::{DbPartitions, JsPartitions, Partitions};

/// A broker instance counts as alive when it reported this recently (it reports every 2 s).
const ALIVE_WITHIN_S: i64 = 30;
/// Open gaps and stalled devices listed by name (the counts cover all of them).
const LISTED: i64 = 10;
/// A gap row `g` of a device not decommissioned: a decommissioned till's gaps never fill, and
/// are no problem.
const LIVE_DEVICE: &str = "NOT EXISTS (SELECT 1 FROM devices d WHERE d.tenant_id = g.tenant_id
    AND d.store_id = g.store_id AND d.device_id = g.device_id AND d.decommissioned_at IS NOT NULL)";

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// An open gap in a device's seqs older than this is a problem, seconds.
    #[arg(long, default_value_t = 300)]
    gap_age_s: u64,
    /// A device's watermark that has waited longer than this for a seq its bridge reported
    /// acked by JetStream is stalled, a problem, seconds.
    #[arg(long, default_value_t = 120)]
    stall_s: u64,
    /// A stream holding more than this share of its byte limit is a problem (at the limit
    /// JetStream refuses new messages).
    #[arg(long, default_value_t = 0.8)]
    stream_fill: f64,
    /// How long NATS, and Postgres, each get to answer, seconds.
    #[arg(long, default_value_t = 10)]
    timeout_s: u64,
    /// The brokers' partition lease TTL, seconds: an owner that has not reported for this
    /// plus 5 s has lost its lease, and its partitions wait for another instance.
    #[arg(long, env = "TILLSYNC_LEASE_TTL_S", default_value_t = 5)]
    lease_ttl_s: u64,
    /// A configuration version committed longer ago than this and not yet on TILLSYNC_CONFIG
    /// is a problem (the broker leading partition 0 distributes within a second), seconds.
    #[arg(long, default_value_t = 60)]
    config_undistributed_s: u64,
    /// A device lacking a configuration version published longer ago than this is a problem
    /// (as the alert TillsyncConfigDrift), seconds.
    #[arg(long, default_value_t = 900)]
    config_drift_s: u64,
}

#[derive(Serialize, Default)]
struct Status {
    nats: Reach,
    postgres: Reach,
    streams: Vec<StreamStatus>,
    consumers: Vec<ConsumerStatus>,
    brokers: Vec<BrokerRow>,
    resident_actors: i64,
    partitions: Partitions,
    tenants: Vec<TenantDevices>,
    /// These three are read from Postgres: `null` when it did not answer, never a 0 that
    /// nobody read.
    quarantined: Option<i64>,
    gaps: Option<Gaps>,
    watermarks: Option<Watermarks>,
    /// Store configuration, from Postgres: `null` when it did not answer.
    config: Option<config::Config>,
    problems: Vec<String>,
}

/// Whether a server answered; `error` says why not, `hint` what to do about it.
#[derive(Serialize, Default)]
struct Reach {
    reachable: bool,
    error: Option<String>,
    hint: Option<String>,
}

#[derive(Serialize)]
struct StreamStatus {
    name: String,
    messages: u64,
    bytes: u64,
    /// The stream's byte limit; 0 for none.
    max_bytes: u64,
    /// `bytes / max_bytes`, when there is a limit.
    fill: Option<f64>,
    first_seq: u64,
    last_seq: u64,
    consumers: usize,
}

/// One of the broker's consumers, summed over its partition consumers (`<name>-p<N>`).
#[derive(Serialize)]
struct ConsumerStatus {
    stream: String,
    name: String,
    /// `consumers` says how many partition consumers were summed.
    #[serde(flatten)]
    backlog: Backlog,
}

#[derive(Serialize, sqlx::FromRow)]
struct BrokerRow {
    instance_id: String,
    host: String,
    started_at: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    resident_actors: i64,
    alive: bool,
}

#[derive(Serialize, sqlx::FromRow)]
struct TenantDevices {
    tenant_id: String,
    online: i64,
    offline: i64,
}

/// Open gaps in device seqs: all counted, the oldest listed.
#[derive(Serialize, Default)]
struct Gaps {
    open: i64,
    older_than_threshold: i64,
    threshold_s: u64,
    oldest_age_s: Option<f64>,
    oldest: Vec<GapRow>,
}

#[derive(Serialize, sqlx::FromRow)]
struct GapRow {
    tenant_id: String,
    store_id: String,
    device_id: String,
    from_seq: i64,
    to_seq: i64,
    age_s: f64,
}

/// Devices whose watermark has waited longer than the threshold: all counted, the longest listed.
#[derive(Serialize, Default)]
struct Watermarks {
    stalled: i64,
    threshold_s: u64,
    longest: Vec<StallRow>,
}

#[derive(Serialize, sqlx::FromRow)]
struct StallRow {
    tenant_id: String,
    store_id: String,
    device_id: String,
    watermark: i64,
    waiting_for_seq: i64,
    waiting_s: f64,
}

const STREAMS: &[&str] = &[
    names::EVENTS,
    names::HEARTBEATS,
    names::INTAKE,
    names::COMMANDS,
    names::COMMAND_ACKS,
    names::STATUS,
    names::WATERMARKS,
    names::CONFIG,
    names::CONFIG_SNAPSHOTS,
];

pub async fn run(args: StatusArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let within = Duration::from_secs(args.timeout_s);
    let silent_after_s = args.lease_ttl_s + partitions::SILENT_MARGIN_S;
    let mut status = Status::default();
    let (nats, db) = tokio::join!(
        tokio::time::timeout(within, jetstream(&global.nats)),
        tokio::time::timeout(within, database(global, &args, silent_after_s))
    );
    let (mut js_parts, mut db_parts) = (None, None);
    match flatten(nats, within, &global.database_url) {
        Ok(js) => {
            status.nats.reachable = true;
            (status.streams, status.consumers) = (js.streams, js.consumers);
            status.problems.extend(js.missing);
            js_parts = Some(js.partitions);
        }
        Err((e, hint)) => {
            // The URL once: the connect error starts with it too.
            let url = &global.nats.nats_url;
            let e = e.strip_prefix(&format!("cannot connect to NATS at {url}: ")).map_or(e.clone(), str::to_string);
            status.problems.push(with_hint(format!("NATS unreachable at {url}: {e}"), &hint));
            (status.nats.error, status.nats.hint) = (Some(e), hint);
        }
    }
    match flatten(db, within, &global.database_url) {
        Ok(db) => {
            status.postgres.reachable = true;
            (status.brokers, status.tenants, status.quarantined) = (db.brokers, db.tenants, Some(db.quarantined));
            (status.gaps, status.watermarks, status.config) = (Some(db.gaps), Some(db.watermarks), Some(db.config));
            status.resident_actors = status.brokers.iter().filter(|b| b.alive).map(|b| b.resident_actors).sum();
            db_parts = Some(db.partitions);
        }
        Err((e, hint)) => {
            status.problems.push(with_hint(format!("Postgres: {e}"), &hint));
            (status.postgres.error, status.postgres.hint) = (Some(e), hint);
        }
    }
    status.partitions = partitions::assemble(db_parts.as_ref(), js_parts.as_ref(), silent_after_s);
    let found = problems(&status, args.stream_fill);
    status.problems.extend(found);
    emit(global.json, &status, human)?;
    Ok(if status.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// A bounded call's outcome: the error as one line (each cause once) and the fix, if known.
fn flatten<T>(
    r: Result<anyhow::Result<T>, tokio::time::error::Elapsed>,
    within: Duration,
    database_url: &str,
) -> Result<T, (String, Option<String>)> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let f = crate::failure::Failure::of(&e, database_url);
            Err((f.message, f.hint))
        }
        Err(_) => Err((format!("no answer within {} s", within.as_secs()), None)),
    }
}

fn with_hint(problem: String, hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!("{problem}; hint: {h}"),
        None => problem,
    }
}

struct JsFacts {
    streams: Vec<StreamStatus>,
    consumers: Vec<ConsumerStatus>,
    partitions: JsPartitions,
    /// Streams that are missing.
    missing: Vec<String>,
}

/// Streams and the broker's consumers, and which streams are missing. A consumer missing for
/// an owned partition is found when the owners are known ([`partitions::assemble`]).
async fn jetstream(nats: &crate::global::NatsArgs) -> anyhow::Result<JsFacts> {
    let js = async_nats::jetstream::new(nats.connect().await?);
    let mut missing = Vec::new();
    let mut streams = Vec::new();
    for name in STREAMS {
        match js.get_stream(*name).await {
            Ok(s) => {
                let info = s.cached_info();
                let (st, max) = (&info.state, info.config.max_bytes.max(0) as u64);
                streams.push(StreamStatus {
                    name: name.to_string(),
                    messages: st.messages,
                    bytes: st.bytes,
                    max_bytes: max,
                    fill: (max > 0).then(|| st.bytes as f64 / max as f64),
                    first_seq: st.first_sequence,
                    last_seq: st.last_sequence,
                    consumers: st.consumer_count,
                });
            }
            Err(e) => missing.push(format!("stream {name} unavailable: {e}")),
        }
    }
    let mut consumers = Vec::new();
    let mut parts = JsPartitions::default();
    for (stream, base) in CONSUMERS {
        if !streams.iter().any(|s| s.name == stream) {
            continue;
        }
        let found = crate::partitions::consumers(&js, stream, base).await?;
        for (p, info) in &found {
            *parts.lag.entry(*p).or_default() += Backlog::of([info]).lag();
        }
        parts.present.insert(base, found.keys().copied().collect());
        consumers.push(ConsumerStatus {
            stream: stream.into(),
            name: base.into(),
            backlog: Backlog::of(found.values()),
        });
    }
    Ok(JsFacts { streams, consumers, partitions: parts, missing })
}

struct DbFacts {
    brokers: Vec<BrokerRow>,
    tenants: Vec<TenantDevices>,
    quarantined: i64,
    gaps: Gaps,
    watermarks: Watermarks,
    config: config::Config,
    partitions: DbPartitions,
}

async fn database(global: &Global, args: &StatusArgs, silent_after_s: u64) -> anyhow::Result<DbFacts> {
    let pool = global.pool().await?;
    let brokers = sqlx::query_as(
        "SELECT instance_id, host, started_at, last_seen, resident_actors,
                last_seen > now() - make_interval(secs => $1) AS alive
         FROM broker_instances ORDER BY instance_id",
    )
    .bind(ALIVE_WITHIN_S as f64)
    .fetch_all(&pool)
    .await?;
    let tenants = sqlx::query_as(
        "SELECT tenant_id, count(*) FILTER (WHERE online) AS online, count(*) FILTER (WHERE NOT online) AS offline
         FROM devices WHERE decommissioned_at IS NULL GROUP BY tenant_id ORDER BY tenant_id",
    )
    .fetch_all(&pool)
    .await?;
    // Pending only: redriven and dismissed messages are dealt with.
    let quarantined: i64 = sqlx::query_scalar("SELECT count(*) FROM quarantine_pending").fetch_one(&pool).await?;
    let gaps = gaps(&pool, args.gap_age_s).await?;
    let watermarks = stalls(&pool, args.stall_s).await?;
    let config = config::read(&pool, args.config_undistributed_s, args.config_drift_s).await?;
    let partitions = partitions::read(&pool, silent_after_s).await?;
    pool.close().await;
    Ok(DbFacts { brokers, tenants, quarantined, gaps, watermarks, config, partitions })
}

async fn gaps(pool: &sqlx::PgPool, threshold_s: u64) -> Result<Gaps, sqlx::Error> {
    let (open, older_than_threshold, oldest_age_s): (i64, i64, Option<f64>) = sqlx::query_as(&format!(
        "SELECT count(*), count(*) FILTER (WHERE detected_at < now() - make_interval(secs => $1)),
                EXTRACT(EPOCH FROM now() - min(detected_at))::float8
         FROM device_gaps g WHERE filled_at IS NULL AND {LIVE_DEVICE}"
    ))
    .bind(threshold_s as f64)
    .fetch_one(pool)
    .await?;
    let oldest = sqlx::query_as(&format!(
        "SELECT tenant_id, store_id, device_id, from_seq, to_seq, EXTRACT(EPOCH FROM now() - detected_at)::float8 AS age_s
         FROM device_gaps g WHERE filled_at IS NULL AND {LIVE_DEVICE} ORDER BY detected_at LIMIT $1"
    ))
    .bind(LISTED)
    .fetch_all(pool)
    .await?;
    Ok(Gaps { open, older_than_threshold, threshold_s, oldest_age_s, oldest })
}

async fn stalls(pool: &sqlx::PgPool, threshold_s: u64) -> Result<Watermarks, sqlx::Error> {
    let waiting = "watermark_wait_since < now() - make_interval(secs => $1) AND decommissioned_at IS NULL";
    let stalled: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM devices WHERE {waiting}"))
        .bind(threshold_s as f64)
        .fetch_one(pool)
        .await?;
    let longest = sqlx::query_as(&format!(
        "SELECT tenant_id, store_id, device_id, watermark, watermark_wait_seq AS waiting_for_seq,
                EXTRACT(EPOCH FROM now() - watermark_wait_since)::float8 AS waiting_s
         FROM devices WHERE {waiting} ORDER BY watermark_wait_since LIMIT $2"
    ))
    .bind(threshold_s as f64)
    .bind(LISTED)
    .fetch_all(pool)
    .await?;
    Ok(Watermarks { stalled, threshold_s, longest })
}

/// What needs a look, from the facts gathered (reachability problems are added as found).
fn problems(s: &Status, stream_fill: f64) -> Vec<String> {
    let mut out = Vec::new();
    for x in &s.streams {
        if let Some(fill) = x.fill.filter(|f| *f >= stream_fill) {
            out.push(format!(
                "stream {} is {:.0} % full ({} of {} bytes); at its limit JetStream refuses new messages",
                x.name,
                fill * 100.0,
                x.bytes,
                x.max_bytes
            ));
        }
    }
    if s.postgres.reachable && !s.brokers.iter().any(|b| b.alive) {
        out.push(format!("no broker instance reported in the last {ALIVE_WITHIN_S} s"));
    }
    out.extend(partitions::problems(&s.partitions));
    if let Some(g) = s.gaps.as_ref().filter(|g| g.older_than_threshold > 0) {
        let first = g.oldest.first().map(|r| {
            format!(" (oldest: {}/{}/{} seq {}..{})", r.tenant_id, r.store_id, r.device_id, r.from_seq, r.to_seq)
        });
        out.push(format!(
            "{} open gap(s) older than {} s, the oldest {:.0} s{}",
            g.older_than_threshold,
            g.threshold_s,
            g.oldest_age_s.unwrap_or(0.0),
            first.unwrap_or_default()
        ));
    }
    if let Some(w) = s.watermarks.as_ref().filter(|w| w.stalled > 0) {
        let first = w.longest.first().map(|r| {
            format!(
                " (longest: {}/{}/{} at {} waits for {} since {:.0} s)",
                r.tenant_id, r.store_id, r.device_id, r.watermark, r.waiting_for_seq, r.waiting_s
            )
        });
        out.push(format!(
            "{} device watermark(s) stalled longer than {} s{}",
            w.stalled,
            w.threshold_s,
            first.unwrap_or_default()
        ));
    }
    out.extend(s.config.iter().flat_map(config::problems));
    out
}

fn human(s: &Status) -> String {
    // Why not is said once, in its PROBLEM line.
    let reach = |r: &Reach| if r.error.is_none() { "reachable" } else { "UNREACHABLE (see PROBLEM below)" };
    let mut out = format!("NATS: {}\nPostgres: {}\n\nSTREAMS\n", reach(&s.nats), reach(&s.postgres));
    let rows: Vec<Vec<String>> = s
        .streams
        .iter()
        .map(|x| {
            vec![
                x.name.clone(),
                x.messages.to_string(),
                x.bytes.to_string(),
                if x.max_bytes > 0 { x.max_bytes.to_string() } else { "-".into() },
                x.fill.map(|f| format!("{:.1} %", f * 100.0)).unwrap_or_else(|| "-".into()),
                x.first_seq.to_string(),
                x.last_seq.to_string(),
                x.consumers.to_string(),
            ]
        })
        .collect();
    out += &table(&["NAME", "MESSAGES", "BYTES", "LIMIT", "FULL", "FIRST", "LAST", "CONSUMERS"], &rows);
    out += "\nCONSUMERS\n";
    let rows: Vec<Vec<String>> = s
        .consumers
        .iter()
        .map(|c| {
            let b = &c.backlog;
            vec![
                format!("{}/{}-p*", c.stream, c.name),
                b.consumers.to_string(),
                b.num_pending.to_string(),
                b.num_ack_pending.to_string(),
                b.num_redelivered.to_string(),
            ]
        })
        .collect();
    out += &table(&["CONSUMER", "PARTITIONS", "PENDING", "ACK PENDING", "REDELIVERED"], &rows);
    out += "\nBROKERS\n";
    let rows: Vec<Vec<String>> = s
        .brokers
        .iter()
        .map(|b| {
            vec![
                b.instance_id.clone(),
                b.host.clone(),
                ts(Some(b.started_at)),
                ts(Some(b.last_seen)),
                b.resident_actors.to_string(),
                if b.alive { "alive" } else { "gone" }.into(),
            ]
        })
        .collect();
    out += &table(&["INSTANCE", "HOST", "STARTED", "LAST SEEN", "ACTORS", "STATE"], &rows);
    out += &format!("resident actors: {}\n", s.resident_actors);
    out += &partitions::human(&s.partitions);
    out += "\nDEVICES\n";
    let rows: Vec<Vec<String>> =
        s.tenants.iter().map(|t| vec![t.tenant_id.clone(), t.online.to_string(), t.offline.to_string()]).collect();
    out += &table(&["TENANT", "ONLINE", "OFFLINE"], &rows);
    out += &gaps_and_stalls(s);
    out += &s.config.as_ref().map_or_else(|| format!("\nCONFIGURATION: {UNKNOWN}\n"), config::human);
    out += &format!("\nquarantined messages pending: {}\n", known(s.quarantined));
    for p in &s.problems {
        out += &format!("PROBLEM: {p}\n");
    }
    out
}

/// A count read from Postgres, or "unknown" when it was not read.
fn known(n: Option<i64>) -> String {
    n.map_or_else(|| UNKNOWN.to_string(), |n| n.to_string())
}

const UNKNOWN: &str = "unknown (Postgres did not answer)";

fn gaps_and_stalls(s: &Status) -> String {
    let (Some(g), Some(w)) = (&s.gaps, &s.watermarks) else {
        return format!("\nOPEN GAPS: {UNKNOWN}\n\nSTALLED WATERMARKS: {UNKNOWN}\n");
    };
    let oldest = g.oldest_age_s.map(|a| format!(", the oldest {a:.0} s")).unwrap_or_default();
    let mut out =
        format!("\nOPEN GAPS: {}{oldest}; {} older than {} s\n", g.open, g.older_than_threshold, g.threshold_s);
    let rows: Vec<Vec<String>> = g
        .oldest
        .iter()
        .map(|r| {
            vec![
                format!("{}/{}/{}", r.tenant_id, r.store_id, r.device_id),
                format!("{}..{}", r.from_seq, r.to_seq),
                format!("{:.0}", r.age_s),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out += &table(&["DEVICE", "MISSING SEQS", "AGE S"], &rows);
    }
    out += &format!("\nSTALLED WATERMARKS (waiting > {} s): {}\n", w.threshold_s, w.stalled);
    let rows: Vec<Vec<String>> = w
        .longest
        .iter()
        .map(|r| {
            vec![
                format!("{}/{}/{}", r.tenant_id, r.store_id, r.device_id),
                r.watermark.to_string(),
                r.waiting_for_seq.to_string(),
                format!("{:.0}", r.waiting_s),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out += &table(&["DEVICE", "WATERMARK", "WAITS FOR", "SINCE S"], &rows);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(name: &str, bytes: u64, max_bytes: u64) -> StreamStatus {
        let fill = (max_bytes > 0).then(|| bytes as f64 / max_bytes as f64);
        StreamStatus { name: name.into(), messages: 1, bytes, max_bytes, fill, first_seq: 1, last_seq: 1, consumers: 1 }
    }

    fn healthy() -> Status {
        let mut s = Status::default();
        s.postgres.reachable = true;
        s.brokers.push(BrokerRow {
            instance_id: "b".into(),
            host: "h".into(),
            started_at: Utc::now(),
            last_seen: Utc::now(),
            resident_actors: 0,
            alive: true,
        });
        s
    }

    #[test]
    fn a_stream_past_its_fill_threshold_is_named() {
        let mut s = healthy();
        s.streams = vec![stream("TILLSYNC_EVENTS", 81, 100), stream("TILLSYNC_STATUS", 10_000, 0)];
        let p = problems(&s, 0.8);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("stream TILLSYNC_EVENTS is 81 % full (81 of 100 bytes)"), "{p:?}");
        assert!(problems(&s, 0.9).is_empty());
    }

    #[test]
    fn only_gaps_past_the_threshold_and_stalls_are_problems() {
        let mut s = healthy();
        let gaps =
            Gaps { open: 2, older_than_threshold: 0, threshold_s: 300, oldest_age_s: Some(12.0), oldest: vec![] };
        s.gaps = Some(gaps);
        s.watermarks = Some(Watermarks::default());
        assert!(problems(&s, 0.8).is_empty());
        s.gaps.as_mut().unwrap().older_than_threshold = 1;
        s.watermarks.as_mut().unwrap().stalled = 1;
        let p = problems(&s, 0.8);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("1 open gap(s) older than 300 s"), "{p:?}");
        assert!(p[1].starts_with("1 device watermark(s) stalled"), "{p:?}");
    }

    #[test]
    fn the_configuration_streams_are_checked_with_the_others() {
        assert!(STREAMS.contains(&names::CONFIG) && STREAMS.contains(&names::CONFIG_SNAPSHOTS));
    }

    #[test]
    fn configuration_problems_join_the_others() {
        let mut s = healthy();
        s.config = Some(config::Config { undistributed_old: 2, ..Default::default() });
        let p = problems(&s, 0.8);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("2 configuration version(s) committed"), "{p:?}");
    }

    #[test]
    fn no_broker_is_a_problem_only_when_postgres_answered() {
        let mut s = healthy();
        s.brokers.clear();
        assert_eq!(problems(&s, 0.8).len(), 1);
        s.postgres.reachable = false;
        assert!(problems(&s, 0.8).is_empty());
    }

    #[test]
    fn what_postgres_did_not_answer_is_unknown_not_zero() {
        let mut s = Status::default();
        s.postgres.error = Some("connection refused".into());
        let text = human(&s);
        assert!(text.contains("OPEN GAPS: unknown (Postgres did not answer)"), "{text}");
        assert!(text.contains("STALLED WATERMARKS: unknown"), "{text}");
        assert!(text.contains("quarantined messages pending: unknown"), "{text}");
        assert!(text.contains("CONFIGURATION: unknown (Postgres did not answer)"), "{text}");
        assert!(!text.contains("OPEN GAPS: 0"), "{text}");
        let json = serde_json::to_value(&s).unwrap();
        assert!(json["gaps"].is_null() && json["watermarks"].is_null() && json["quarantined"].is_null(), "{json}");
        assert!(json["config"].is_null(), "{json}");
    }
}
