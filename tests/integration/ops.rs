//! The operator side: the `tillsync` CLI against a live broker (replay, quarantine redrive,
//! every `--json` output), the broker's /metrics through `promtool check metrics`, the alert
//! rules through `promtool check/test rules`, and docker-compose.yml against the repo and the
//! broker's configuration.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{json, Value};
use tillsync_schemas::event::{AvailabilityOverridden, ReceiptIssued};
use tillsync_schemas::{codec, streams, subject, DeviceAddr, EventBody};
use tillsync_tests::{bin_path, eventually, eventually_eq, InProcBroker, Stack, TestDb, DEFAULT_TIMEOUT};
use tokio::io::AsyncWriteExt;

use crate::common::*;

/// What one `tillsync` run printed and how it ended.
pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }

    /// What a finished `tillsync` process printed and how it ended.
    pub fn of(out: std::process::Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "tillsync failed:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

/// Runs the `tillsync` binary against the stack (async, so an in-process broker keeps running).
pub(crate) async fn tillsync(stack: &Stack, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(bin_path("tillsync"))
        .args(args)
        .env("NATS_URL", stack.nats.url())
        .env("DATABASE_URL", &stack.db.url)
        .env_remove("TILLSYNC_OPERATOR")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run tillsync");
    Run::of(out)
}

/// Waits until the broker has settled every message of the events stream.
async fn settle(js: &async_nats::jetstream::Context) {
    eventually(DEFAULT_TIMEOUT, "the broker settled every event", || async {
        crate::common::events_drained(js).await.then_some(())
    })
    .await;
}

/// A stream with everything ingest can meet: applied events on three devices, a redelivered
/// duplicate, an event id reused with other content (conflict), an out-of-date event (stale),
/// a gap filled later, an unknown tenant and an undecodable message. Returns the message count.
async fn mixed_stream(js: &async_nats::jetstream::Context) -> u64 {
    let d1 = DeviceAddr::new("acme", "s1", "till-1");
    let d2 = DeviceAddr::new("acme", "s1", "till-2");
    let d3 = DeviceAddr::new("acme", "s2", "till-1");
    let e2 = event(&d1, 2, item("o-1", "l-1", 2));
    let e3 = event(&d1, 3, payment("o-1", "p-1", 700));
    let mut conflicting = e3.clone();
    conflicting.body = payment("o-1", "p-1", 999);
    let receipt = EventBody::ReceiptIssued(ReceiptIssued {
        order_id: "o-1".into(),
        receipt_id: "r-1".into(),
        number: "0001".into(),
        total_minor: 700,
        currency: "EUR".into(),
    });
    let sold_out = EventBody::AvailabilityOverridden(AvailabilityOverridden {
        sku: "latte".into(),
        available: false,
        until_ms: None,
    });
    let mut n = 0;
    for ev in [
        event(&d1, 1, opened("o-1")),
        e2.clone(),
        e3,
        event(&d1, 4, status("o-1", "paid")),
        event(&d1, 5, receipt),
        event(&d3, 1, opened("o-3")),
        event(&d3, 2, sold_out),
        event(&d2, 1, opened("o-2")),
        event(&d2, 3, item("o-2", "l-2", 1)),
    ] {
        publish(js, &ev).await;
        n += 1;
    }
    // A bridge resending after a lost ack (no Nats-Msg-Id, so JetStream stores it again).
    publish_raw(js, subject::events(&d1), codec::encode(&e2)).await;
    // The same event id with other content.
    publish_raw(js, subject::events(&d1), codec::encode(&conflicting)).await;
    // A status change older (device seq 2) than the row it touches (seq 4): stale.
    publish(js, &event(&d1, 2, status("o-1", "void"))).await;
    // Fills d2's gap.
    publish(js, &event(&d2, 2, item("o-2", "l-1", 3))).await;
    publish(js, &event(&DeviceAddr::new("ghost", "s1", "till-1"), 1, opened("o-g"))).await;
    publish_raw(js, subject::events(&d1), b"\xc1 not msgpack".to_vec()).await;
    n + 6
}

/// Everything replay into live must leave alone; devices only by their sequence columns
/// (a batch touches last_seen, as any redelivery does).
async fn snapshot(db: &TestDb) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for table in [
        "orders",
        "order_items",
        "payments",
        "receipts",
        "availability_overrides",
        "processed_events",
        "conflicts",
        "quarantine",
        "device_gaps",
    ] {
        let sql = format!("SELECT md5(string_agg(to_jsonb(t)::text, ',' ORDER BY to_jsonb(t)::text)) FROM {table} t");
        out.push((table.to_string(), sqlx::query_scalar(&sql).fetch_one(&db.pool).await.unwrap()));
    }
    let devices: Option<String> = sqlx::query_scalar(
        "SELECT md5(string_agg(concat_ws(',', tenant_id, store_id, device_id, last_seq, watermark, gaps, provisioned), ';'
                               ORDER BY tenant_id, store_id, device_id)) FROM devices",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    out.push(("devices".into(), devices));
    out
}

