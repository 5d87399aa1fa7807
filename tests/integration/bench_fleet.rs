//! Smoke run of `tillsync bench fleet` (issue 27): 20 simulated bridges on the bench's own
//! 3-node cluster with a broker, today's downlink and the floor. Checks the JSON's shape, the
//! consumer counts (no device holds a consumer, today as on the floor) and that a command and a
//! configuration version reached every device, also while a node restarted; not timings: the
//! figures live in docs/performance.md.

use std::time::Duration;

use serde_json::Value;

const DEVICES: u64 = 20;

async fn fleet() -> Value {
    tillsync_tests::init_tracing();
    let database_url = std::env::var("TILLSYNC_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let child = tokio::process::Command::new(tillsync_tests::bin_path("tillsync"))
        .args(["bench", "fleet", "--devices", &DEVICES.to_string(), "--idle-s", "3", "--json"])
        .env_remove("NATS_URL")
        .env("DATABASE_URL", database_url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), child)
        .await
        .expect("bench fleet did not finish in 240 s")
        .expect("run tillsync");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench fleet exited {:?}: {stderr}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one JSON object on stdout, got: {stdout}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn number(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("field {key} missing or not a number in {v}"))
}

#[tokio::test]
async fn bench_fleet_reports_both_phases_and_counts_the_consumers() {
    let v = fleet().await;
    assert_eq!(v["scenario"], "fleet");
    assert_eq!(v["devices"], DEVICES);
    assert_eq!(v["idle_s"], 3);
    for phase in ["today", "floor"] {
        let p = &v[phase];
        assert_eq!(p["devices"], DEVICES, "{phase} in {v}");
        for key in ["setup_s", "nats_cpu_pct", "cpu_us_per_device_second", "rss_kib_per_device", "server_consumers"] {
            assert!(number(p, key) >= 0.0, "{phase}.{key} in {v}");
        }
        assert!(number(p, "nats_rss_mib") > 0.0, "three nats-servers use some memory: {v}");
    }
    assert_eq!(v["today"]["consumers"], 0, "no consumer per device: {v}");
    assert_eq!(v["floor"]["consumers"], 0, "plain subscriptions only: {v}");
    assert_eq!(v["today"]["server_consumers"], v["floor"]["server_consumers"], "only the broker's own: {v}");
    let today = &v["today"];
    let restart = &today["after_node_restart"];
    let rounds = [
        ("command_round_trip", &today["command_round_trip"], "all_acked_s"),
        ("config_publish_to_applied", &today["config_publish_to_applied"], "all_applied_s"),
        ("after_node_restart.command_round_trip", &restart["command_round_trip"], "all_acked_s"),
        ("after_node_restart.config_publish_to_applied", &restart["config_publish_to_applied"], "all_applied_s"),
    ];
    for (round, r, all) in rounds {
        for key in ["p50_ms", "p99_ms", all] {
            assert!(number(r, key) > 0.0, "today.{round}.{key} in {v}");
        }
    }
    assert!(number(restart, "all_caught_up_s") > 0.0, "{v}");
    for round in ["command_round_trip", "config_publish_to_applied", "after_node_restart"] {
        assert!(v["floor"][round].is_null(), "the floor acks and applies nothing: {v}");
    }
    // A ratio is null only when the floor's CPU was below /proc's 10 ms resolution.
    for key in ["cpu_ratio_to_floor", "rss_ratio_to_floor"] {
        assert!(v[key].is_number() || v[key].is_null(), "{key} in {v}");
    }
    assert!(v["rss_ratio_to_floor"].as_f64().is_some_and(|r| r > 0.0), "{v}");
}
