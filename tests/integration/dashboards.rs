//! The dashboard as an operator uses it: tenant and instance selectors on every tillsync
//! panel, PromQL that Prometheus accepts, "Brokers up" that reads 0 rather than nothing when no
//! broker reports, and exporter panels that name only metrics the exporters serve.
//!
//! postgres_exporter and node_exporter (Debian's packages) run here against the test's own
//! Postgres. prometheus-nats-exporter (a Go program nobody packages) cannot; its panels are
//! checked through what it reads: every `gnatsd_varz_<field>` must be a number in a real
//! nats-server's `/varz`, and every `jetstream_*` name must be one of its JetStream collector's
//! (collector/jsz.go) whose source field a real `/jsz?streams=true` carries.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tillsync_tests::{eventually, free_addr, TestDb};

use crate::ops::{promtool, repo, run_promtool};

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join("ops/grafana/dashboards/tillsync.json")).unwrap())
        .unwrap()
}

/// (panel title, expression) for every query of every panel.
fn exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((p["title"].as_str().unwrap().to_string(), t["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

/// An expression as Prometheus gets it once Grafana filled in "All".
fn expand(expr: &str) -> String {
    expr.replace("$instance", ".*").replace("$tenant", ".*")
}

/// Metrics documented in docs/metrics.md with a `tenant` label.
fn tenant_labelled() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    doc.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.trim_matches('`');
            (name.starts_with("tillsync_") && cells.get(3)?.contains("`tenant`")).then(|| name.to_string())
        })
        .collect()
}