#[tokio::test]
async fn replay_into_a_fresh_database_equals_live() {
    let (stack, broker, js) = live().await;
    let messages = mixed_stream(&js).await;
    settle(&js).await;
    let db = &stack.db;
    assert_eq!(db.count("SELECT count(*) FROM conflicts WHERE kind = 'content_mismatch'").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM processed_events WHERE outcome = 'stale'").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM quarantine").await, 2);

    let target = TestDb::sibling().await;
    let run = tillsync(&stack, &["replay", "--target-database-url", &target.url, "--verify", "--json"]).await.ok();
    let v = run.json();
    assert_eq!(v["messages"], json!(messages));
    assert_eq!(v["applied"], json!(10), "{v:#}");
    assert_eq!(v["duplicates"], json!(1), "{v:#}");
    assert_eq!(v["conflicts"], json!(1), "{v:#}");
    assert_eq!(v["stale"], json!(1), "{v:#}");
    assert_eq!(v["quarantined"], json!({"undecodable": 1, "unknown_tenant": 1}), "{v:#}");
    assert_eq!(v["verify"]["differences"], json!([]), "{v:#}");
    assert_eq!(v["verify"]["rows"]["payments"], json!(1));
    for table in
        ["orders", "order_items", "payments", "receipts", "availability_overrides", "processed_events", "quarantine"]
    {
        let sql = format!("SELECT count(*) FROM {table}");
        assert_eq!(target.count(&sql).await, db.count(&sql).await, "{table}");
    }

    // The same into a shadow schema of the live database, in small batches.
    let run =
        tillsync(&stack, &["replay", "--target-schema", "shadow", "--batch", "3", "--verify", "--json"]).await.ok();
    assert_eq!(run.json()["verify"]["differences"], json!([]));
    assert_eq!(db.count("SELECT count(*) FROM shadow.orders").await, 3);
    assert_eq!(db.count("SELECT last_stream_seq FROM shadow.replay_progress").await, messages as i64);

    // Resuming a finished replay reads nothing; a difference in the target is reported (exit 3).
    sqlx::query("DELETE FROM payments").execute(&target.pool).await.unwrap();
    let run =
        tillsync(&stack, &["replay", "--target-database-url", &target.url, "--resume", "--verify", "--json"]).await;
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    let v = run.json();
    assert_eq!(v["messages"], json!(0));
    assert_eq!(v["verify"]["differences"][0]["table"], json!("payments"));
    assert_eq!(v["verify"]["differences"][0]["kind"], json!("missing_in_target"));
    let human = tillsync(&stack, &["replay", "--target-database-url", &target.url, "--resume", "--verify"]).await;
    assert_eq!(human.code, 3);
    assert!(human.stdout.contains("payments acme/s1/p-1/: missing_in_target"), "{}", human.stdout);

    // New events after a replay: --resume takes only those.
    publish(&js, &event(&DeviceAddr::new("acme", "s1", "till-2"), 4, status("o-2", "paid"))).await;
    settle(&js).await;
    let run = tillsync(&stack, &["replay", "--target-schema", "shadow", "--resume", "--json"]).await.ok();
    let v = run.json();
    assert_eq!((v["messages"].clone(), v["applied"].clone()), (json!(1), json!(1)));
    broker.stop().await;
}

