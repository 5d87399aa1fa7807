//! The `tillsync` CLI's edges: every exit code the documented one (a table of command -> code),
//! `--json` failures as one error object on stdout, each cause printed once with the fix
//! (Postgres down, not migrated, NATS down or refusing the credentials, unknown tenant), a
//! send the broker quarantines, completions and man pages, and boolean variables.

use std::time::{Duration, Instant};

use serde_json::Value;
use tillsync_schemas::streams;
use tillsync_tests::{bin_path, eventually, free_addr, InProcBroker, Stack, DEFAULT_TIMEOUT};

use crate::common::add_tenant;
use crate::ops::Run;

/// Runs `tillsync` with NATS and Postgres where the caller says.
async fn cli(nats_url: &str, database_url: &str, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(bin_path("tillsync"))
        .args(args)
        .env("NATS_URL", nats_url)
        .env("DATABASE_URL", database_url)
        .env_remove("NATS_CREDS")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run tillsync");
    Run::of(out)
}

/// With `--json`, a failure's stdout is `{"error": {"code", "exit", "message", "hint"}}`.
fn error_object(run: &Run, code: &str, exit: i32) -> Value {
    let v = run.json();
    let e = &v["error"];
    assert_eq!((e["code"].as_str(), e["exit"].as_i64()), (Some(code), Some(exit as i64)), "{v}\n{}", run.stderr);
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    e.clone()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    free_addr().port()
}

const SEND: &[&str] = &["commands", "send", "--store", "s1", "--requested-by", "rita"];
const MENU: &[&str] = &["--kind", "apply_menu_publish", "--menu-id", "m", "--version", "1"];

fn send(tenant: &'static str, extra: &[&'static str]) -> Vec<&'static str> {
    [SEND, &["--tenant", tenant], MENU, extra].concat()
}

/// The device of acme's store s1 that `send` needs (a command to a store without one is refused).
async fn add_store(pool: &sqlx::PgPool) {
    let add = "INSERT INTO devices (tenant_id, store_id, device_id) VALUES ('acme', 's1', 'till-1')";
    sqlx::query(add).execute(pool).await.unwrap();
}

#[tokio::test]
async fn exit_codes_are_the_documented_ones() {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let (nats, db) = (stack.nats.url(), stack.db.url.clone());
    let dir = tempfile::tempdir().unwrap();
    let change = dir.path().join("change.json");
    std::fs::write(&change, r#"{"changes": [{"op": "delete", "type": "tender", "id": "cash"}]}"#).unwrap();
    let change = change.to_str().unwrap().to_string();
    let unknown_id = uuid::Uuid::new_v4().to_string();

    // command, exit code, and with --json the error object's code (None: a success document).
    let table: Vec<(Vec<&str>, i32, Option<&str>)> = vec![
        (vec!["tenants", "list"], 0, None),
        (vec!["migrate"], 0, None),
        (vec!["status", "--bogus"], 2, Some("usage")),
        (vec!["replay", "--into-live", "--store", "s1"], 2, Some("usage")),
        (vec!["replay", "--into-live", "--tenant", "acme", "--device", "d"], 2, Some("usage")),
        (vec!["replay", "--into-live", "--verify"], 2, Some("usage")),
        (vec!["commands", "list", "--state", "bogus"], 2, Some("usage")),
        ([SEND, &["--tenant", "acme", "--kind", "bogus"]].concat(), 2, Some("usage")),
        (send("acme", &["--payload-json", "{not json"]), 2, Some("usage")),
        (vec!["replay", "--into-live", "--from-time", "yesterday"], 2, Some("usage")),
        // No broker runs: no instance reports, the streams are missing.
        (vec!["status", "--timeout-s", "5"], 3, None),
        (vec!["commands", "show", &unknown_id], 4, Some("not_found")),
        (vec!["commands", "cancel", &unknown_id], 4, Some("not_found")),
        (vec!["config", "publish", "--tenant", "nobody", &change], 4, Some("unknown_tenant")),
        (send("nobody", &[]), 4, Some("unknown_tenant")),
    ];
    for (args, want, error) in table {
        let human = cli(&nats, &db, &args).await;
        assert_eq!(human.code, want, "tillsync {}\n{}{}", args.join(" "), human.stdout, human.stderr);
        let json = cli(&nats, &db, &[&args[..], &["--json"]].concat()).await;
        assert_eq!(json.code, want, "tillsync {} --json\n{}{}", args.join(" "), json.stdout, json.stderr);
        match error {
            Some(code) => {
                error_object(&json, code, want);
                assert!(human.stderr.starts_with("error: "), "{}", human.stderr);
            }
            None => assert!(json.json().get("error").is_none(), "{}", json.stdout),
        }
    }
}

#[tokio::test]
async fn an_unknown_tenant_is_refused_at_once_with_the_fix() {
    let stack = Stack::start().await;
    let asked = Instant::now();
    let run = cli(&stack.nats.url(), &stack.db.url, &send("ghost", &["--wait", "--wait-s", "30"])).await;
    assert!(asked.elapsed() < Duration::from_secs(5), "took {:?}", asked.elapsed());
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stdout.is_empty(), "no command id: nothing was sent");
    assert!(run.stderr.contains("unknown tenant ghost"), "{}", run.stderr);
    assert!(run.stderr.contains("hint: add the tenant first: tillsync tenants add ghost"), "{}", run.stderr);
    assert!(!run.stderr.contains("latest") && !run.stderr.contains('{'), "{}", run.stderr);
    let js = stack.nats.jetstream().await;
    assert!(js.get_stream(streams::INTAKE).await.is_err(), "nothing was published (no broker made the stream)");
}