/// Every metric selector of a family in `expr`: (name, its `{...}` matchers or "").
fn selectors<'a>(expr: &'a str, prefix: &str) -> Vec<(&'a str, &'a str)> {
    let mut out = Vec::new();
    for (i, _) in expr.match_indices(prefix) {
        if expr[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let end = expr[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(expr.len(), |e| i + e);
        let matchers = if expr[end..].starts_with('{') {
            let close = expr[end..].find('}').unwrap();
            &expr[end + 1..end + close]
        } else {
            ""
        };
        out.push((&expr[i..end], matchers));
    }
    out
}

#[test]
fn every_tillsync_panel_follows_the_tenant_and_instance_selectors() {
    let d = dashboard();
    let vars: Vec<&str> =
        d["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(vars, ["tenant", "instance"]);
    let tenant = tenant_labelled();
    assert!(tenant.contains("tillsync_devices_online"), "{tenant:?}");
    let mut checked = 0;
    for (title, expr) in exprs(&d) {
        for (name, matchers) in selectors(&expr, "tillsync_") {
            checked += 1;
            assert!(matchers.contains(r#"instance=~"$instance""#), "{title}: {name} ignores the instance selector");
            let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            if tenant.contains(base) {
                assert!(matchers.contains(r#"tenant=~"$tenant""#), "{title}: {name} ignores the tenant selector");
            }
        }
    }
    assert!(checked > 40, "only {checked} selectors found");
}

#[test]
fn prometheus_accepts_every_panel_query() {
    // Each query, as a recording rule: `promtool check rules` parses every expression.
    let rules: Vec<Value> = exprs(&dashboard())
        .iter()
        .enumerate()
        .map(|(i, (_, e))| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": expand(e)}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, serde_yaml::to_string(&doc).unwrap()).unwrap();
    run_promtool(&["check", "rules", file.to_str().unwrap()]);
}

#[test]
fn brokers_up_reads_zero_when_no_broker_reports() {
    let (_, expr) = exprs(&dashboard()).into_iter().find(|(t, _)| t == "Brokers up").unwrap();
    let expr = expand(&expr);
    // No tillsync_broker_up series at all, as when every broker is down; then one broker.
    let test = serde_json::json!({
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m", "input_series": [{"series": "up{job=\"tillsync-broker\"}", "values": "0 0 0"}],
             "promql_expr_test": [{"expr": expr, "eval_time": "2m", "exp_samples": [{"labels": "{}", "value": 0}]}]},
            {"interval": "1m", "input_series": [{"series": "tillsync_broker_up{instance=\"broker:9464\"}", "values": "1 1 1"}],
             "promql_expr_test": [{"expr": expr, "eval_time": "2m", "exp_samples": [{"labels": "{}", "value": 1}]}]}
        ]
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("brokers-up-test.yml");
    std::fs::write(&file, serde_yaml::to_string(&test).unwrap()).unwrap();
    let out = std::process::Command::new(promtool()).args(["test", "rules"]).arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{expr}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Exporter metric names of a family the dashboard uses.
fn used(prefix: &str) -> BTreeSet<String> {
    let d = dashboard();
    let out: BTreeSet<String> =
        exprs(&d).iter().flat_map(|(_, e)| selectors(e, prefix).into_iter().map(|(n, _)| n.to_string())).collect();
    assert!(!out.is_empty(), "the dashboard has no {prefix}* panel");
    out
}

/// An exporter binary: `var`, else Debian's path (scripts/lib.sh `ensure_exporters`).
fn exporter(var: &str, debian: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| debian.into());
    assert!(path.is_file(), "{} missing: run ./scripts/test.sh (it installs Debian's exporters)", path.display());
    path
}

/// Runs an exporter on a free loopback port until its /metrics carries `ready`; returns the
/// metric names it serves.
async fn scrape_exporter(bin: PathBuf, env: &[(&str, &str)], ready: &str) -> BTreeSet<String> {
    let addr = free_addr();
    let mut child = tokio::process::Command::new(bin)
        .arg(format!("--web.listen-address={addr}"))
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://{addr}/metrics");
    let body = eventually(Duration::from_secs(30), "the exporter's metrics", || async {
        let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
        body.lines().any(|l| l.starts_with(ready)).then_some(body)
    })
    .await;
    let _ = child.kill().await;
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn postgres_and_disk_panels_name_metrics_the_exporters_serve() {
    let db = TestDb::new().await;
    let dsn = if db.url.contains('?') {
        format!("{}&sslmode=disable", db.url)
    } else {
        format!("{}?sslmode=disable", db.url)
    };
    let bin = exporter("TILLSYNC_POSTGRES_EXPORTER", "/usr/bin/prometheus-postgres-exporter");
    let served = scrape_exporter(bin, &[("DATA_SOURCE_NAME", &dsn)], "pg_up 1").await;
    let missing: Vec<_> = used("pg_").into_iter().filter(|m| !served.contains(m)).collect();
    assert!(missing.is_empty(), "postgres_exporter does not serve {missing:?}");

    let bin = exporter("TILLSYNC_NODE_EXPORTER", "/usr/bin/prometheus-node-exporter");
    let served = scrape_exporter(bin, &[], "node_filesystem_avail_bytes").await;
    let missing: Vec<_> = used("node_").into_iter().filter(|m| !served.contains(m)).collect();
    assert!(missing.is_empty(), "node_exporter does not serve {missing:?}");
}

/// prometheus-nats-exporter's JetStream names (collector/jsz.go) with the `/jsz` field each
/// reads, as a JSON pointer (streams under `account_details/0/stream_detail/0`).
const JSZ: &[(&str, &str)] = &[
    ("jetstream_server_total_message_bytes", "/bytes"),
    ("jetstream_server_max_storage", "/config/max_storage"),
    ("jetstream_server_total_streams", "/streams"),
    ("jetstream_stream_total_bytes", "/account_details/0/stream_detail/0/state/bytes"),
    ("jetstream_stream_total_messages", "/account_details/0/stream_detail/0/state/messages"),
];

#[tokio::test]
async fn nats_panels_name_metrics_the_nats_exporter_derives_from_a_real_server() {
    let bin = std::env::var_os("TILLSYNC_NATS_SERVER").map(PathBuf::from).unwrap_or_else(|| "nats-server".into());
    let (port, monitor) = (free_addr().port(), free_addr().port());
    let store = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor.to_string(), "-js", "-sd"])
        .arg(store.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let client =
        eventually(Duration::from_secs(20), "nats-server", || async { async_nats::connect(&url).await.ok() }).await;
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "TILLSYNC_EVENTS".into(),
        subjects: vec!["x.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("x.1", "hello".into()).await.unwrap().await.unwrap();

    let get = |path: &str| {
        let u = format!("http://127.0.0.1:{monitor}/{path}");
        async move { reqwest::get(u).await.unwrap().json::<Value>().await.unwrap() }
    };
    let varz = get("varz").await;
    for name in used("gnatsd_varz_") {
        let field = name.strip_prefix("gnatsd_varz_").unwrap();
        assert!(varz[field].is_number(), "{name}: /varz has no number {field:?}");
    }
    let jsz = get("jsz?streams=true").await;
    for name in used("jetstream_") {
        let (_, pointer) = JSZ
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} is not one of prometheus-nats-exporter's JetStream metrics"));
        assert!(jsz.pointer(pointer).is_some_and(Value::is_number), "{name}: /jsz has no number at {pointer}: {jsz}");
    }
    let _ = child.kill().await;
}
