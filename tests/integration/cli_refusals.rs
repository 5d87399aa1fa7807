//! `tillsync` tells the truth about what it is asked for. What the command line names and does
//! not exist (a tenant, store, device, command, approver, portal key, quarantined message,
//! configuration version) is exit 4, an `error:` naming it and a `hint:` saying where to look
//! (`--json`: the error object, exit 4, with the hint), and nothing changes; a value no
//! tillsync id can be (`a b`, `--target-schema Bad`) is a usage error, exit 2.
//!
//! The subcommands and their arguments are read from `tillsync -h` itself, recursively: every
//! subcommand needs a row below or a place in [`NAMES_NOTHING`], and every argument that names
//! something (`--tenant`, `--store`, `--device`, `--approver`, `--key`, `TENANT`, `APPROVER`,
//! `COMMAND_ID`, `ID`) a row that mistypes it or a reason in [`NOT_CHECKED`]. A new subcommand
//! or argument without one fails here.
//!
//! Also: global options are accepted before and after the subcommand, usage lines show what
//! is required (not what the environment set), `tillsync status` checks the configuration
//! streams and distribution, with what it could not read shown as unknown, and `tillsync
//! bench`/`chaos` without tillsync-lab beside tillsync say how to build it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use tillsync_schemas::{codec, CommandBody, CommandEnvelope, SCHEMA_VERSION};
use tillsync_tests::{bin_path, free_addr, Stack};

use crate::common::add_tenant;
use crate::ops::Run;

/// The arguments that name something that must exist.
const NAMING: &[&str] =
    &["--tenant", "--store", "--device", "--approver", "--key", "TENANT", "APPROVER", "COMMAND_ID", "ID"];

/// Subcommands whose arguments name nothing in the database (paths, counts, thresholds).
const NAMES_NOTHING: &[&str] = &[
    "auth init",
    "auth routes",
    "auth tls",
    "bench actors",
    "bench commands",
    "bench config",
    "bench fleet",
    "bench fsync",
    "bench ingest",
    "bench latency",
    "bench replay",
    "bench scale",
    "chaos",
    "completions",
    "keys generate",
    "keys public",
    "man",
    "status",
    "tenants list",
];

/// Naming arguments no row mistypes, and why.
const NOT_CHECKED: &[(&str, &str, &str)] = &[
    ("tenants add", "TENANT", "it provisions the tenant it names"),
    ("devices add", "--store", "it provisions the store it names"),
    ("devices add", "--device", "it provisions the device it names"),
    ("approvers add", "APPROVER", "it registers the approver it names"),
];

/// Codes an exit 4 may carry.
const MISSING_CODES: &[&str] =
    &["unknown_tenant", "unknown_store", "unknown_device", "unknown_approver", "unknown_portal_key", "not_found"];

/// Runs `tillsync` with exactly the environment given (NATS and Postgres where it says).
async fn cli(env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(bin_path("tillsync"));
    cmd.args(args).stdin(std::process::Stdio::null());
    for var in ["NATS_URL", "DATABASE_URL", "NATS_CREDS", "TILLSYNC_OPERATOR", "TILLSYNC_ACTOR"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    Run::of(cmd.output().await.expect("run tillsync"))
}

/// The section `title` of a `-h` text: its lines up to the next blank line.
fn section<'a>(help: &'a str, title: &str) -> Vec<&'a str> {
    help.lines().skip_while(|l| *l != title).skip(1).take_while(|l| !l.trim().is_empty()).collect()
}

