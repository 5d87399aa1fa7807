//! README command 1 (`./scripts/run-local.sh`) in its smoke mode: the whole local stack as a
//! newcomer starts it (nats-server with authorization and client TLS, the broker with its keys,
//! activated tills, the portal loop, all over `tls://` with the generated client certificate),
//! which must apply events, bring devices online and get a command acked, then stop with
//! nothing it started left running. `tls_files.rs` shows that server config refusing plain
//! text and clients without the certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tillsync_tests::{bin_path, free_addr, TestDb};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Pids of processes whose environment names `run_dir` (everything the script started
/// inherits `TILLSYNC_RUN_DIR`), this test's own process excepted.
fn processes_of(run_dir: &Path) -> Vec<String> {
    let needle = format!("TILLSYNC_RUN_DIR={}", run_dir.display());
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|pid| pid.chars().all(|c| c.is_ascii_digit()) && *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn command_1_applies_events_acks_a_command_and_leaves_nothing_running() {
    let db = TestDb::new().await; // its name is the demo's database; the script migrates it again
    let run = tempfile::tempdir().unwrap();
    let (http, nats_port) = (free_addr(), free_addr().port());
    let bin_dir = bin_path("tillsync").parent().unwrap().to_path_buf();
    // The run dir of an older run, from before client TLS: keys only. The script adds the rest.
    let auth = run.path().join("auth");
    let init =
        std::process::Command::new(bin_path("tillsync")).arg("auth").arg("init").arg("--dir").arg(&auth).output();
    assert!(init.unwrap().status.success());
    let database = db.url.rsplit('/').next().unwrap().to_string();
    let admin = db.url.trim_end_matches(&database).to_string() + "postgres";
    let mut cmd = tokio::process::Command::new(repo().join("scripts/run-local.sh"));
    cmd.args(["--smoke", "120"])
        .env("TILLSYNC_RUN_DIR", run.path())
        .env("TILLSYNC_BIN_DIR", &bin_dir)
        .env("TILLSYNC_DEMO_NATS_PORT", nats_port.to_string())
        .env("TILLSYNC_HTTP_ADDR", http.to_string())
        .env("TILLSYNC_DEMO_DATABASE", &database)
        .env("TILLSYNC_DEMO_STORES", "2")
        .env("DATABASE_URL", admin)
        .env_remove("NATS_CREDS")
        .env_remove("NATS_URL")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("run-local.sh --smoke 120 ends within 180 s")
        .expect("run-local.sh starts");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let logs: String = ["broker.log", "fleet.log", "activate.log", "portal.log"]
        .iter()
        .map(|f| format!("--- {f}\n{}\n", std::fs::read_to_string(run.path().join(f)).unwrap_or_default()))
        .collect();
    assert_eq!(out.status.code(), Some(0), "run-local.sh --smoke failed:\n{stderr}\n{stdout}\n{logs}");
    assert!(stderr.contains("smoke: events applied, devices online and a command acked"), "{stderr}");
    assert!(db.count("SELECT count(*) FROM processed_events WHERE outcome = 'applied'").await > 0);
    assert!(db.count("SELECT count(*) FROM command_log WHERE state = 'acked'").await > 0);
    // NATS spoke only TLS: the server included the files `auth tls` added to the old run dir.
    assert!(auth.join("tls.conf").is_file() && auth.join("client.pem").is_file());
    let conf = std::fs::read_to_string(run.path().join("nats.conf")).unwrap();
    assert!(conf.contains("include \"auth/tls.conf\""), "{conf}");
    let nats_log = std::fs::read_to_string(run.path().join("nats.log")).unwrap();
    assert!(nats_log.contains("TLS required for client connections"), "{nats_log}");
    // The activation output is kept (the fleet's log no longer overwrites it).
    let activations = std::fs::read_to_string(run.path().join("activate.log")).unwrap();
    assert_eq!(activations.matches("Activated").count(), 4, "{activations}");
    // Nothing it started is left: no process carries its run dir, its ports are free.
    assert_eq!(processes_of(run.path()), Vec::<String>::new(), "processes left running");
    assert!(std::net::TcpListener::bind(http).is_ok(), "{http} still taken");
    assert!(std::net::TcpListener::bind(("127.0.0.1", nats_port)).is_ok(), "NATS port {nats_port} still taken");
}