#[tokio::test]
async fn a_send_the_broker_quarantines_stops_the_wait() {
    let stack = Stack::start().await;
    // The broker makes the streams, then stops: the command waits on intake for the next one.
    InProcBroker::start(stack.broker_config()).await.stop().await;
    add_tenant(&stack.db.pool, "acme").await;
    add_store(&stack.db.pool).await;
    let (nats, db) = (stack.nats.url(), stack.db.url.clone());
    // Nobody answers: the wait ends with what was heard, in words.
    let run = cli(&nats, &db, &[&send("acme", &["--wait", "--wait-s", "2"])[..], &["--json"]].concat()).await;
    let e = error_object(&run, "wait_timed_out", 1);
    assert!(e["message"].as_str().unwrap().ends_with("within 2 s (no status message arrived)"), "{e}");
    assert!(e["hint"].as_str().unwrap().contains("tillsync status"), "{e}");
    let waiting = tokio::spawn(async move { cli(&nats, &db, &send("acme", &["--wait", "--wait-s", "60"])).await });
    let js = stack.nats.jetstream().await;
    eventually(DEFAULT_TIMEOUT, "the command is on intake", || {
        let js = js.clone();
        async move {
            let mut s = js.get_stream(streams::INTAKE).await.ok()?;
            (s.info().await.ok()?.state.messages == 2).then_some(())
        }
    })
    .await;
    // Removed after the CLI's check: the broker quarantines the command as unknown_tenant.
    sqlx::query("DELETE FROM devices WHERE tenant_id = 'acme'").execute(&stack.db.pool).await.unwrap();
    sqlx::query("DELETE FROM tenants WHERE tenant_id = 'acme'").execute(&stack.db.pool).await.unwrap();
    let broker = InProcBroker::start(stack.broker_config()).await;
    let asked = Instant::now();
    let run = waiting.await.unwrap();
    assert!(asked.elapsed() < Duration::from_secs(30), "took {:?}", asked.elapsed());
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("(command)  quarantined  unknown_tenant"), "{}", run.stdout);
    assert!(run.stderr.contains("tillsync quarantine show"), "{}", run.stderr);
    broker.stop().await;
}