/// Every leaf subcommand (as its path, `devices list`) with the naming arguments it takes.
async fn subcommands() -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![String::new()];
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.split_whitespace().collect();
        args.push("-h");
        let run = cli(&[], &args).await;
        assert_eq!(run.code, 0, "tillsync {}\n{}", args.join(" "), run.stderr);
        let subs: Vec<String> = section(&run.stdout, "Commands:")
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| *name != "help")
            .map(|name| format!("{path} {name}").trim().to_string())
            .collect();
        if !subs.is_empty() {
            todo.extend(subs);
            continue;
        }
        let mut named = BTreeSet::new();
        // The first word of each argument's line (a wrapped description continues without one).
        for line in section(&run.stdout, "Arguments:").iter().map(|l| l.trim_start()) {
            if line.starts_with(['<', '[']) {
                let word = line.split_whitespace().next().unwrap_or_default();
                named.insert(word.trim_matches(|c| "<>[].".contains(c)).to_string());
            }
        }
        for line in section(&run.stdout, "Options:").iter().map(|l| l.trim_start()) {
            if line.starts_with('-') {
                named.extend(line.split_whitespace().find(|w| w.starts_with("--")).map(|w| w.to_string()));
            }
        }
        named.retain(|a| NAMING.contains(&a.as_str()));
        out.insert(path, named);
    }
    out
}