/// Many stores over several lanes, live (the broker's ingest lanes) and in a replay (its own
/// lanes, tiny batches so lanes finish out of order): every device's events apply in order, the
/// rebuild equals live, and the saved position is the stream's end.
#[tokio::test]
async fn replay_lanes_keep_each_device_in_order() {
    let (stack, broker, js) = live().await;
    let (stores, devices, orders) = (12, 2, 3);
    let mut messages = 0;
    // Per device, four events in a row (open, item, two status changes), so a split that
    // ignored the store would put them in different lanes at once; stores interleaved.
    for o in 0..orders {
        for st in 0..stores {
            for d in 0..devices {
                for step in 0..4u64 {
                    let addr = DeviceAddr::new("acme", format!("s{st}"), format!("till-{d}"));
                    let order = format!("o-{d}-{o}");
                    let body = match step {
                        0 => opened(&order),
                        1 => item(&order, "l-1", 1),
                        2 => status(&order, "paid"),
                        _ => status(&order, "closed"),
                    };
                    publish(&js, &event(&addr, o * 4 + step + 1, body)).await;
                    messages += 1;
                }
            }
        }
    }
    settle(&js).await;
    let db = &stack.db;
    let total = (stores * devices * orders) as i64;
    assert_eq!(db.count("SELECT count(*) FROM orders WHERE status = 'closed'").await, total);
    assert_eq!(db.count("SELECT count(*) FROM device_gaps").await, 0);

    let run =
        tillsync(&stack, &["replay", "--target-schema", "lanes", "--lanes", "4", "--batch", "2", "--verify", "--json"])
            .await
            .ok();
    let v = run.json();
    assert_eq!(v["messages"], json!(messages), "{v:#}");
    assert_eq!(v["applied"], json!(messages), "{v:#}");
    assert_eq!(v["verify"]["differences"], json!([]), "{v:#}");
    assert_eq!(db.count("SELECT count(*) FROM lanes.orders WHERE status = 'closed'").await, total);
    assert_eq!(db.count("SELECT count(*) FROM lanes.device_gaps").await, 0);
    assert_eq!(db.count("SELECT last_stream_seq FROM lanes.replay_progress").await, messages as i64);
    broker.stop().await;
}

#[tokio::test]
async fn replay_into_live_changes_nothing() {
    let (stack, broker, js) = live().await;
    let messages = mixed_stream(&js).await;
    settle(&js).await;
    let before = snapshot(&stack.db).await;

    let v = tillsync(&stack, &["replay", "--into-live", "--json"]).await.ok().json();
    assert_eq!(v["messages"], json!(messages));
    assert_eq!((v["applied"].clone(), v["stale"].clone()), (json!(0), json!(0)), "{v:#}");
    assert_eq!(v["unchanged"], json!(true));
    assert_eq!(v["duplicates"], json!(messages - 3), "everything but the conflict and the two quarantined: {v:#}");
    assert_eq!(snapshot(&stack.db).await, before);

    let human = tillsync(&stack, &["replay", "--into-live", "--tenant", "acme", "--store", "s1"]).await.ok();
    assert!(human.stdout.contains("duplicates, nothing changed."), "{}", human.stdout);
    assert_eq!(snapshot(&stack.db).await, before);
    broker.stop().await;
}

