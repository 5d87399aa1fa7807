//! `tillsync status`: streams, the broker's consumers, broker instances and their resident
//! actors, devices online per tenant, quarantine size. Exit code 3 when something needs a look
//! (a stream missing, or no broker instance reported in the last 30 seconds).

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tillsync_schemas::streams as names;

use crate::global::Global;
use crate::output::{emit, table, ts};

/// A broker instance counts as alive when it reported this recently (it reports every 2 s).
const ALIVE_WITHIN_S: i64 = 30;

#[derive(Serialize)]
struct Status {
    streams: Vec<StreamStatus>,
    consumers: Vec<ConsumerStatus>,
    brokers: Vec<BrokerRow>,
    resident_actors: i64,
    tenants: Vec<TenantDevices>,
    quarantined: i64,
    problems: Vec<String>,
}

#[derive(Serialize)]
struct StreamStatus {
    name: String,
    messages: u64,
    bytes: u64,
    first_seq: u64,
    last_seq: u64,
    consumers: usize,
}

#[derive(Serialize)]
struct ConsumerStatus {
    stream: String,
    name: String,
    num_pending: u64,
    num_ack_pending: usize,
    num_redelivered: usize,
    num_waiting: usize,
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

const STREAMS: &[&str] = &[
    names::EVENTS,
    names::HEARTBEATS,
    names::INTAKE,
    names::COMMANDS,
    names::COMMAND_ACKS,
    names::STATUS,
    names::WATERMARKS,
];
const CONSUMERS: &[(&str, &str)] = &[
    (names::EVENTS, names::BROKER_EVENTS_CONSUMER),
    (names::HEARTBEATS, names::BROKER_HEARTBEATS_CONSUMER),
    (names::INTAKE, names::BROKER_INTAKE_CONSUMER),
    (names::COMMAND_ACKS, names::BROKER_ACKS_CONSUMER),
];

pub async fn run(global: &Global) -> anyhow::Result<ExitCode> {
    let pool = global.pool().await?;
    let js = async_nats::jetstream::new(global.nats().await?);
    let mut problems = Vec::new();

    let mut streams = Vec::new();
    for name in STREAMS {
        match js.get_stream(*name).await {
            Ok(mut s) => {
                let st = s.info().await?.state.clone();
                streams.push(StreamStatus {
                    name: name.to_string(),
                    messages: st.messages,
                    bytes: st.bytes,
                    first_seq: st.first_sequence,
                    last_seq: st.last_sequence,
                    consumers: st.consumer_count,
                });
            }
            Err(e) => problems.push(format!("stream {name} unavailable: {e}")),
        }
    }
    let mut consumers = Vec::new();
    for (stream, name) in CONSUMERS {
        let Ok(s) = js.get_stream(*stream).await else { continue };
        match s.get_consumer::<async_nats::jetstream::consumer::pull::Config>(name).await {
            Ok(mut c) => {
                let i = c.info().await?;
                consumers.push(ConsumerStatus {
                    stream: stream.to_string(),
                    name: name.to_string(),
                    num_pending: i.num_pending,
                    num_ack_pending: i.num_ack_pending,
                    num_redelivered: i.num_redelivered,
                    num_waiting: i.num_waiting,
                });
            }
            Err(e) => problems.push(format!("consumer {stream}/{name} unavailable: {e}")),
        }
    }
    let brokers: Vec<BrokerRow> = sqlx::query_as(
        "SELECT instance_id, host, started_at, last_seen, resident_actors,
                last_seen > now() - make_interval(secs => $1) AS alive
         FROM broker_instances ORDER BY instance_id",
    )
    .bind(ALIVE_WITHIN_S as f64)
    .fetch_all(&pool)
    .await?;
    if !brokers.iter().any(|b| b.alive) {
        problems.push(format!("no broker instance reported in the last {ALIVE_WITHIN_S} s"));
    }
    let resident_actors = brokers.iter().filter(|b| b.alive).map(|b| b.resident_actors).sum();
    let tenants: Vec<TenantDevices> = sqlx::query_as(
        "SELECT tenant_id, count(*) FILTER (WHERE online) AS online, count(*) FILTER (WHERE NOT online) AS offline
         FROM devices GROUP BY tenant_id ORDER BY tenant_id",
    )
    .fetch_all(&pool)
    .await?;
    let quarantined: i64 = sqlx::query_scalar("SELECT count(*) FROM quarantine").fetch_one(&pool).await?;
    pool.close().await;

    let status = Status { streams, consumers, brokers, resident_actors, tenants, quarantined, problems };
    emit(global.json, &status, human)?;
    Ok(if status.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

fn human(s: &Status) -> String {
    let mut out = String::from("STREAMS\n");
    let rows: Vec<Vec<String>> = s
        .streams
        .iter()
        .map(|x| {
            vec![
                x.name.clone(),
                x.messages.to_string(),
                x.bytes.to_string(),
                x.first_seq.to_string(),
                x.last_seq.to_string(),
                x.consumers.to_string(),
            ]
        })
        .collect();
    out += &table(&["NAME", "MESSAGES", "BYTES", "FIRST", "LAST", "CONSUMERS"], &rows);
    out += "\nCONSUMERS\n";
    let rows: Vec<Vec<String>> = s
        .consumers
        .iter()
        .map(|c| {
            vec![
                format!("{}/{}", c.stream, c.name),
                c.num_pending.to_string(),
                c.num_ack_pending.to_string(),
                c.num_redelivered.to_string(),
            ]
        })
        .collect();
    out += &table(&["CONSUMER", "PENDING", "ACK PENDING", "REDELIVERED"], &rows);
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
    out += &format!("resident actors: {}\n\nDEVICES\n", s.resident_actors);
    let rows: Vec<Vec<String>> =
        s.tenants.iter().map(|t| vec![t.tenant_id.clone(), t.online.to_string(), t.offline.to_string()]).collect();
    out += &table(&["TENANT", "ONLINE", "OFFLINE"], &rows);
    out += &format!("\nquarantined messages: {}\n", s.quarantined);
    for p in &s.problems {
        out += &format!("PROBLEM: {p}\n");
    }
    out
}