/// One mistyped (exit 4) or invalid (exit 2) argument of a subcommand.
struct Row {
    /// The subcommand, as `devices list`.
    path: &'static str,
    args: Vec<String>,
    exit: i32,
    /// The naming argument the row mistypes (exit 4) and the value the error must name.
    mistyped: Option<(&'static str, String)>,
}

fn refused(path: &'static str, arg: &'static str, typo: &str, args: &[&str]) -> Row {
    Row { path, args: owned(args), exit: 4, mistyped: Some((arg, typo.to_string())) }
}

fn invalid(path: &'static str, args: &[&str]) -> Row {
    Row { path, args: owned(args), exit: 2, mistyped: None }
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// A command waiting for approval, as the broker records one (no broker runs here).
async fn pending_command(pool: &sqlx::PgPool) -> String {
    let now = tillsync_schemas::now_ms();
    let cmd = CommandEnvelope {
        schema_version: SCHEMA_VERSION,
        command_id: uuid::Uuid::new_v4().to_string(),
        tenant_id: "acme".into(),
        store_id: "s1".into(),
        device_id: Some("till-1".into()),
        body: CommandBody::VoidOrder { order_id: "o-1".into(), reason: "typo".into() },
        issued_at_ms: now,
        expires_at_ms: now + 3_600_000,
        requested_by: "rita".into(),
        approvals: vec![],
        if_match: None,
    };
    sqlx::query(
        "INSERT INTO commands (tenant_id, store_id, command_id, device_id, kind, envelope, requested_by, approvers,
                               issued_at, expires_at, pending_approval)
         VALUES ('acme', 's1', $1, 'till-1', 'void_order', $2, 'rita', '{}', now(), now() + interval '1 hour', true)",
    )
    .bind(&cmd.command_id)
    .bind(codec::encode(&cmd))
    .execute(pool)
    .await
    .unwrap();
    cmd.command_id
}

#[tokio::test]
async fn every_subcommand_refuses_what_does_not_exist() {
    let stack = Stack::start().await;
    let (nats, db) = (stack.nats.url(), stack.db.url.clone());
    let env = [("NATS_URL", nats.as_str()), ("DATABASE_URL", db.as_str()), ("TILLSYNC_ACTOR", "test")];
    // The world: one tenant, one store, one device, two approvers, one command waiting.
    add_tenant(&stack.db.pool, "acme").await;
    cli(&env, &["devices", "add", "--tenant", "acme", "--store", "s1", "--device", "till-1"]).await.ok();
    let pending = pending_command(&stack.db.pool).await;
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let key_file = path("alice.nk");
    tillsync_broker::admin::keyfile::write_new(std::path::Path::new(&key_file), &nkeys::KeyPair::new_user()).unwrap();
    let tenant_wide = path("tenant.json");
    std::fs::write(&tenant_wide, r#"{"changes": [{"op": "delete", "type": "tender", "id": "cash"}]}"#).unwrap();
    let settings = path("settings.json");
    std::fs::write(
        &settings,
        r#"{"changes": [{"op": "upsert", "type": "setting", "id": "receipt", "body": {"values": {}}}]}"#,
    )
    .unwrap();
    let stranger_key = nkeys::KeyPair::new_user().public_key();
    let unknown_id = uuid::Uuid::new_v4().to_string();
    let (unknown, p) = (unknown_id.as_str(), pending.as_str());
    let send = |extra: &[&str]| -> Vec<String> {
        let base = ["commands", "send", "--kind", "apply_menu_publish", "--menu-id", "m", "--version", "1"];
        owned(&[&base[..], &["--requested-by", "rita"], extra].concat())
    };
    let decide = |verb: &str, id: &str, extra: &[&str]| {
        owned(&[&["commands", verb, id, "--key-file", key_file.as_str()][..], extra].concat())
    };
    let dev = |t: &str, s: &str, d: &str| ["--tenant", t, "--store", s, "--device", d].map(String::from);

    let mut rows = vec![
        refused("commands list", "--tenant", "acme-typo", &["commands", "list", "--tenant", "acme-typo"]),
        refused("commands list", "--store", "s9", &["commands", "list", "--tenant", "acme", "--store", "s9"]),
        refused("commands list", "--device", "till-9", &["commands", "list", "--device", "till-9"]),
        invalid("commands list", &["commands", "list", "--tenant", "a b"]),
        refused("commands show", "COMMAND_ID", unknown, &["commands", "show", unknown]),
        refused("commands show", "--tenant", "acme-typo", &["commands", "show", p, "--tenant", "acme-typo"]),
        invalid("commands show", &["commands", "show", "not-a-command-id"]),
        refused("commands cancel", "COMMAND_ID", unknown, &["commands", "cancel", unknown]),
        refused("commands cancel", "--tenant", "acme-typo", &["commands", "cancel", p, "--tenant", "acme-typo"]),
        invalid("commands cancel", &["commands", "cancel", "x"]),
        invalid("migrate", &["migrate", "--schema", "Bad"]),
        refused("replay", "--tenant", "acme-typo", &["replay", "--into-live", "--tenant", "acme-typo"]),
        refused("replay", "--store", "s9", &["replay", "--into-live", "--tenant", "acme", "--store", "s9"]),
        invalid("replay", &["replay", "--target-schema", "Bad"]),
        refused("quarantine list", "--tenant", "acme-typo", &["quarantine", "list", "--tenant", "acme-typo"]),
        refused("quarantine show", "ID", "424242", &["quarantine", "show", "424242"]),
        invalid("quarantine show", &["quarantine", "show", "first"]),
        refused("quarantine redrive", "ID", "424242", &["quarantine", "redrive", "424242"]),
        refused("quarantine redrive", "--tenant", "acme-typo", &["quarantine", "redrive", "--tenant", "acme-typo"]),
        invalid("quarantine redrive", &["quarantine", "redrive", "--since", "2h"]),
        invalid("quarantine redrive", &["quarantine", "redrive", "--reason", "bogus"]),
        invalid("quarantine list", &["quarantine", "list", "--reason", "bogus"]),
        refused("quarantine dismiss", "ID", "424242", &["quarantine", "dismiss", "424242", "--note", "typo"]),
        refused(
            "quarantine dismiss",
            "--tenant",
            "acme-typo",
            &["quarantine", "dismiss", "--tenant", "acme-typo", "--note", "typo"],
        ),
        refused("devices list", "--tenant", "acme-typo", &["devices", "list", "--tenant", "acme-typo"]),
        refused("devices list", "--store", "s9", &["devices", "list", "--tenant", "acme", "--store", "s9"]),
        invalid("devices list", &["devices", "list", "--store", "s 1"]),
        refused(
            "devices add",
            "--tenant",
            "acme-typo",
            &["devices", "add", "--tenant", "acme-typo", "--store", "s1", "--device", "d"],
        ),
        invalid("devices add", &["devices", "add", "--tenant", "acme", "--store", "s1", "--device", "till 2"]),
        refused(
            "portals add",
            "--tenant",
            "acme-typo",
            &["portals", "add", "--tenant", "acme-typo", "--out", &path("p.nk")],
        ),
        refused("portals revoke", "--key", &stranger_key, &["portals", "revoke", "--key", &stranger_key]),
        invalid("portals revoke", &["portals", "revoke", "--key", "UNOTAKEY"]),
        invalid("tenants add", &["tenants", "add", "acme corp"]),
        refused("tenants decommission", "TENANT", "acme-typo", &["tenants", "decommission", "acme-typo", "--yes"]),
        refused(
            "approvers add",
            "--tenant",
            "acme-typo",
            &["approvers", "add", "--tenant", "acme-typo", "carol", "--public-key", &stranger_key],
        ),
        invalid("approvers add", &["approvers", "add", "--tenant", "acme", "carol.x", "--public-key", &stranger_key]),
        refused("approvers list", "--tenant", "acme-typo", &["approvers", "list", "--tenant", "acme-typo"]),
        refused(
            "approvers revoke",
            "--tenant",
            "acme-typo",
            &["approvers", "revoke", "--tenant", "acme-typo", "alice"],
        ),
        refused("approvers revoke", "APPROVER", "carol", &["approvers", "revoke", "--tenant", "acme", "carol"]),
        refused(
            "config publish",
            "--tenant",
            "acme-typo",
            &["config", "publish", "--tenant", "acme-typo", &tenant_wide],
        ),
        refused(
            "config publish",
            "--store",
            "s9",
            &["config", "publish", "--tenant", "acme", "--store", "s9", &settings],
        ),
        refused("config show", "--tenant", "acme-typo", &["config", "show", "--tenant", "acme-typo", "--store", "s1"]),
        refused("config show", "--store", "s9", &["config", "show", "--tenant", "acme", "--store", "s9"]),
        refused(
            "config show",
            "--version",
            "9",
            &["config", "show", "--tenant", "acme", "--store", "s1", "--version", "9"],
        ),
        refused(
            "config diff",
            "--tenant",
            "acme-typo",
            &["config", "diff", "--tenant", "acme-typo", "--store", "s1", "1", "2"],
        ),
        refused("config diff", "--store", "s9", &["config", "diff", "--tenant", "acme", "--store", "s9", "1", "2"]),
        refused("config status", "--tenant", "acme-typo", &["config", "status", "--tenant", "acme-typo"]),
        invalid("config status", &["config", "status", "--tenant", "-acme"]),
    ];
    // The device subcommands: each part of the address mistyped in turn.
    for (path, verb) in [
        ("devices rotate", "rotate"),
        ("devices revoke", "revoke"),
        ("devices decommission", "decommission"),
        ("devices show", "show"),
    ] {
        for (arg, typo, addr) in [
            ("--tenant", "acme-typo", dev("acme-typo", "s1", "till-1")),
            ("--store", "s9", dev("acme", "s9", "till-1")),
            ("--device", "till-9", dev("acme", "s1", "till-9")),
        ] {
            let mut args = owned(&["devices", verb]);
            args.extend(addr);
            if verb == "decommission" {
                args.push("--yes".into());
            }
            rows.push(Row { path, args, exit: 4, mistyped: Some((arg, typo.into())) });
        }
    }
    rows.push(invalid(
        "devices revoke",
        &["devices", "revoke", "--tenant", "acme", "--store", "s1", "--device", "t/1"],
    ));
    rows.push(Row {
        path: "replay",
        args: owned(&["replay", "--into-live", "--tenant", "acme", "--store", "s1", "--device", "till-9"]),
        exit: 4,
        mistyped: Some(("--device", "till-9".into())),
    });
    // Sending: each part of the address, before anything is published.
    for (arg, typo, addr) in [
        ("--tenant", "acme-typo", dev("acme-typo", "s1", "till-1")),
        ("--store", "s9", dev("acme", "s9", "till-1")),
        ("--device", "till-9", dev("acme", "s1", "till-9")),
    ] {
        let addr: Vec<&str> = addr.iter().map(String::as_str).collect();
        rows.push(Row { path: "commands send", args: send(&addr), exit: 4, mistyped: Some((arg, typo.into())) });
    }
    rows.push(Row {
        path: "commands send",
        args: send(&["--tenant", "acme", "--store", "s 1"]),
        exit: 2,
        mistyped: None,
    });
    for (path, verb) in [("commands approve", "approve"), ("commands reject", "reject")] {
        let approver = ["--approver", "alice"];
        rows.push(Row {
            path,
            args: decide(verb, unknown, &approver),
            exit: 4,
            mistyped: Some(("COMMAND_ID", unknown.into())),
        });
        let typo = [&approver[..], &["--tenant", "acme-typo"]].concat();
        rows.push(Row {
            path,
            args: decide(verb, p, &typo),
            exit: 4,
            mistyped: Some(("--tenant", "acme-typo".into())),
        });
        let nobody = ["--approver", "carol"];
        rows.push(Row {
            path,
            args: decide(verb, p, &nobody),
            exit: 4,
            mistyped: Some(("--approver", "carol".into())),
        });
        rows.push(Row { path, args: decide(verb, "x", &approver), exit: 2, mistyped: None });
    }

    // Coverage: from the command tree itself.
    let tree = subcommands().await;
    assert!(tree.len() > 40, "the tree was read: {tree:?}");
    let mut missing = Vec::new();
    for (path, named) in &tree {
        let has_rows = rows.iter().any(|r| r.path == path);
        match (has_rows, NAMES_NOTHING.contains(&path.as_str())) {
            (false, false) => missing.push(format!("{path}: no row, and not in NAMES_NOTHING")),
            (_, true) if !named.is_empty() => {
                missing.push(format!("{path} is in NAMES_NOTHING but takes {named:?}"));
            }
            _ => {}
        }
        for arg in named {
            let covered = rows.iter().any(|r| r.path == path && r.mistyped.as_ref().is_some_and(|(a, _)| a == arg));
            let excused = NOT_CHECKED.iter().any(|(p, a, _)| p == path && a == arg);
            if !covered && !excused {
                missing.push(format!("{path} {arg}: no row mistypes it, and it is not in NOT_CHECKED"));
            }
        }
    }
    for row in &rows {
        if !tree.contains_key(row.path) {
            missing.push(format!("row for {}, which is not a subcommand", row.path));
        }
    }
    assert!(missing.is_empty(), "subcommands without their refusal rows:\n{}", missing.join("\n"));

    for row in &rows {
        let args: Vec<&str> = row.args.iter().map(String::as_str).collect();
        let human = cli(&env, &args).await;
        let shown = format!("tillsync {}\n{}{}", args.join(" "), human.stdout, human.stderr);
        assert_eq!(human.code, row.exit, "{shown}");
        let error = human.stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{shown}"));
        if let Some((_, typo)) = &row.mistyped {
            assert!(error.contains(typo.as_str()), "the error names {typo}: {shown}");
            assert!(human.stderr.lines().any(|l| l.starts_with("hint: ") && l.len() > 10), "a hint: {shown}");
            let json = cli(&env, &[&args[..], &["--json"]].concat()).await;
            assert_eq!(json.code, 4, "--json: {shown}");
            let v: Value = json.json();
            let e = &v["error"];
            assert_eq!(e["exit"], 4, "{v}");
            assert!(MISSING_CODES.contains(&e["code"].as_str().unwrap_or_default()), "{v}");
            assert!(e["hint"].as_str().is_some_and(|h| !h.is_empty()), "{v}");
        }
    }

    // Nothing was created, revoked or audited for what does not exist.
    let count = |sql: &'static str| {
        let pool = stack.db.pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap() }
    };
    assert_eq!(count("SELECT count(*) FROM tenants").await, 1);
    assert_eq!(count("SELECT count(*) FROM devices").await, 1);
    assert_eq!(count("SELECT count(*) FROM credentials").await, 0);
    assert_eq!(count("SELECT count(*) FROM approvers").await, 2);
    assert_eq!(
        count(
            "SELECT count(*) FROM identity_audit WHERE action <> 'code_issued' OR device_id IS DISTINCT FROM 'till-1'"
        )
        .await,
        0,
        "only the fixture's activation code is audited"
    );
    assert!(!std::path::Path::new(&path("p.nk")).exists(), "no portal seed written for an unknown tenant");
}

