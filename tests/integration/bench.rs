//! Smoke runs of `tillsync bench`: every scenario works end to end at tiny sizes and prints
//! one JSON object with its fields. These check that the benchmarks run, not how fast: the
//! figures live in docs/performance.md.
//!
//! Each run lets the bench start its own nats-server (`NATS_URL` removed) and create fresh
//! databases on the test Postgres server.

use std::time::Duration;

use serde_json::Value;

fn admin_url() -> String {
    std::env::var("TILLSYNC_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Runs `tillsync bench <args> --json` and returns its JSON, after checking it exited 0.
async fn bench(args: &[&str]) -> Value {
    tillsync_tests::init_tracing();
    let child = tokio::process::Command::new(tillsync_tests::bin_path("tillsync"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .env_remove("NATS_URL")
        .env("DATABASE_URL", admin_url())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), child)
        .await
        .unwrap_or_else(|_| panic!("bench {args:?} did not finish in 90 s"))
        .expect("run tillsync");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench {args:?} exited {:?}: {stderr}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one JSON object on stdout, got: {stdout}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn assert_positive(v: &Value, fields: &[&str]) {
    for f in fields {
        let n = v[f].as_f64().unwrap_or_else(|| panic!("field {f} missing or not a number in {v}"));
        assert!(n > 0.0, "field {f} = {n}, want > 0 in {v}");
    }
}

/// The CPU split (`/proc`, Linux): this process, the bench's own nats-server, the rest. `/proc`
/// counts in 10 ms ticks, so a tiny run may show 0 for a part; `busy` asks for more than 0 in all.
fn assert_cpu_split(v: &Value, busy: bool) {
    if !std::path::Path::new("/proc/self/stat").exists() {
        return;
    }
    let parts = ["cpu_us_per_event_bench", "cpu_us_per_event_nats", "cpu_us_per_event_rest"];
    let mut sum = 0.0;
    for f in parts {
        let n = v[f].as_f64().unwrap_or_else(|| panic!("field {f} missing or not a number in {v}"));
        assert!(n >= 0.0, "field {f} = {n}, want >= 0 in {v}");
        sum += n;
    }
    assert!(!busy || sum > 0.0, "no CPU at all counted in {v}");
}

#[tokio::test]
async fn bench_ingest_reports_broker_pipeline_and_naive_rates() {
    let v =
        bench(&["ingest", "--events", "1000", "--devices", "20", "--dup-ratio", "0.1", "--naive-sample", "200"]).await;
    assert_eq!(v["scenario"], "ingest");
    assert_eq!(v["unique_events"], 900);
    assert_positive(
        &v,
        &[
            "events_per_s",
            "baseline_pipeline_events_per_s",
            "naive_events_per_s",
            "ratio_vs_pipeline",
            "ratio_vs_naive",
        ],
    );
    assert_cpu_split(&v, false);
}

#[tokio::test]
async fn bench_latency_reports_percentiles() {
    let v = bench(&["latency", "--rate", "200", "--seconds", "2", "--devices", "10"]).await;
    assert_eq!(v["events"], 400);
    assert_positive(&v, &["p50_ms", "p99_ms", "p999_ms"]);
    assert!(v["p50_ms"].as_f64() <= v["p999_ms"].as_f64(), "{v}");
    assert_cpu_split(&v, true);
}

#[tokio::test]
async fn bench_replay_reports_rate_and_ratio_to_live() {
    let v = bench(&["replay", "--events", "1000", "--devices", "20", "--compare"]).await;
    assert_positive(&v, &["events_per_s", "live_events_per_s", "ratio_vs_live"]);
}

#[tokio::test]
async fn bench_actors_reports_memory_and_activation_rate() {
    let v = bench(&["actors", "--devices", "500"]).await;
    assert_positive(&v, &["rss_bytes_per_actor", "activations_per_s"]);
}

#[tokio::test]
async fn bench_commands_reports_round_trips() {
    let v = bench(&["commands", "--commands", "30", "--devices", "3", "--rate", "50"]).await;
    assert_positive(&v, &["commands_per_s", "p50_ms", "p99_ms"]);
}

#[tokio::test]
async fn bench_config_reports_publish_to_applied_and_bytes_per_device() {
    let v = bench(&["config", "--devices", "20", "--changes", "5", "--items", "50", "--interval-ms", "50"]).await;
    assert_positive(&v, &["applied_p50_ms", "applied_p99_ms", "snapshot_bytes_per_device", "delta_bytes_per_device"]);
    // A snapshot of 50 items weighs more than one small delta.
    assert!(v["snapshot_bytes_per_device"].as_f64() > v["delta_bytes_per_version"].as_f64(), "{v}");
}

#[tokio::test]
async fn bench_fsync_reports_both_publish_rates_and_their_ratio() {
    let v = bench(&["fsync", "--messages", "300", "--runs", "1"]).await;
    assert_eq!(v["scenario"], "fsync");
    assert_positive(&v, &["default_msgs_per_s", "always_msgs_per_s", "slowdown"]);
}
