//! `tillsync chaos` end to end, through the built binary: real nats-server, a private Postgres
//! cluster, the broker and four bridges, killed, paused and restarted by the seeded nemesis.

use serde_json::Value;
use tillsync_tests::bin_path;

/// The faults today's code survives. Deleting acknowledged events from the stream
/// (`delete-events`) loses them until the bridge resends what the watermark does not cover;
/// once that lands, this becomes "all".
const FAULTS: &str = "kill,pause,bridge-offline";

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

fn violations_of(report: &Value, check: &str) -> u64 {
    report["checks"].as_array().unwrap().iter().find(|c| c["check"] == check).unwrap()["violations"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_minute_of_chaos_loses_nothing_and_commands_tell_the_truth() {
    let (code, report) = chaos(&["--seconds", "60", "--seed", "7", "--faults", FAULTS, "--quiesce-s", "45"]).await;
    let pretty = serde_json::to_string_pretty(&report).unwrap();
    assert_eq!(report["violations"], 0, "{pretty}");
    assert_eq!(code, 0, "{pretty}");
    // The run did what it claims: faults injected, events and commands checked.
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

/// The proof that the checker can fail on real processes: on today's code, events JetStream
/// acknowledged and then lost are never resent, so a run that only deletes events reports them
/// lost (exit 1). Ignored because it fails once bridges resend what the watermark does not
/// cover (issue 15); run it with `cargo test -p tillsync-tests --test integration
/// chaos::deleted_events -- --ignored`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn deleted_events_are_reported_lost_on_todays_code() {
    let (code, report) =
        chaos(&["--seconds", "30", "--seed", "3", "--faults", "delete-events", "--quiesce-s", "20"]).await;
    let pretty = serde_json::to_string_pretty(&report).unwrap();
    assert!(report["observed"]["events_deleted_from_stream"].as_u64().unwrap() > 0, "{pretty}");
    assert!(violations_of(&report, "events_lost") > 0, "{pretty}");
    assert_eq!(code, 1, "{pretty}");
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
