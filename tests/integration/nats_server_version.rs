//! Commands that start their own nats-server (`tillsync chaos`, `tillsync bench`, both run by
//! tillsync-lab) find the one the scripts install and refuse one older than 2.10, naming its
//! path, its version and the fix, before starting anything (a 2.9 never offers what the
//! streams need, and used to end a chaos run 20 s later as "nats-server with JetStream not
//! within 20 s").

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tillsync_tests::{bin_path, nats_bin};

/// An executable script `dir/nats-server` that prints what a 2.9 prints for `--version`.
fn fake_2_9(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("nats-server");
    std::fs::write(&path, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

async fn run(tillsync: &Path, args: &[&str], envs: &[(&str, &str)], cwd: &Path) -> Output {
    let child = tokio::process::Command::new(tillsync)
        .args(args)
        .env_remove("NATS_URL")
        .env_remove("TILLSYNC_NATS_SERVER")
        .env("TILLSYNC_BIN_DIR", bin_path("tillsync").parent().unwrap())
        .envs(envs.iter().copied())
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), child).await.expect("ended within 60 s").expect("run tillsync")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The refusal names the path, where it came from, the version and both fixes.
fn assert_refused(text: &str, path: &Path, from: &str) {
    for part in [
        &path.display().to_string(),
        from,
        "nats-server 2.9.10",
        "2.10",
        "./scripts/test.sh",
        "./scripts/run-local.sh",
        ".tools/venv/bin/nats-server",
        "TILLSYNC_NATS_SERVER",
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
}

/// The run directory a failed chaos run keeps (and names on stderr), removed.
fn remove_kept_run_dir(text: &str) {
    let kept = text.lines().find_map(|l| l.strip_prefix("run directory (logs of every process): "));
    if let Some(dir) = kept {
        let _ = std::fs::remove_dir_all(dir.trim());
    }
}

#[tokio::test]
async fn chaos_and_bench_refuse_a_nats_server_older_than_2_10_named_by_the_variable() {
    let tmp = tempfile::tempdir().unwrap();
    let old = fake_2_9(&tmp.path().join("old"));
    let env = [("TILLSYNC_NATS_SERVER", old.to_str().unwrap())];
    let started = std::time::Instant::now();
    let chaos = run(&bin_path("tillsync"), &["chaos", "--seconds", "60", "--seed", "7"], &env, tmp.path()).await;
    let text = stderr(&chaos);
    remove_kept_run_dir(&text);
    assert_eq!(chaos.status.code(), Some(4), "chaos: the run could not be carried out:\n{text}");
    assert_refused(&text, &old, "from TILLSYNC_NATS_SERVER");
    assert!(started.elapsed() < Duration::from_secs(15), "refused before starting anything: {:?}", started.elapsed());

    let bench = run(&bin_path("tillsync"), &["bench", "fsync", "--json"], &env, tmp.path()).await;
    assert_eq!(bench.status.code(), Some(1), "bench:\n{}", stderr(&bench));
    let error: serde_json::Value = serde_json::from_slice(&bench.stdout).expect("--json: an error object on stdout");
    assert_refused(error["error"]["message"].as_str().unwrap(), &old, "from TILLSYNC_NATS_SERVER");
}

/// A release binary outside the repository's `target/`: it finds the pinned server above
/// itself before a 2.9 on PATH, and without one names the PATH's and refuses it. The binary
/// that looks is tillsync-lab, which `tillsync bench` runs from its own directory.
#[tokio::test]
async fn the_pinned_server_above_the_binary_beats_an_old_one_on_path() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let release = repo.join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    let tillsync = release.join("tillsync");
    std::fs::copy(bin_path("tillsync"), &tillsync).unwrap();
    std::fs::copy(bin_path("tillsync-lab"), release.join("tillsync-lab")).unwrap();
    let old = fake_2_9(&tmp.path().join("sysbin"));
    let path = format!("{}:{}", old.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let env = [("PATH", path.as_str())];
    let fsync = ["bench", "fsync", "--messages", "200", "--runs", "1", "--json"];

    let refused = run(&tillsync, &fsync, &env, tmp.path()).await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let error: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_refused(error["error"]["message"].as_str().unwrap(), &old, "from PATH");

    let pinned = repo.join(".tools/venv/bin/nats-server");
    std::fs::create_dir_all(pinned.parent().unwrap()).unwrap();
    let real = std::fs::canonicalize(nats_bin()).expect("the suite's nats-server (TILLSYNC_NATS_SERVER)");
    std::os::unix::fs::symlink(real, &pinned).unwrap();
    let ran = run(&tillsync, &fsync, &env, tmp.path()).await;
    assert_eq!(ran.status.code(), Some(0), "the pinned server was not used:\n{}", stderr(&ran));
    let report: serde_json::Value = serde_json::from_slice(&ran.stdout).expect("a bench report");
    assert!(report.is_object(), "{report}");
}