#[tokio::test]
async fn a_quarantined_event_is_redriven_once_its_tenant_exists() {
    let stack = Stack::start().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let js = stack.nats.jetstream().await;
    publish(&js, &event(&DeviceAddr::new("ghost", "s1", "till-1"), 1, opened("o-g"))).await;
    let db = &stack.db;
    eventually_eq(DEFAULT_TIMEOUT, "quarantined as unknown_tenant", 1, || {
        db.count("SELECT count(*) FROM quarantine WHERE reason = 'unknown_tenant'")
    })
    .await;
    let id = db.count("SELECT id FROM quarantine").await.to_string();

    let refused = tillsync(&stack, &["quarantine", "redrive", &id]).await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(refused.stderr.contains("tillsync tenants add ghost"), "{}", refused.stderr);

    let v = tillsync(&stack, &["tenants", "add", "ghost", "--json"]).await.ok().json();
    assert_eq!(v["created"], json!(true));
    let v = tillsync(
        &stack,
        &["quarantine", "redrive", &id, "--operator", "alice", "--note", "tenant provisioned", "--json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(v["stream"], json!(streams::EVENTS));
    assert_eq!(v["duplicate"], json!(false));
    assert!(v["new_stream_seq"].as_u64().unwrap() > 1);
    eventually_eq(DEFAULT_TIMEOUT, "the redriven event applied", 1, || {
        db.count("SELECT count(*) FROM orders WHERE tenant_id = 'ghost' AND order_id = 'o-g'")
    })
    .await;
    assert_eq!(db.count("SELECT count(*) FROM quarantine").await, 1, "not quarantined again");
    assert_eq!(db.count("SELECT redrive_count::int8 FROM quarantine").await, 1);
    let audit: (String, String, i64) = sqlx::query_as("SELECT operator, note, new_stream_seq FROM quarantine_redrives")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(audit, ("alice".into(), "tenant provisioned".into(), v["new_stream_seq"].as_i64().unwrap()));

    let shown = tillsync(&stack, &["quarantine", "show", &id, "--json"]).await.ok().json();
    assert_eq!(shown["reason"], json!("unknown_tenant"));
    assert_eq!(shown["decoded"]["tenant_id"], json!("ghost"));
    assert_eq!(shown["redrives"][0]["operator"], json!("alice"));
    broker.stop().await;
}

#[tokio::test]
async fn every_json_output_parses() {
    let (stack, broker, js) = live().await;
    mixed_stream(&js).await;
    settle(&js).await;
    let db = &stack.db;
    eventually_eq(DEFAULT_TIMEOUT, "broker instance reported", 1, || db.count("SELECT count(*) FROM broker_instances"))
        .await;
    let qid = db.count("SELECT min(id) FROM quarantine").await.to_string();

    let status = tillsync(&stack, &["status", "--json"]).await.ok().json();
    let events = status["streams"].as_array().unwrap().iter().find(|s| s["name"] == json!(streams::EVENTS)).unwrap();
    assert_eq!(events["messages"], json!(15));
    assert_eq!(status["brokers"].as_array().unwrap().len(), 1);
    assert_eq!(status["quarantined"], json!(2));
    assert!(status["consumers"].as_array().unwrap().iter().any(|c| c["name"] == json!("broker-events")));

    let devices = tillsync(&stack, &["devices", "list", "--json"]).await.ok().json();
    assert_eq!(devices.as_array().unwrap().len(), 3);
    let added = tillsync(&stack, &["devices", "add", "--tenant", "acme", "--store", "s9", "--device", "d9", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(added["created"], json!(true));
    assert_eq!(db.count("SELECT count(*) FROM devices WHERE device_id = 'd9' AND provisioned").await, 1);
    let unknown = tillsync(&stack, &["devices", "add", "--tenant", "nobody", "--store", "s", "--device", "d"]).await;
    assert_eq!(unknown.code, 4);
    assert!(unknown.stderr.contains("unknown tenant"), "{}", unknown.stderr);
    assert_eq!(db.count("SELECT count(*) FROM devices WHERE tenant_id = 'nobody'").await, 0);

    for args in [
        vec!["tenants", "add", "beta"],
        vec!["tenants", "list"],
        vec!["devices", "list", "--tenant", "acme", "--offline"],
        vec!["quarantine", "list", "--reason", "undecodable"],
        vec!["quarantine", "show", &qid],
        vec!["migrate"],
        vec!["migrate", "--schema", "extra"],
        vec!["replay", "--target-schema", "shadow", "--tenant", "acme", "--from-seq", "3"],
        vec!["replay", "--into-live", "--from-time", "2020-01-01T00:00:00Z"],
    ] {
        let mut with_json = args.clone();
        with_json.push("--json");
        let run = tillsync(&stack, &with_json).await;
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        run.json();
    }
    let list = tillsync(&stack, &["quarantine", "list", "--json"]).await.ok().json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let tenants = tillsync(&stack, &["tenants", "list", "--json"]).await.ok().json();
    let ids: BTreeSet<&str> = tenants.as_array().unwrap().iter().map(|t| t["tenant_id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from(["acme", "beta"]));
    broker.stop().await;
}

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `TILLSYNC_PROMTOOL`, else `promtool` on PATH; missing is a failure (scripts/test.sh installs it).
pub(crate) fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("TILLSYNC_PROMTOOL") {
        return p.into();
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("promtool")).find(|p| p.is_file()))
        .expect("promtool not found: install Debian's `prometheus` package or run ./scripts/test.sh")
}

pub(crate) fn run_promtool(args: &[&str]) {
    let out = std::process::Command::new(promtool()).args(args).current_dir(repo()).output().expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn promtool_accepts_the_live_metrics() {
    let (_stack, broker, js) = live().await;
    mixed_stream(&js).await;
    settle(&js).await;
    let url = format!("http://{}/metrics", broker.broker.http_addr);
    let body = eventually(DEFAULT_TIMEOUT, "metrics with applied events", || async {
        let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
        body.contains("tillsync_events_applied_total").then_some(body)
    })
    .await;
    for name in
        ["tillsync_events_quarantined_total", "tillsync_events_conflict_total", "tillsync_event_lag_seconds_bucket"]
    {
        assert!(body.contains(name), "{name} missing from /metrics");
    }
    // Lag histograms reach 24 h; the apply latency (no store outage in it) ends at 300 s.
    assert!(body.contains(r#"tillsync_event_lag_seconds_bucket{le="86400"#), "event lag buckets end before 24 h");
    assert!(!body.contains(r#"tillsync_apply_latency_seconds_bucket{le="86400"#));
    let mut child = tokio::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().unwrap().write_all(body.as_bytes()).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ready = reqwest::get(format!("http://{}/readyz", broker.broker.http_addr)).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    broker.stop().await;
}

#[test]
fn promtool_checks_the_rules_and_the_config() {
    run_promtool(&["check", "rules", "ops/prometheus/rules.yml"]);
    run_promtool(&["test", "rules", "ops/prometheus/tests.yml"]);
    run_promtool(&["check", "config", "ops/prometheus/prometheus.yml"]);
}

/// Every metric name defined (as a string constant) in a source file.
fn defined_in(path: &str) -> BTreeSet<String> {
    let src = std::fs::read_to_string(repo().join(path)).unwrap();
    src.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("tillsync_") && s.matches('_').count() >= 2)
        .filter(|s| s.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(String::from)
        .collect()
}

/// Every `tillsync_*` metric name in a text, histogram series suffixes removed.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("tillsync_") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/' || c == '.') {
            continue;
        }
        let name: String = text[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        let name =
            ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).map(String::from).unwrap_or(n));
        out.insert(name.trim_end_matches('_').to_string());
    }
    out
}

#[test]
fn dashboards_rules_and_docs_name_only_real_metrics() {
    let defined = defined_in("broker/src/metrics.rs");
    assert!(defined.len() > 20, "{defined:?}");
    let edge = defined_in("edge-bridge/src/metrics.rs");
    for file in ["ops/prometheus/rules.yml", "ops/grafana/dashboards/tillsync.json"] {
        let used = names_in(&std::fs::read_to_string(repo().join(file)).unwrap());
        let unknown: Vec<_> = used.difference(&defined).collect();
        assert!(unknown.is_empty(), "{file} uses metrics the broker does not export: {unknown:?}");
    }
    let docs = names_in(&std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap());
    let undocumented: Vec<_> = defined.union(&edge).filter(|m| !docs.contains(*m)).collect();
    assert!(undocumented.is_empty(), "docs/metrics.md misses {undocumented:?}");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("ops/grafana/dashboards/tillsync.json")).unwrap())
            .unwrap();
    assert_eq!(dashboard["uid"], json!("tillsync"));
}

fn yaml(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(repo().join(path)).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn env_of(service: &serde_yaml::Value) -> Vec<(String, String)> {
    let env = &service["environment"];
    let map = env.as_mapping().expect("environment is a mapping");
    map.iter()
        .map(|(k, v)| {
            let v = match v {
                serde_yaml::Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other).unwrap().trim().to_string(),
            };
            (k.as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[test]
fn compose_file_is_complete_and_matches_the_broker() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    for name in ["nats", "postgres", "broker", "prometheus", "grafana", "edge-sim"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    // Every bind-mounted file or directory, and every build input, exists.
    for (name, service) in services {
        for v in service["volumes"].as_sequence().into_iter().flatten() {
            let host = v.as_str().unwrap().split(':').next().unwrap();
            if host.starts_with('.') || host.starts_with('/') {
                assert!(repo().join(host).exists(), "{name:?} mounts missing {host}");
            } else {
                assert!(
                    compose["volumes"].as_mapping().unwrap().contains_key(host),
                    "{name:?}: undeclared volume {host}"
                );
            }
        }
        if let Some(build) = service["build"].as_mapping() {
            let context = build.get("context").and_then(|c| c.as_str()).unwrap_or(".");
            let dockerfile = build.get("dockerfile").and_then(|c| c.as_str()).unwrap_or("Dockerfile");
            assert!(repo().join(context).join(dockerfile).is_file(), "{name:?}: no {dockerfile}");
        }
    }
    assert_eq!(compose["services"]["nats"]["command"][1], "/etc/nats/nats.conf");

    // What `auth-init` writes into the `auth` volume, made here the same way: the files the
    // services name under /auth are looked up in it, and nats-server checks its config with it.
    let etc = tempfile::tempdir().unwrap();
    let auth = etc.path().join("auth");
    tillsync_broker::admin::auth::setup::generate(&auth).unwrap();
    let routes = ["nats:6222", "nats-2:6222", "nats-3:6222"].map(String::from);
    tillsync_broker::admin::auth::routes::generate(&auth, &auth, &routes).unwrap();
    let hosts = ["nats", "nats-2", "nats-3", "localhost"].map(String::from);
    tillsync_broker::admin::auth::client_tls::generate(&auth, &auth, &hosts).unwrap();
    let init = compose["services"]["auth-init"]["entrypoint"][2].as_str().unwrap();
    assert!(init.contains("tillsync auth routes") && routes.iter().all(|r| init.contains(r)), "{init}");
    assert!(
        init.contains("tillsync auth tls") && hosts.iter().all(|h| init.contains(&format!("--host {h}"))),
        "{init}"
    );
    let in_volume = |v: &str| match v.strip_prefix("/auth/") {
        Some(name) => auth.join(name).display().to_string(),
        None => v.to_string(),
    };

    // Every service that talks to NATS does so over TLS with the generated client certificate,
    // and only the brokers, which also check Postgres, accept plain text (to Postgres).
    let mut merged = compose.clone();
    merged.apply_merge().unwrap();
    for (name, service) in merged["services"].as_mapping().unwrap() {
        if !service["environment"].is_mapping() {
            continue;
        }
        let env = env_of(service);
        let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let Some(urls) = get("NATS_URL") else { continue };
        assert!(urls.split(',').all(|u| u.starts_with("tls://")), "{name:?}: NATS_URL {urls}");
        for (var, file) in
            [("NATS_CA_FILE", "ca.pem"), ("NATS_CERT_FILE", "client.pem"), ("NATS_KEY_FILE", "client-key.pem")]
        {
            assert_eq!(get(var), Some(format!("/auth/{file}")), "{name:?}: {var}");
            assert!(auth.join(file).is_file(), "`auth tls` writes {file}");
        }
        let mounts: Vec<&str> =
            service["volumes"].as_sequence().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        assert!(mounts.iter().any(|m| m.starts_with("auth:/auth")), "{name:?} does not mount the auth volume");
        let broker = service["command"][0] == "tillsync-broker";
        assert_eq!(get("TILLSYNC_ALLOW_PLAINTEXT").is_some(), broker, "{name:?}: TILLSYNC_ALLOW_PLAINTEXT");
    }

    // The broker's environment is configuration the broker reads, with valid values.
    let mut all = tillsync_broker::config::Config::for_tests("nats://x:4222", "postgres://x/y");
    all.instance_id = Some("x".into());
    all.nats_creds = Some("/x".into());
    all.auth_callout_creds = Some("/x".into());
    all.auth_issuer_seed = Some("/x".into());
    all.nats_system_creds = Some("/x".into());
    all.nats_tls = tillsync_broker::admin::nats::TlsFiles {
        ca: Some("/x".into()),
        cert: Some("/x".into()),
        key: Some("/x".into()),
    };
    let known: BTreeSet<String> = all.to_env().into_iter().map(|(k, _)| k).chain(["RUST_LOG".to_string()]).collect();
    let env = env_of(&compose["services"]["broker"]);
    let keys: BTreeSet<String> = env.iter().map(|(k, _)| k.clone()).collect();
    let unknown: Vec<_> = keys.difference(&known).collect();
    assert!(unknown.is_empty(), "the broker does not read {unknown:?}");
    for required in ["NATS_URL", "DATABASE_URL", "TILLSYNC_HTTP_ADDR"] {
        assert!(keys.contains(required), "broker service lacks {required}");
    }
    let mut argv = vec!["tillsync-broker".to_string()];
    for (k, v) in env.iter().filter(|(k, _)| k != "RUST_LOG") {
        let flag = format!("--{}", k.trim_start_matches("TILLSYNC_").to_lowercase().replace('_', "-"));
        match v.as_str() {
            "true" => argv.push(flag),
            "false" => {}
            _ => argv.extend([flag, in_volume(v)]),
        }
    }
    let parsed = <tillsync_broker::config::Config as clap::Parser>::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("broker environment does not parse: {e}"));
    parsed.validate().unwrap();
    assert!(!parsed.http_addr.ip().is_loopback(), "the broker must listen beyond its container");

    // Prometheus scrapes the port the broker serves, and loads the rules.
    let prom = yaml("ops/prometheus/prometheus.yml");
    let target = prom["scrape_configs"][0]["static_configs"][0]["targets"][0].as_str().unwrap();
    assert_eq!(target, format!("broker:{}", parsed.http_addr.port()));
    assert!(repo().join("ops/prometheus").join(prom["rule_files"][0].as_str().unwrap()).is_file());

    // The simulated fleet reaches the same NATS as the broker.
    let sim = env_of(&compose["services"]["edge-sim"]);
    assert!(sim.contains(&("NATS_URL".into(), parsed.nats_url.clone())));

    // The NATS config is one nats-server accepts.
    let nats = std::env::var_os("TILLSYNC_NATS_SERVER").map(PathBuf::from).unwrap_or_else(|| {
        let pinned = repo().join(".tools/venv/bin/nats-server");
        if pinned.exists() {
            pinned
        } else {
            "nats-server".into()
        }
    });
    // It includes what `auth-init` writes into the `auth` volume (authorization, routes,
    // client TLS): check them together, as the containers see them.
    std::fs::copy(repo().join("ops/nats/nats.conf"), etc.path().join("nats.conf")).unwrap();
    let out = std::process::Command::new(&nats)
        .args(["-t", "-c"])
        .arg(etc.path().join("nats.conf"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nats.display()));
    assert!(out.status.success(), "nats.conf: {}", String::from_utf8_lossy(&out.stderr));
}
