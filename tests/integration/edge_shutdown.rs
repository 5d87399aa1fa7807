//! A SIGTERM stops the edge bridge whole: every task it registered (the `Tasks started.` line
//! names them) is joined, each logging `Task stopped.`, none is left to abort; then NATS is
//! drained and the SQLite file closed, and the process exits 0 well inside its bound. The file
//! it leaves is whole: no write-ahead log left to replay, `PRAGMA integrity_check` ok, every
//! event it answered for in its outbox. The bridge runs as a process of its own so its logs and
//! its exit are its own.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tillsync_schemas::DeviceAddr;
use tillsync_tests::{bin_path, eventually, free_addr, http_get, metric, InProcBroker, Stack};

use crate::common::add_tenant;
use crate::edge::support::T;
use crate::json_log::Log;

/// How long the bridge may take from SIGTERM to its exit: a publish window's acks at most,
/// well below the bound on its tasks (20 s).
const EXITS_WITHIN: Duration = Duration::from_secs(10);

/// Every task a bridge with its HTTP API and the command keys refresh registers.
const TASKS: [&str; 10] = [
    "cutoff",
    "config_sync",
    "config_handoff",
    "publisher",
    "watermark",
    "resend",
    "command_keys",
    "commands",
    "heartbeat",
    "http",
];

/// The bridge's JSON log lines (stderr), as they arrive.
fn event(i: u64) -> Value {
    json!({"kind": "order_opened", "payload": {"order_id": format!("o-{i}"), "currency": "EUR"}})
}

async fn submit(http: &reqwest::Client, addr: std::net::SocketAddr, i: u64) {
    let r = http.post(format!("http://{addr}/v1/events")).json(&event(i)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202, "event {i}");
}

#[tokio::test]
async fn sigterm_joins_every_task_then_closes_the_outbox_and_exits_0() {
    const SETTLED: u64 = 20;
    const LATE: u64 = 10;
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edge.db");
    let mut config = stack.edge_config(&DeviceAddr::new("acme", "s1", "till-stop"), db.clone());
    config.http_addr = free_addr();
    // Rows the watermark covers are kept, so the file can be counted after the stop.
    config.retention_s = 3600;
    let mut child = tokio::process::Command::new(bin_path("tillsync-edge"))
        .arg("run")
        .envs(config.to_env())
        .env("TILLSYNC_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tillsync-edge");
    let (log, reading) = Log::follow(child.stderr.take().unwrap());

    eventually(T, "the bridge started", || async { (!log.find("Edge bridge started.").is_empty()).then_some(()) })
        .await;
    let started = log.find("Tasks started.");
    let names: BTreeSet<String> =
        started[0]["tasks"].as_str().expect("the task names").split(',').map(String::from).collect();
    assert_eq!(names, TASKS.iter().map(|t| t.to_string()).collect(), "the registered tasks");
    eventually(T, "connected and every task exported as running", || async {
        let (_, m) = http_get(config.http_addr, "/metrics").await?;
        metric(&m, "tillsync_edge_nats_connected", "").filter(|v| *v == 1.0)?;
        names.iter().all(|t| metric(&m, "tillsync_edge_tasks", &format!("task=\"{t}\"")) == Some(1.0)).then_some(())
    })
    .await;

    // Some events published and covered by the broker's watermark, some still on their way.
    let http = reqwest::Client::new();
    for i in 1..=SETTLED {
        submit(&http, config.http_addr, i).await;
    }
    eventually(T, "the events covered by the watermark", || async {
        let (_, m) = http_get(config.http_addr, "/metrics").await?;
        metric(&m, "tillsync_edge_watermark_seq", "").filter(|v| *v == SETTLED as f64).map(|_| ())
    })
    .await;
    for i in SETTLED + 1..=SETTLED + LATE {
        submit(&http, config.http_addr, i).await;
    }

    let (lines, last_task) =
        crate::json_log::stop_and_check_tasks(&mut child, reading, &log, EXITS_WITHIN, &names).await;
    let closed = lines.iter().position(|l| l["message"] == "Edge bridge stopped.").expect("the bridge stopped");
    assert!(last_task < closed, "tasks joined before NATS and SQLite were closed");
    assert_eq!(lines[closed]["tasks_not_stopped"], 0);

    // Closed cleanly: the last connection checkpointed and removed the write-ahead log.
    let wal = dir.path().join("edge.db-wal");
    assert!(std::fs::metadata(&wal).map_or(true, |m| m.len() == 0), "a write-ahead log left behind");
    let options = SqliteConnectOptions::new().filename(&db).create_if_missing(false);
    let file = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&file).await.unwrap();
    assert_eq!(integrity, "ok");
    let (rows, first, last): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), min(seq), max(seq) FROM outbox").fetch_one(&file).await.unwrap();
    let all = (SETTLED + LATE) as i64;
    assert_eq!((rows, first, last), (all, 1, all), "every answered event is in the outbox, once");
    let (last_seq, watermark): (i64, i64) =
        sqlx::query_as("SELECT last_seq, watermark FROM bridge_state").fetch_one(&file).await.unwrap();
    assert_eq!(last_seq, all);
    assert!(watermark >= SETTLED as i64, "the watermark taken before the stop is kept: {watermark}");
    file.close().await;
    broker.stop().await;
}
