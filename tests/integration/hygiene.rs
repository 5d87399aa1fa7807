//! Fleet hygiene through the `tillsync` CLI against a live broker: bulk quarantine redrive and
//! dismissal, decommissioning a device (with NATS authorization on) and a tenant, the edge
//! command consumer's inactivity threshold, and replay's target-schema safety.

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use serde_json::{json, Value};
use tillsync_edge::Bridge;
use tillsync_schemas::{config, streams, subject, DeviceAddr};
use tillsync_tests::{eventually, eventually_eq, InProcBroker, Stack, DEFAULT_TIMEOUT as T};

use crate::common::*;
use crate::ops::tillsync;

/// Every quarantine row as text, to show a dry run changed nothing.
async fn quarantine_rows(stack: &Stack) -> Vec<String> {
    sqlx::query_scalar("SELECT q::text FROM quarantine q ORDER BY id").fetch_all(&stack.db.pool).await.unwrap()
}

fn ids(v: &Value, outcome: &str) -> Vec<i64> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["outcome"] == outcome)
        .map(|i| i["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn bulk_redrive_selects_by_reason_tenant_and_since_and_a_dry_run_changes_nothing() {
    let (stack, broker, js) = live().await;
    let (ghost, spook) = (DeviceAddr::new("ghost", "s1", "till-1"), DeviceAddr::new("spook", "s1", "till-1"));
    for seq in 1..=3 {
        publish(&js, &event(&ghost, seq, opened(&format!("o-{seq}")))).await;
    }
    for seq in 1..=2 {
        publish(&js, &event(&spook, seq, opened(&format!("s-{seq}")))).await;
    }
    let db = &stack.db;
    eventually_eq(T, "five quarantined", 5, || db.count("SELECT count(*) FROM quarantine")).await;
    // ghost's first message is two hours old: --since leaves it out.
    sqlx::query("UPDATE quarantine SET received_at = now() - interval '2 hours' WHERE id = (SELECT min(id) FROM quarantine WHERE tenant_id = 'ghost')")
        .execute(&db.pool)
        .await
        .unwrap();

    let bare = tillsync(&stack, &["quarantine", "redrive"]).await;
    assert_eq!(bare.code, 2, "a bulk redrive needs a selector: {}", bare.stderr);

    let before = quarantine_rows(&stack).await;
    let dry = tillsync(
        &stack,
        &["quarantine", "redrive", "--reason", "unknown_tenant", "--tenant", "ghost", "--dry-run", "--json"],
    )
    .await
    .ok()
    .json();
    assert_eq!((dry["dry_run"].clone(), dry["selected"].clone()), (json!(true), json!(3)), "{dry}");
    assert_eq!(dry["skipped"]["unknown_tenant"], json!(3), "the tenant is still unknown: {dry}");
    assert_eq!(quarantine_rows(&stack).await, before, "a dry run changes nothing");
    assert_eq!(db.count("SELECT count(*) FROM quarantine_redrives").await, 0);

    tillsync(&stack, &["tenants", "add", "ghost"]).await.ok();
    let dry =
        tillsync(&stack, &["quarantine", "redrive", "--tenant", "ghost", "--dry-run", "--json"]).await.ok().json();
    assert_eq!(ids(&dry, "would_redrive").len(), 3, "{dry}");
    assert_eq!(quarantine_rows(&stack).await, before, "a dry run changes nothing");

    let since = (tillsync_edge::now_ms() - 30 * 60 * 1000).to_string();
    let v = tillsync(
        &stack,
        &[
            "quarantine",
            "redrive",
            "--tenant",
            "ghost",
            "--since",
            &since,
            "--operator",
            "alice",
            "--note",
            "typo fixed",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(
        (v["selected"].clone(), v["redriven"].clone(), v["failed"].clone()),
        (json!(2), json!(2), json!(0)),
        "{v}"
    );
    let redriven = ids(&v, "redriven");
    let audit: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT quarantine_id, operator, note FROM quarantine_redrives ORDER BY quarantine_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(audit, redriven.iter().map(|&id| (id, "alice".into(), "typo fixed".into())).collect::<Vec<_>>());
    eventually_eq(T, "the two redriven events applied", 2, || {
        db.count("SELECT count(*) FROM orders WHERE tenant_id = 'ghost' AND order_id IN ('o-2', 'o-3')")
    })
    .await;
    assert_eq!(db.count("SELECT count(*) FROM orders WHERE order_id = 'o-1'").await, 0, "older than --since");

    // spook is still unknown: skipped, said so, and not an error.
    let v = tillsync(&stack, &["quarantine", "redrive", "--tenant", "spook", "--json"]).await.ok().json();
    assert_eq!((v["redriven"].clone(), v["skipped"]["unknown_tenant"].clone()), (json!(0), json!(2)), "{v}");
    let pending = tillsync(&stack, &["quarantine", "list", "--pending", "--json"]).await.ok().json();
    assert_eq!(pending.as_array().unwrap().len(), 3, "ghost's old one and spook's two: {pending}");
    broker.stop().await;
}

#[tokio::test]
async fn dismissed_messages_leave_the_pending_list_and_record_who_and_why() {
    let (stack, broker, js) = live().await;
    let ghost = DeviceAddr::new("ghost", "s1", "till-1");
    for seq in 1..=3 {
        publish(&js, &event(&ghost, seq, opened(&format!("o-{seq}")))).await;
    }
    let db = &stack.db;
    eventually_eq(T, "three quarantined", 3, || db.count("SELECT count(*) FROM quarantine")).await;
    let first = db.count("SELECT min(id) FROM quarantine").await.to_string();

    let no_note = tillsync(&stack, &["quarantine", "dismiss", &first]).await;
    assert_eq!(no_note.code, 2, "--note is required: {}", no_note.stderr);
    let v = tillsync(
        &stack,
        &["quarantine", "dismiss", &first, "--operator", "bob", "--note", "mistyped tenant", "--json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(v["dismissed"], json!(1), "{v}");
    let again = tillsync(&stack, &["quarantine", "dismiss", &first, "--note", "again", "--json"]).await.ok().json();
    assert_eq!((again["dismissed"].clone(), again["already"].clone()), (json!(0), json!(1)), "{again}");

    let before = quarantine_rows(&stack).await;
    let dry = tillsync(&stack, &["quarantine", "dismiss", "--tenant", "ghost", "--note", "x", "--dry-run", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(dry["ids"].as_array().unwrap().len(), 2, "only pending rows: {dry}");
    assert_eq!(quarantine_rows(&stack).await, before, "a dry run changes nothing");
    let v = tillsync(
        &stack,
        &["quarantine", "dismiss", "--tenant", "ghost", "--operator", "bob", "--note", "mistyped tenant", "--json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(v["dismissed"], json!(2), "{v}");

    let recorded: Vec<(String, String)> =
        sqlx::query_as("SELECT dismissed_by, dismiss_note FROM quarantine WHERE dismissed_at IS NOT NULL ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(recorded, vec![("bob".to_string(), "mistyped tenant".to_string()); 3]);
    let pending = tillsync(&stack, &["quarantine", "list", "--pending", "--json"]).await.ok().json();
    assert_eq!(pending, json!([]));
    assert_eq!(db.count("SELECT count(*) FROM quarantine_pending").await, 0);
    assert_eq!(db.count("SELECT count(*) FROM quarantine").await, 3, "the rows stay");

    // A dismissed message is redriven only on purpose.
    tillsync(&stack, &["tenants", "add", "ghost"]).await.ok();
    let bulk = tillsync(&stack, &["quarantine", "redrive", "--tenant", "ghost", "--json"]).await.ok().json();
    assert_eq!(bulk["selected"], json!(0), "{bulk}");
    let one = tillsync(&stack, &["quarantine", "redrive", &first]).await;
    assert_eq!(one.code, 1);
    assert!(one.stderr.contains("dismissed"), "{}", one.stderr);
    let shown = tillsync(&stack, &["quarantine", "show", &first, "--json"]).await.ok().json();
    assert_eq!(shown["dismiss_note"], json!("mistyped tenant"));
    broker.stop().await;
}

/// Consumer info of `name` on `stream`, or None when it is not there.
async fn consumer(js: &async_nats::jetstream::Context, stream: &str, name: &str) -> Option<pull::Config> {
    let s = js.get_stream(stream).await.ok()?;
    let info = s.consumer_info(name).await.ok()?;
    Some(pull::Config { inactive_threshold: info.config.inactive_threshold, ..Default::default() })
}

#[tokio::test]
async fn a_decommissioned_device_loses_its_consumers_and_credentials_and_cannot_come_back() {
    use crate::security::support::{activate, activated_config, cli};
    let (stack, dir) = (Stack::start_with_auth().await, tempfile::tempdir().unwrap());
    let broker = InProcBroker::start(stack.broker_config()).await;
    add_tenant(&stack.db.pool, "acme").await;
    let d = DeviceAddr::new("acme", "s1", "till-1");
    let config = activated_config(&stack, &d, dir.path()).await;
    let js = stack.nats.jetstream().await;
    let (cmd_name, cfg_name) = (streams::device_commands_consumer(&d), config::device_consumer(&d));

    // The consumers a bridge of the previous version made: the new bridge holds none, and
    // deletes these on start (docs/security.md, "Upgrading").
    let commands = eventually(T, "commands stream", || async { js.get_stream(streams::COMMANDS).await.ok() }).await;
    let cfg = eventually(T, "config stream", || async { js.get_stream(streams::CONFIG).await.ok() }).await;
    let old_cmd = || pull::Config {
        durable_name: Some(cmd_name.clone()),
        filter_subject: subject::commands(&d),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ..Default::default()
    };
    let old_cfg = || pull::Config {
        durable_name: Some(cfg_name.clone()),
        filter_subject: config::delta_subject(&d.tenant_id, &d.store_id),
        ..Default::default()
    };
    commands.create_consumer(old_cmd()).await.unwrap();
    cfg.create_consumer(old_cfg()).await.unwrap();
    let bridge = Bridge::start(config.clone()).await.unwrap();
    eventually(T, "the new bridge deleted both consumers of the previous version", || async {
        let gone = consumer(&js, streams::COMMANDS, &cmd_name).await.is_none()
            && consumer(&js, streams::CONFIG, &cfg_name).await.is_none();
        gone.then_some(())
    })
    .await;
    // A till still on the previous version holds them again; decommissioning deletes them.
    commands.create_consumer(old_cmd()).await.unwrap();
    cfg.create_consumer(old_cfg()).await.unwrap();

    let device = ["--tenant", "acme", "--store", "s1", "--device", "till-1"];
    let (exit, _) = cli(&stack, &[&["devices", "decommission"][..], &device].concat()).await;
    assert_eq!(exit, 2, "no terminal and no --yes: refused");
    assert_eq!(stack.db.count("SELECT count(*) FROM devices WHERE decommissioned_at IS NOT NULL").await, 0);
    assert!(consumer(&js, streams::COMMANDS, &cmd_name).await.is_some(), "nothing changed");

    let (exit, out) =
        cli(&stack, &[&["devices", "decommission", "--yes", "--reason", "store closed"][..], &device].concat()).await;
    assert_eq!(exit, 0, "{out}");
    assert_eq!((out["already"].clone(), out["credentials_revoked"].clone()), (json!(false), json!(1)), "{out}");
    assert_eq!(out["consumers_deleted"], json!([cmd_name, cfg_name]), "{out}");
    assert_eq!(out["disconnected"], json!(true), "deleted only once the broker cut the bridge off: {out}");
    assert!(consumer(&js, streams::COMMANDS, &cmd_name).await.is_none());
    assert!(consumer(&js, streams::CONFIG, &cfg_name).await.is_none());
    let db = &stack.db;
    assert_eq!(
        db.count("SELECT count(*) FROM devices WHERE decommissioned_at IS NOT NULL AND decommissioned_by = 'ops-test'")
            .await,
        1
    );
    assert_eq!(db.count("SELECT count(*) FROM credentials WHERE revoked_at IS NULL").await, 0);
    assert_eq!(
        db.count("SELECT count(*) FROM identity_audit WHERE action = 'decommissioned' AND reason = 'store closed'")
            .await,
        1
    );
    eventually(T, "bridge disconnected", || async {
        bridge.status().await.ok().filter(|s| s.connection != "connected").map(|_| ())
    })
    .await;
    eventually(T, "its reconnects refused", || async {
        (db.count("SELECT count(*) FROM identity_audit WHERE action = 'connection_refused' AND reason = 'revoked'")
            .await
            > 0)
        .then_some(())
    })
    .await;
    assert!(consumer(&js, streams::COMMANDS, &cmd_name).await.is_none(), "the bridge could not make it again");

    let (exit, again) = cli(&stack, &[&["devices", "decommission", "--yes"][..], &device].concat()).await;
    assert_eq!(
        (exit, again["already"].clone(), again["consumers_deleted"].clone()),
        (0, json!(true), json!([])),
        "{again}"
    );

    let (_, listed) = cli(&stack, &["devices", "list"]).await;
    assert_eq!(listed, json!([]), "hidden by default");
    let (_, listed) = cli(&stack, &["devices", "list", "--decommissioned"]).await;
    assert!(listed[0]["decommissioned_at"].is_string(), "{listed}");

    let (exit, _) = cli(&stack, &[&["devices", "add"][..], &device].concat()).await;
    assert_eq!(exit, 1, "no new activation code for a decommissioned device");
    let code = tillsync_tests::code_for(&db.pool, &d, "activate", 24).await;
    let other = tempfile::tempdir().unwrap();
    let refused = activate(&stack, &other.path().join("edge.db"), &code).await;
    assert_eq!((refused.exit, refused.json["code"].as_str()), (3, Some("decommissioned")), "{}", refused.json);
    bridge.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_decommissioned_tenant_takes_every_device_and_its_records_stay() {
    use crate::edge::support::{provision, send_via_portal};
    let (stack, broker, js) = live().await;
    let (d1, d2) = (DeviceAddr::new("acme", "s1", "till-1"), DeviceAddr::new("acme", "s2", "till-2"));
    let commands = eventually(T, "commands stream", || async { js.get_stream(streams::COMMANDS).await.ok() }).await;
    let cfg = eventually(T, "config stream", || async { js.get_stream(streams::CONFIG).await.ok() }).await;
    for d in [&d1, &d2] {
        provision(&stack, d).await;
        let cmd = pull::Config {
            durable_name: Some(streams::device_commands_consumer(d)),
            filter_subject: subject::commands(d),
            ..Default::default()
        };
        commands.create_consumer(cmd).await.unwrap();
        let c = pull::Config {
            durable_name: Some(config::device_consumer(d)),
            filter_subject: config::delta_subject(&d.tenant_id, &d.store_id),
            ..Default::default()
        };
        cfg.create_consumer(c).await.unwrap();
    }
    sqlx::query("INSERT INTO credentials (public_key, kind, tenant_id, created_by) VALUES ('UPORTAL', 'portal', 'acme', 'test')")
        .execute(&stack.db.pool)
        .await
        .unwrap();
    publish(&js, &event(&d1, 1, opened("o-1"))).await;
    send_via_portal(&js, &d1, 1).await;
    let db = &stack.db;
    eventually_eq(T, "a sale and a waiting command", 2, || {
        db.count("SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM command_inbox WHERE state IN ('queued', 'delivered'))")
    })
    .await;

    assert_eq!(tillsync(&stack, &["tenants", "decommission", "acme"]).await.code, 2, "no terminal and no --yes");
    let v = tillsync(&stack, &["tenants", "decommission", "acme", "--yes", "--json"]).await.ok().json();
    assert_eq!((v["already"].clone(), v["portal_credentials_revoked"].clone()), (json!(false), json!(1)), "{v}");
    assert_eq!(v["devices"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["devices"][0]["commands_cancelled"], json!(1), "{v}");
    for d in [&d1, &d2] {
        assert!(consumer(&js, streams::COMMANDS, &streams::device_commands_consumer(d)).await.is_none());
        assert!(consumer(&js, streams::CONFIG, &config::device_consumer(d)).await.is_none());
    }
    assert_eq!(db.count("SELECT count(*) FROM devices WHERE decommissioned_at IS NOT NULL").await, 2);
    assert_eq!(db.count("SELECT count(*) FROM tenants WHERE decommissioned_at IS NOT NULL").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM identity_audit WHERE action = 'tenant_decommissioned'").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM command_inbox WHERE state = 'cancelled'").await, 1);
    eventually_eq(T, "the portal is told the command was cancelled", 1, || {
        db.count("SELECT count(*) FROM command_log WHERE state = 'cancelled' AND published AND detail LIKE 'device decommissioned%'")
    })
    .await;

    // Sales already on their way still land (they happened); the records stay.
    publish(&js, &event(&d1, 2, opened("o-2"))).await;
    eventually_eq(T, "in-flight sale applied", 2, || db.count("SELECT count(*) FROM orders")).await;
    // New commands find no device to go to.
    send_via_portal(&js, &d2, 2).await;
    eventually_eq(T, "command to a decommissioned device refused", 1, || {
        db.count("SELECT count(*) FROM command_log WHERE state = 'rejected' AND code = 'unknown_device'")
    })
    .await;

    let listed = tillsync(&stack, &["tenants", "list", "--json"]).await.ok().json();
    assert!(listed[0]["decommissioned_at"].is_string(), "{listed}");
    assert_eq!(listed[0]["devices"], json!(0));
    assert_eq!(tillsync(&stack, &["tenants", "add", "acme"]).await.code, 1, "not provisioned again");
    let again = tillsync(&stack, &["tenants", "decommission", "acme", "--yes", "--json"]).await.ok().json();
    assert_eq!(again["already"], json!(true), "{again}");
    broker.stop().await;
}

async fn schema_exists(stack: &Stack, schema: &str) -> bool {
    stack.db.count(&format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'")).await == 1
}

#[tokio::test]
async fn replay_refuses_an_existing_rebuild_and_drops_a_schema_it_could_not_fill() {
    let (stack, broker, js) = live().await;
    let d = DeviceAddr::new("acme", "s1", "till-1");
    for seq in 1..=3 {
        publish(&js, &event(&d, seq, opened(&format!("o-{seq}")))).await;
    }
    wait_drained(&js).await;

    let first = tillsync(&stack, &["replay", "--target-schema", "shadow_a", "--json"]).await.ok().json();
    assert_eq!(first["applied"], json!(3), "{first}");
    let again = tillsync(&stack, &["replay", "--target-schema", "shadow_a", "--json"]).await;
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("--replace") && again.stderr.contains("--resume"), "{}", again.stderr);
    let replaced =
        tillsync(&stack, &["replay", "--target-schema", "shadow_a", "--replace", "--json"]).await.ok().json();
    assert_eq!((replaced["applied"].clone(), replaced["complete"].clone()), (json!(3), json!(true)), "{replaced}");
    assert_eq!(stack.db.count("SELECT count(*) FROM shadow_a.orders").await, 3);
    let resumed = tillsync(&stack, &["replay", "--target-schema", "shadow_a", "--resume", "--json"]).await.ok().json();
    assert_eq!(resumed["messages"], json!(0), "nothing left to replay: {resumed}");

    // Fails after creating and migrating the schema (NATS unreachable): nothing to resume.
    let failed = tillsync(&stack, &["replay", "--target-schema", "shadow_b", "--nats-url", "nats://127.0.0.1:9"]).await;
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(failed.stderr.contains("shadow_b dropped"), "{}", failed.stderr);
    assert!(!schema_exists(&stack, "shadow_b").await);

    // A schema that is not a tillsync rebuild is never dropped.
    sqlx::query("CREATE SCHEMA other_app").execute(&stack.db.pool).await.unwrap();
    sqlx::query("CREATE TABLE other_app.t (x int)").execute(&stack.db.pool).await.unwrap();
    let foreign = tillsync(&stack, &["replay", "--target-schema", "other_app", "--replace"]).await;
    assert_eq!(foreign.code, 2, "{}", foreign.stderr);
    assert_eq!(stack.db.count("SELECT count(*) FROM other_app.t").await, 0, "still there");
    broker.stop().await;
}

#[tokio::test]
async fn repeated_heartbeats_of_an_unknown_tenant_keep_one_row_that_redrives_the_latest() {
    let (stack, broker, js) = live().await;
    let d = DeviceAddr::new("acne", "s1", "till-4");
    let db = &stack.db;
    // One at a time: the stream keeps only a device's newest heartbeat.
    for uptime_s in 1..=4 {
        let hb = tillsync_schemas::Heartbeat {
            schema_version: tillsync_schemas::SCHEMA_VERSION,
            tenant_id: d.tenant_id.clone(),
            store_id: d.store_id.clone(),
            device_id: d.device_id.clone(),
            at_ms: tillsync_broker::now_ms(),
            software_version: "test".into(),
            outbox_depth: 0,
            oldest_unsent_age_s: 0,
            last_acked_seq: 0,
            config_revision: 0,
            uptime_s,
            watermarks_refused: 0,
        };
        let ack = js.publish(subject::heartbeats(&d), tillsync_schemas::codec::encode(&hb).into()).await.unwrap();
        let seq = ack.await.unwrap().sequence as i64;
        eventually_eq(T, "the heartbeat quarantined", seq, || {
            db.count("SELECT coalesce(max(stream_seq), 0) FROM quarantine")
        })
        .await;
    }
    eventually_eq(T, "four heartbeats on one row", 3, || {
        db.count("SELECT coalesce(sum(repeats), 0)::int8 FROM quarantine")
    })
    .await;
    assert_eq!(db.count("SELECT count(*) FROM quarantine").await, 1);

    tillsync(&stack, &["tenants", "add", "acne"]).await.ok();
    let v = tillsync(&stack, &["quarantine", "redrive", "--tenant", "acne", "--json"]).await.ok().json();
    assert_eq!(v["redriven"], json!(1), "{v}");
    eventually_eq(T, "the latest heartbeat applied", 4, || {
        db.count("SELECT coalesce(max(uptime_s), 0) FROM devices WHERE tenant_id = 'acne'")
    })
    .await;
    broker.stop().await;
}
