//! Log lines as operators take them: `--log-format json` gives one JSON object per line on
//! every binary, and text into a pipe or a file carries no ANSI colour codes.

use std::process::Stdio;
use std::time::Duration;

use tillsync_tests::bin_path;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Runs `bin args` with `env`, reads its log stream (stdout for the broker, stderr otherwise)
/// until `lines` lines arrived or it exited, then kills it.
async fn log_lines(bin: &str, args: &[&str], env: &[(&str, &str)], stdout: bool, lines: usize) -> Vec<String> {
    let mut child = tokio::process::Command::new(bin_path(bin))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(if stdout { Stdio::piped() } else { Stdio::null() })
        .stderr(if stdout { Stdio::null() } else { Stdio::piped() })
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stream: Box<dyn tokio::io::AsyncRead + Unpin + Send> =
        if stdout { Box::new(child.stdout.take().unwrap()) } else { Box::new(child.stderr.take().unwrap()) };
    let mut reader = BufReader::new(stream).lines();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < lines {
        match tokio::time::timeout_at(deadline, reader.next_line()).await {
            Ok(Ok(Some(l))) => out.push(l),
            Ok(_) => break,
            Err(_) => panic!("{bin} {args:?} wrote {} of {lines} log lines in 20 s: {out:?}", out.len()),
        }
    }
    let _ = child.kill().await;
    assert!(!out.is_empty(), "{bin} {args:?} wrote no log line");
    out
}

fn bridge_args(dir: &std::path::Path, format: &str) -> Vec<String> {
    let db = dir.join("edge.db").display().to_string();
    ["--log-format", format, "run", "--no-http", "--tenant", "acme", "--store", "s1", "--device", "till-1", "--db", &db]
        .map(String::from)
        .to_vec()
}

/// Nothing listens on port 1 of loopback: the bridge and the broker log their reconnecting.
const NO_NATS: (&str, &str) = ("NATS_URL", "nats://127.0.0.1:1");

fn assert_json(lines: &[String]) {
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "level and timestamp in {l}");
    }
}

fn assert_plain(lines: &[String]) {
    for l in lines {
        assert!(!l.contains('\u{1b}'), "an ANSI escape in a piped log line: {l:?}");
    }
}

#[tokio::test]
async fn the_bridge_logs_json_when_asked_and_plain_text_into_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let json = bridge_args(dir.path(), "json");
    let json: Vec<&str> = json.iter().map(String::as_str).collect();
    assert_json(&log_lines("tillsync-edge", &json, &[NO_NATS], false, 2).await);
    let dir = tempfile::tempdir().unwrap();
    let text = bridge_args(dir.path(), "text");
    let text: Vec<&str> = text.iter().map(String::as_str).collect();
    let lines = log_lines("tillsync-edge", &text, &[NO_NATS], false, 2).await;
    assert_plain(&lines);
    assert!(!lines[0].starts_with('{'), "text is not JSON: {}", lines[0]);
}