#[tokio::test]
async fn global_options_go_before_or_after_the_subcommand() {
    let stack = Stack::start().await;
    let db = stack.db.url.clone();
    let down = format!("nats://127.0.0.1:{}", free_addr().port());
    // Given before and after the subcommand, on the command line and against the environment.
    for args in [
        vec!["--nats-url", &down, "--database-url", &db, "--json", "status", "--timeout-s", "5"],
        vec!["status", "--timeout-s", "5", "--json", "--nats-url", &down, "--database-url", &db],
    ] {
        let run = cli(&[("NATS_URL", &stack.nats.url()), ("DATABASE_URL", "postgres://x@127.0.0.1:1/x")], &args).await;
        assert_eq!(run.code, 3, "{args:?}\n{}", run.stderr);
        let v = run.json();
        assert_eq!(v["postgres"]["reachable"], true, "--database-url taken: {v}");
        let problems = v["problems"].to_string();
        assert!(problems.contains(&format!("NATS unreachable at {down}")), "--nats-url taken: {problems}");
    }
    for args in [
        vec!["--database-url", &db, "--nats-creds", "/nonexistent/op.nk", "devices", "list"],
        vec!["devices", "list", "--nats-ca-file", "/nonexistent/ca.pem", "--database-url", &db],
        vec!["--json", "tenants", "list", "--database-url", &db],
    ] {
        let run = cli(&[], &args).await;
        assert_eq!(run.code, 0, "{args:?}\n{}", run.stderr);
    }
    // A usage error's usage line shows what is required, not what DATABASE_URL set.
    let run = cli(&[("DATABASE_URL", &db), ("NATS_URL", &down)], &["devices", "revoke", "--tenant", "acme"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    let usage = run.stderr.lines().find(|l| l.starts_with("Usage: ")).unwrap_or_else(|| panic!("{}", run.stderr));
    assert_eq!(usage, "Usage: tillsync devices revoke [OPTIONS] --tenant <TENANT> --store <STORE> --device <DEVICE>");
    let run = cli(&[("DATABASE_URL", &db)], &["--nats-url", &down, "--bogus", "status"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("Usage: tillsync [OPTIONS] <COMMAND>"), "{}", run.stderr);
}

#[tokio::test]
async fn status_reads_the_configuration_and_its_streams() {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let (nats, db) = (stack.nats.url(), stack.db.url.clone());
    let env = [("NATS_URL", nats.as_str()), ("DATABASE_URL", db.as_str()), ("TILLSYNC_ACTOR", "test")];
    cli(&env, &["devices", "add", "--tenant", "acme", "--store", "s1", "--device", "till-1"]).await.ok();
    let dir = tempfile::tempdir().unwrap();
    let change = dir.path().join("change.json");
    std::fs::write(&change, r#"{"changes": [{"op": "delete", "type": "tender", "id": "cash"}]}"#).unwrap();
    // No broker runs: the version is committed and stays undistributed.
    cli(&env, &["config", "publish", "--tenant", "acme", change.to_str().unwrap()]).await.ok();
    // The device's heartbeat said it runs none of it.
    sqlx::query("UPDATE devices SET config_revision = 0").execute(&stack.db.pool).await.unwrap();

    let quiet = cli(&env, &["status", "--json", "--timeout-s", "5"]).await;
    let v = quiet.json();
    let c = &v["config"];
    assert_eq!((c["undistributed"].as_i64(), c["devices_behind"].as_i64()), (Some(1), Some(1)), "{v:#}");
    assert_eq!(c["stores"][0]["store_id"], "s1", "{v:#}");
    let problems = v["problems"].to_string();
    assert!(!problems.contains("configuration version"), "both are younger than their thresholds: {problems}");
    // No broker made the streams: the configuration streams are checked with the others.
    for name in ["TILLSYNC_CONFIG", "TILLSYNC_CONFIG_SNAPSHOTS"] {
        assert!(problems.contains(&format!("stream {name} unavailable")), "{problems}");
    }

    let strict = ["status", "--timeout-s", "5", "--config-undistributed-s", "0", "--config-drift-s", "0"];
    let run = cli(&env, &strict).await;
    assert_eq!(run.code, 3);
    assert!(run.stdout.contains("CONFIGURATION: 1 version(s) undistributed"), "{}", run.stdout);
    assert!(run.stdout.contains("1 configuration version(s) committed more than 0 s ago"), "{}", run.stdout);
    assert!(run.stdout.contains("1 device(s) lack a configuration version"), "{}", run.stdout);

    // Postgres not answering: unknown, not 0.
    let down = cli(
        &[("NATS_URL", nats.as_str()), ("DATABASE_URL", &format!("postgres://x@127.0.0.1:{}/x", free_addr().port()))],
        &["status", "--timeout-s", "5"],
    )
    .await;
    assert_eq!(down.code, 3);
    assert!(down.stdout.contains("CONFIGURATION: unknown (Postgres did not answer)"), "{}", down.stdout);
}

/// `tillsync bench` and `tillsync chaos` become tillsync-lab from tillsync's own directory; a
/// tillsync installed alone refuses them with exit 2, naming the missing binary and the build
/// that makes it (`--json`: the error object).
#[test]
fn bench_and_chaos_without_tillsync_lab_say_how_to_build_it() {
    let built = bin_path("tillsync");
    // A hard link in the build directory's file system: a copy, still open for writing in
    // this process while another test forks, could fail to run with ETXTBSY.
    let dir = tempfile::tempdir_in(built.parent().unwrap()).unwrap();
    let alone = dir.path().join("tillsync");
    std::fs::hard_link(&built, &alone).unwrap();
    let missing = format!("{} not found", dir.path().join("tillsync-lab").display());
    for args in [&["bench", "fsync"][..], &["chaos", "--seconds", "5"], &["--json", "bench"], &["help", "bench"]] {
        let run = Run::of(std::process::Command::new(&alone).args(args).output().unwrap());
        let shown = format!("tillsync {}\n{}{}", args.join(" "), run.stdout, run.stderr);
        assert_eq!(run.code, 2, "{shown}");
        let error = run.stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{shown}"));
        assert!(error.contains("tillsync-lab") && error.contains(&missing), "{shown}");
        let hint = run.stderr.lines().find(|l| l.starts_with("hint: ")).unwrap_or_else(|| panic!("{shown}"));
        assert!(hint.contains("cargo build -p tillsync-lab"), "{shown}");
    }
    let run = Run::of(std::process::Command::new(&alone).args(["bench", "fsync", "--json"]).output().unwrap());
    let e = &run.json()["error"];
    assert_eq!((e["code"].as_str(), e["exit"].as_i64(), run.code), (Some("lab_not_installed"), Some(2), 2), "{e}");
}