#[tokio::test]
async fn postgres_down_and_not_migrated_name_the_fix() {
    let stack = Stack::start().await;
    let nats = stack.nats.url();
    let down = format!("postgres://postgres:secret@127.0.0.1:{}/tillsync", closed_port());
    let run = cli(&nats, &down, &["commands", "list", "--json"]).await;
    let e = error_object(&run, "postgres_unreachable", 1);
    let hint = e["hint"].as_str().unwrap();
    assert!(hint.contains("is Postgres running at postgres://postgres:***@127.0.0.1:"), "{hint}");
    assert!(hint.contains("DATABASE_URL or --database-url"), "{hint}");
    assert!(!run.stderr.contains("secret") && !run.stdout.contains("secret"), "the password stays hidden");
    // One direct attempt names the cause at once, rather than a pool timing out 10 s later.
    assert!(!run.stderr.contains("pool timed out"), "{}", run.stderr);
    let message = e["message"].as_str().unwrap();
    assert!(message.to_lowercase().contains("connection refused"), "the cause is named: {message}");

    // An empty database: every table is missing.
    let empty = format!("tillsync_empty_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {empty}")).execute(&stack.db.pool).await.unwrap();
    let url = format!("{}/{empty}", stack.db.url.rsplit_once('/').unwrap().0);
    let run = cli(&nats, &url, &["tenants", "list"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("hint: the database is not migrated: run `tillsync migrate`"), "{}", run.stderr);
    let run = cli(&nats, &url, &["commands", "show", &uuid::Uuid::new_v4().to_string(), "--json"]).await;
    error_object(&run, "not_migrated", 1);
    let status = cli(&nats, &url, &["status", "--json", "--timeout-s", "5"]).await;
    assert_eq!(status.code, 3, "{}", status.stderr);
    let hint = status.json()["postgres"]["hint"].clone();
    assert!(hint.as_str().is_some_and(|h| h.contains("run `tillsync migrate`")), "{hint}");
    cli(&nats, &url, &["migrate"]).await.ok();
    assert_eq!(cli(&nats, &url, &["tenants", "list"]).await.code, 0);
    let missing = format!("{}/no_such_database_{}", stack.db.url.rsplit_once('/').unwrap().0, closed_port());
    error_object(&cli(&nats, &missing, &["tenants", "list", "--json"]).await, "postgres_no_database", 1);
    let drop = format!("DROP DATABASE {empty} WITH (FORCE)");
    sqlx::query(&drop).execute(&stack.db.pool).await.unwrap();
}

#[tokio::test]
async fn a_nats_failure_is_said_once_with_the_fix() {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    add_store(&stack.db.pool).await;
    let down = format!("nats://127.0.0.1:{}", closed_port());
    let run = cli(&down, &stack.db.url, &send("acme", &[])).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let said = format!("cannot connect to NATS at {down}");
    assert_eq!(run.stderr.matches(&said).count(), 1, "the chain once:\n{}", run.stderr);
    assert_eq!(run.stderr.lines().filter(|l| l.starts_with("error: ")).count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("hint: is nats-server running there? set NATS_URL or --nats-url"), "{}", run.stderr);
    let run = cli(&down, &stack.db.url, &[&send("acme", &[])[..], &["--json"]].concat()).await;
    error_object(&run, "nats_unreachable", 1);
    let status = cli(&down, &stack.db.url, &["status", "--json", "--timeout-s", "5"]).await;
    assert_eq!(status.code, 3, "{}", status.stderr);
    let v = status.json();
    assert!(v["nats"]["hint"].as_str().is_some_and(|h| h.contains("--nats-url")), "{v}");
    let problem = format!("NATS unreachable at {down}: ");
    let said: Vec<&Value> =
        v["problems"].as_array().unwrap().iter().filter(|p| p.as_str().unwrap().contains(&problem)).collect();
    assert_eq!(said.len(), 1, "{v}");
    assert_eq!(said[0].as_str().unwrap().matches(&down).count(), 1, "the URL once: {v}");
}