#[tokio::test]
async fn the_broker_and_the_cli_log_json_when_asked() {
    // The broker has no signing key and logs why it stopped; the variable sets the format as
    // the flag does.
    let env = [NO_NATS, ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"), ("TILLSYNC_LOG_FORMAT", "json")];
    assert_json(&log_lines("tillsync-broker", &[], &env, true, 1).await);
    let env = [NO_NATS, ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"), ("TILLSYNC_LOG_FORMAT", "text")];
    assert_plain(&log_lines("tillsync-broker", &[], &env, true, 1).await);
    // The CLI logs warnings and errors only by default; RUST_LOG asks for more.
    let env = [NO_NATS, ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"), ("RUST_LOG", "debug")];
    assert_json(&log_lines("tillsync", &["--log-format", "json", "status"], &env, false, 1).await);
}

#[tokio::test]
async fn an_invalid_broker_configuration_is_logged_once_and_exits_2() {
    let out = tokio::process::Command::new(bin_path("tillsync-broker"))
        .env("TILLSYNC_INGEST_LANES", "0")
        .env("TILLSYNC_LOG_FORMAT", "json")
        .env(NO_NATS.0, NO_NATS.1)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<String> = stdout.lines().map(String::from).collect();
    assert_json(&lines);
    let errors: Vec<&String> = lines.iter().filter(|l| l.contains("\"ERROR\"")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stdout}");
    assert!(errors[0].contains("TILLSYNC_INGEST_LANES"), "names the variable: {}", errors[0]);
}

#[tokio::test]
async fn a_cli_whose_reader_went_away_ends_quietly() {
    // `tillsync status --json | head -0`: the reader is gone before the report is written.
    let mut child = tokio::process::Command::new(bin_path("tillsync"))
        .args(["--json", "status"])
        .env(NO_NATS.0, NO_NATS.1)
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(13), "ended by SIGPIPE, as `cat` would: {:?}", out.status);
}

#[tokio::test]
async fn print_config_checks_masks_passwords_and_leaves_out_test_switches() {
    let run = |env: Vec<(&'static str, &'static str)>| async move {
        tokio::process::Command::new(bin_path("tillsync-broker"))
            .arg("--print-config")
            .env("TILLSYNC_SIGNING_KEY_FILE", tillsync_broker::admin::signing::test_key_file())
            .envs(env)
            .output()
            .await
            .unwrap()
    };
    let out = run(vec![("DATABASE_URL", "postgres://tillsync:s3cret@db:5432/tillsync?sslmode=require")]).await;
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(v["DATABASE_URL"], "postgres://tillsync:****@db:5432/tillsync?sslmode=require");
    assert_eq!(v["TILLSYNC_INGEST_LANES"], "4");
    assert!(!stdout.contains("s3cret") && !stdout.contains("FAULT"), "{stdout}");
    let out = run(vec![("TILLSYNC_INGEST_LANES", "0")]).await;
    assert_eq!(out.status.code(), Some(2), "an invalid configuration is not printed as if fine");
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TILLSYNC_INGEST_LANES"));
    // A signing key the broker could not read is refused here too, not at start with exit 1.
    let out = run(vec![("TILLSYNC_SIGNING_KEY_FILE", "/nonexistent/signing.nk")]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/signing.nk"));
}

/// Names, one per connection: a DBA reading `pg_stat_activity` tells the broker's
/// connections (with its instance id) from the CLI's.
async fn application_names(db: &tillsync_tests::TestDb) -> Vec<String> {
    let db_name = db.url.rsplit('/').next().unwrap().split('?').next().unwrap().to_string();
    sqlx::query_scalar("SELECT application_name FROM pg_stat_activity WHERE datname = $1")
        .bind(db_name)
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn postgres_connections_are_named_and_its_notices_stay_out_of_the_logs() {
    let stack = tillsync_tests::Stack::start().await;
    let config = stack.broker_config();
    let unnamed = |names: &[String]| names.iter().filter(|n| n.is_empty()).count();
    // The test's own pool is unnamed; the broker adds named connections only.
    let unnamed_before = unnamed(&application_names(&stack.db).await);
    // The database is already migrated, so the broker's migration at start draws Postgres's
    // "relation _sqlx_migrations already exists, skipping" notice, which sqlx logs at INFO.
    let mut child = tokio::process::Command::new(bin_path("tillsync-broker"))
        .envs(config.to_env())
        .env("RUST_LOG", "info")
        .env("TILLSYNC_INSTANCE_ID", "broker-named")
        .env("TILLSYNC_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let names = tillsync_tests::eventually(Duration::from_secs(30), "the broker's named connections", || async {
        let names = application_names(&stack.db).await;
        names.iter().any(|n| n == "tillsync-broker broker-named").then_some(names)
    })
    .await;
    assert!(unnamed(&names) <= unnamed_before, "the broker opened an unnamed connection: {names:?}");
    let _ = child.kill().await;
    let out = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("\"INFO\""), "RUST_LOG=info gave INFO lines: {log}");
    assert!(!log.contains("already exists"), "a Postgres notice was logged: {log}");

    // The CLI: `tillsync migrate` on a migrated database, with INFO asked for.
    let out = tokio::process::Command::new(bin_path("tillsync"))
        .arg("migrate")
        .env("DATABASE_URL", &stack.db.url)
        .env("RUST_LOG", "info")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("already exists"), "a Postgres notice was logged: {log}");
}

#[tokio::test]
async fn a_simulated_store_at_40_events_a_second_logs_no_errors() {
    // Four bridges in one process at 10 events/s each, as the issue measured it: SQLite
    // "database is locked" (codes 5 and 517) used to log at ERROR 13 times a minute.
    let stack = tillsync_tests::Stack::start().await;
    crate::common::add_tenant(&stack.db.pool, "demo").await;
    let broker = tillsync_tests::InProcBroker::start(stack.broker_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(bin_path("tillsync-edge"))
        .args(["--log-format", "json", "simulate", "--stores", "2", "--devices-per-store", "2", "--rate", "10"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--nats-url", &stack.nats.url()])
        .args(["--command-keys", tillsync_schemas::signature::TEST_PUBLIC_KEY])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut reader = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = reader.next_line().await {
            out.push(l);
        }
        out
    });
    // 20 s of traffic: 800 events.
    tillsync_tests::eventually(Duration::from_secs(60), "800 simulated events applied", || async {
        (stack.db.count("SELECT count(*) FROM processed_events").await >= 800).then_some(())
    })
    .await;
    let _ = child.kill().await;
    let _ = child.wait().await;
    let lines = lines.await.unwrap();
    let bad: Vec<&String> =
        lines.iter().filter(|l| l.contains("\"ERROR\"") || l.contains("database is locked")).collect();
    assert!(bad.is_empty(), "{} error lines, e.g. {:?}", bad.len(), bad.first());
    broker.stop().await;
}
