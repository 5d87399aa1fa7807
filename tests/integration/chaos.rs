//! `tillsync chaos` end to end, through the built binary: real nats-server with authorization
//! on (accounts, the broker's auth callout, activated bridges), a private Postgres cluster, the
//! broker and four bridges, killed, paused and restarted by the seeded nemesis.

use serde_json::Value;
use tillsync_tests::bin_path;

/// Every fault: kills, pauses, a bridge offline, and acknowledged events deleted from the stream.
const FAULTS: &str = "all";

/// Runs `tillsync chaos --json` with `args`; returns the exit code and the report.
async fn chaos(args: &[&str]) -> (i32, Value) {
    let out = tokio::process::Command::new(bin_path("tillsync"))
        .arg("chaos")
        .args(args)
        .arg("--json")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .expect("run tillsync chaos");
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("exit {code}, stdout is not JSON ({e}):\n{stdout}"));
    (code, report)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_minute_of_chaos_loses_nothing_and_commands_tell_the_truth() {
    // Two brokers sharing the partitions: kills and pauses move partitions between them.
    let args = ["--seconds", "60", "--seed", "7", "--brokers", "2", "--faults", FAULTS, "--quiesce-s", "45"];
    let (code, report) = chaos(&args).await;
    let pretty = serde_json::to_string_pretty(&report).unwrap();
    assert_eq!(report["violations"], 0, "{pretty}");
    assert_eq!(code, 0, "{pretty}");
    // The run did what it claims: authorization on, faults injected, events and commands checked.
    assert_eq!(report["authorization"], true, "{pretty}");
    let o = &report["observed"];
    assert!(o["faults_injected"].as_u64().unwrap() >= 8, "{pretty}");
    assert!(o["quiesced"].as_bool().unwrap(), "{pretty}");
    let checked = |name: &str| {
        report["checks"].as_array().unwrap().iter().find(|c| c["check"] == name).unwrap()["checked"].as_u64().unwrap()
    };
    assert!(checked("events_lost") > 500, "{pretty}");
    assert!(checked("read_model_rows") > 200, "{pretty}");
    assert!(checked("commands_one_final_state") > 20, "{pretty}");
    assert!(checked("commands_not_applied_after_final") > 10, "{pretty}");
}

#[tokio::test]
async fn a_usage_error_exits_2() {
    let out = tokio::process::Command::new(bin_path("tillsync"))
        .args(["chaos", "--faults", "kill,typo"])
        .output()
        .await
        .expect("run tillsync chaos");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown fault"));
}