#[tokio::test]
async fn nats_refusing_the_credentials_names_them() {
    let stack = Stack::start_with_auth().await;
    add_tenant(&stack.db.pool, "acme").await;
    add_store(&stack.db.pool).await;
    let run = cli(&stack.nats.url(), &stack.db.url, &[&send("acme", &[])[..], &["--json"]].concat()).await;
    let e = error_object(&run, "nats_unauthorized", 1);
    assert!(e["hint"].as_str().unwrap().contains("--nats-creds"), "{e}");
    let said = run.stderr.to_lowercase().matches("authorization violation").count();
    assert_eq!(said, 1, "the cause once:\n{}", run.stderr);
}

#[tokio::test]
async fn completions_and_man_pages_are_generated() {
    let none = "postgres://x@127.0.0.1:1/x";
    let run = cli("nats://127.0.0.1:1", none, &["completions", "bash"]).await.ok();
    for word in ["tillsync", "status", "commands", "replay", "--database-url"] {
        assert!(run.stdout.contains(word), "{word} missing from the bash completions");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let run = cli("nats://127.0.0.1:1", none, &["completions", shell]).await.ok();
        assert!(run.stdout.contains("tillsync"), "{shell}");
    }
    assert_eq!(cli("nats://127.0.0.1:1", none, &["completions", "tcsh"]).await.code, 2);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    cli("nats://127.0.0.1:1", none, &["man", "--out-dir", out.to_str().unwrap()]).await.ok();
    for page in ["tillsync.1", "tillsync-status.1", "tillsync-commands-send.1", "tillsync-replay.1"] {
        let text = std::fs::read_to_string(out.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.lines().any(|l| l.starts_with(".TH ")), "{page} has no .TH header");
    }
    let send = std::fs::read_to_string(out.join("tillsync-commands-send.1")).unwrap();
    assert!(send.contains("requested\\-by") && send.contains("Who asks for the command"), "{send}");
}

#[tokio::test]
async fn boolean_variables_take_yes_no_one_zero_on_off() {
    let print = |value: &'static str| async move {
        let out = tokio::process::Command::new(bin_path("tillsync-broker"))
            .arg("--print-config")
            .env("TILLSYNC_SIGNING_KEY_FILE", tillsync_broker::admin::signing::test_key_file())
            .env("TILLSYNC_AUTO_TENANTS", value)
            .output()
            .await
            .unwrap();
        let v: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        (out.status.code(), v.and_then(|v| v["TILLSYNC_AUTO_TENANTS"].as_str().map(str::to_string)))
    };
    for (value, want) in [("yes", "true"), ("1", "true"), ("on", "true"), ("no", "false"), ("0", "false")] {
        assert_eq!(print(value).await, (Some(0), Some(want.to_string())), "TILLSYNC_AUTO_TENANTS={value}");
    }
    assert_eq!(print("maybe").await.0, Some(2));
}

#[tokio::test]
async fn a_wrong_postgres_password_names_the_fix() {
    let certs = tillsync_tests::Certs::generate();
    let pg = tillsync_tests::TlsPostgres::start(&certs);
    pg.require_password("right").await;
    let url = pg.url("sslmode=require").replace("postgres@", "postgres:wrong@");
    let run = cli("nats://127.0.0.1:1", &url, &["tenants", "list", "--json"]).await;
    let e = error_object(&run, "postgres_unauthorized", 1);
    let hint = e["hint"].as_str().unwrap();
    assert!(hint.contains("check the user and password in DATABASE_URL"), "{hint}");
    assert!(!run.stderr.contains("wrong") && !run.stdout.contains(":wrong@"), "the password stays hidden");
    // The right password gets in (to a database not migrated: the next fix is named).
    let run = cli("nats://127.0.0.1:1", &url.replace(":wrong@", ":right@"), &["tenants", "list", "--json"]).await;
    error_object(&run, "not_migrated", 1);
}
