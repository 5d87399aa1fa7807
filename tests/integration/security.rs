//! Device identity against a nats-server with authorization on (auth callout answered by the
//! broker): confinement of devices and portals, activation codes, revocation and rotation.
//! Every refusal is asserted from what the server reports and what the streams hold.

#[path = "security_support.rs"]
pub(crate) mod support;

use futures::StreamExt as _;
use tillsync_edge::identity::{default_path, Identity};
use tillsync_edge::{Bridge, EventDraft};
use tillsync_schemas::{identity, streams, subject, DeviceAddr};
use tillsync_tests::{eventually, eventually_eq, InProcBroker, Stack};

use crate::common::*;
use support::*;

#[tokio::test]
async fn a_device_can_touch_only_its_own_subjects() {
    let stack = Stack::start_with_auth().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceAddr::new("acme", "s1", "till-1");
    let b = DeviceAddr::new("acme", "s2", "till-2");
    let a_config = activated_config(&stack, &a, &dir.path().join("a")).await;
    let b_config = activated_config(&stack, &b, &dir.path().join("b")).await;
    // B runs, so its command consumer and watermark exist.
    let b_bridge = Bridge::start(b_config).await.unwrap();
    b_bridge.submit(EventDraft::new(opened("o-b"))).await.unwrap();
    eventually_eq(T, "B's event landed", 1, || stack.db.count("SELECT count(*) FROM orders WHERE order_id = 'o-b'"))
        .await;

    let mut probe = Probe::device(&stack, &default_path(&a_config.db)).await;
    // Control: A's own publish is stored, so the refusals below are permissions, not a dead link.
    let js = async_nats::jetstream::new(probe.client.clone());
    js.publish(subject::heartbeats(&a), "x".into()).await.unwrap().await.expect("A's own heartbeat is acked");

    for s in [subject::events(&b), subject::heartbeats(&b), subject::command_acks(&b)] {
        probe.publish_refused(&s).await;
    }
    let b_consumer = streams::device_commands_consumer(&b);
    let a_consumer = streams::device_commands_consumer(&a);
    for s in [
        format!("$JS.API.CONSUMER.MSG.NEXT.{}.{b_consumer}", streams::COMMANDS),
        format!("$JS.API.CONSUMER.CREATE.{}.{b_consumer}.{}", streams::COMMANDS, subject::commands(&b)),
        // Its own consumer name with B's filter: the filter is part of the permission.
        format!("$JS.API.CONSUMER.CREATE.{}.{a_consumer}.{}", streams::COMMANDS, subject::commands(&b)),
        format!("$JS.API.CONSUMER.CREATE.{}.{a_consumer}", streams::COMMANDS),
        format!("$JS.API.DIRECT.GET.{}.{}", streams::WATERMARKS, subject::watermarks(&b)),
        format!("$JS.API.DIRECT.GET.{}", streams::WATERMARKS),
        "tillsync.intake.acme.s2.till-2".to_string(),
        // B's catch-up request (its commands would go to B, not A; still not A's to ask) and
        // the deletion of B's consumer.
        subject::command_sync(&b),
        format!("$JS.API.CONSUMER.DELETE.{}.{b_consumer}", streams::COMMANDS),
    ] {
        probe.publish_refused(&s).await;
    }
    // Subscribing to B's traffic is refused too.
    for s in [
        subject::watermarks(&b),
        subject::commands(&b),
        subject::command_copies(&b),
        "tillsync.ccopy.>".to_string(),
        tillsync_schemas::config::delta_subject(&b.tenant_id, &b.store_id),
        format!("{}.>", identity::device_inbox(&b)),
    ] {
        let _sub = probe.client.subscribe(s.clone()).await.unwrap();
        probe.client.flush().await.unwrap();
        probe.expect_violation(&format!("subscription to \"{s}\"")).await;
    }
    // Nothing A tried reached B's subjects: all that is there is B's own event (a resend under
    // load may have stored it twice; the broker dedupes that, and it is still B's).
    let on_b = stored_events(&stack, &format!("{}.>", subject::events(&b))).await;
    assert!(!on_b.is_empty(), "B's event is stored");
    for ev in &on_b {
        assert_eq!((ev.addr(), ev.event_id.as_str()), (b.clone(), on_b[0].event_id.as_str()), "only B's own event");
    }
    assert_eq!(stored_on(&stack, streams::COMMAND_ACKS, &format!("{}.>", subject::command_acks(&b))).await, 0);
    b_bridge.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_portal_credential_reaches_one_tenant_only() {
    let stack = Stack::start_with_auth().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    add_tenant(&stack.db.pool, "acme").await;
    add_tenant(&stack.db.pool, "beta").await;
    let (mut portal, seed) = Probe::portal(&stack, "acme").await;

    let js = async_nats::jetstream::new(portal.client.clone());
    let own = subject::intake("acme", "s1", Some("till-1"));
    js.publish(own.clone(), "not a command".into()).await.unwrap().await.expect("own tenant's intake is stored");
    portal.publish_refused(&subject::intake("beta", "s1", Some("till-1"))).await;
    portal.publish_refused(&subject::cancel("beta", "s1")).await;
    let _mine = portal.client.subscribe("tillsync.status.acme.>").await.unwrap();
    let theirs = "tillsync.status.beta.>";
    let _sub = portal.client.subscribe(theirs).await.unwrap();
    portal.client.flush().await.unwrap();
    portal.expect_violation(&format!("subscription to \"{theirs}\"")).await;
    assert_eq!(stored_on(&stack, streams::INTAKE, "tillsync.intake.beta.>").await, 0);

    // A revoked portal key is refused at its next connect.
    let key = nkeys::KeyPair::from_seed(&seed).unwrap().public_key();
    let (exit, _) = cli(&stack, &["portals", "revoke", "--key", &key]).await;
    assert_eq!(exit, 0);
    assert!(Probe::connect(&stack, &seed, identity::portal_inbox("acme")).await.is_err(), "revoked portal refused");
    broker.stop().await;
}

#[tokio::test]
async fn an_activation_code_works_once_and_every_refusal_is_coded_and_recorded() {
    let stack = Stack::start_with_auth().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    add_tenant(&stack.db.pool, "acme").await;
    let dir = tempfile::tempdir().unwrap();
    let d = DeviceAddr::new("acme", "s1", "till-1");
    let (exit, added) =
        cli(&stack, &["devices", "add", "--tenant", "acme", "--store", "s1", "--device", "till-1"]).await;
    assert_eq!(exit, 0, "{added}");
    let code = added["activation"]["code"].as_str().expect("a code").to_string();
    assert_eq!(
        stack.db.count("SELECT count(*) FROM activation_codes WHERE code_hash = encode(sha256(convert_to(upper(replace($$CODE$$, '-', '')), 'UTF8')), 'hex')".replace("CODE", &code).as_str()).await,
        1,
        "only the code's hash is stored"
    );
    let first = activate(&stack, &dir.path().join("edge.db"), &code).await;
    assert_eq!((first.exit, first.json["result"].as_str()), (0, Some("activated")), "{}", first.json);
    let id_file = default_path(&dir.path().join("edge.db"));
    let id = Identity::load(&id_file).unwrap().unwrap();
    assert_eq!(id.addr(), d);
    let signing = tillsync_schemas::signature::TEST_PUBLIC_KEY.to_string();
    assert_eq!(id.command_keys, vec![signing], "activation hands over the command-signing key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&id_file).unwrap().permissions().mode() & 0o777, 0o600);

    let other = tempfile::tempdir().unwrap();
    let again = activate(&stack, &other.path().join("edge.db"), &code).await;
    assert_eq!((again.exit, again.json["code"].as_str()), (3, Some("code_used")), "{}", again.json);
    let expired = tillsync_tests::code_for(&stack.db.pool, &d, "activate", -1).await;
    let late = activate(&stack, &other.path().join("edge.db"), &expired).await;
    assert_eq!((late.exit, late.json["code"].as_str()), (3, Some("code_expired")), "{}", late.json);
    let unknown = activate(&stack, &other.path().join("edge.db"), &tillsync_broker::admin::auth::new_code()).await;
    assert_eq!((unknown.exit, unknown.json["code"].as_str()), (3, Some("code_unknown")), "{}", unknown.json);
    assert!(!default_path(&other.path().join("edge.db")).exists(), "no identity from a refused code");

    let (exit, shown) =
        cli(&stack, &["devices", "show", "--tenant", "acme", "--store", "s1", "--device", "till-1"]).await;
    assert_eq!(exit, 0);
    let actions: Vec<(String, String)> = shown["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].as_str().unwrap().into(), a["reason"].as_str().unwrap_or("-").into()))
        .collect();
    for want in [
        ("activated", "-"),
        ("activation_refused", "code_used"),
        ("activation_refused", "code_expired"),
        ("code_issued", "-"),
    ] {
        assert!(actions.contains(&(want.0.into(), want.1.into())), "{want:?} in {actions:?}");
    }
    assert_eq!(shown["credentials"].as_array().unwrap().len(), 1);
    assert_eq!(
        shown["credentials"][0]["public_key"].as_str(),
        Some(nkeys::KeyPair::from_seed(&id.seed).unwrap().public_key().as_str())
    );
    let refused_unknown = stack
        .db
        .count("SELECT count(*) FROM identity_audit WHERE action = 'activation_refused' AND reason = 'code_unknown'")
        .await;
    assert_eq!(refused_unknown, 1, "an unknown code is recorded too");
    broker.stop().await;
}

/// A broker and one activated till `acme/s1/till-1` whose files live in `dir`.
async fn one_till(stack: &Stack, dir: &std::path::Path) -> (InProcBroker, DeviceAddr, tillsync_edge::Config) {
    let broker = InProcBroker::start(stack.broker_config()).await;
    add_tenant(&stack.db.pool, "acme").await;
    let d = DeviceAddr::new("acme", "s1", "till-1");
    let config = activated_config(stack, &d, dir).await;
    (broker, d, config)
}

#[tokio::test]
async fn a_revoked_device_is_cut_off_and_its_outbox_lands_once_after_reactivation() {
    let (stack, dir) = (Stack::start_with_auth().await, tempfile::tempdir().unwrap());
    let (broker, d, mut config) = one_till(&stack, dir.path()).await;
    // The till keeps taking sales here: it never concludes it is revoked (then it would refuse
    // new ones: edge_truth::a_revoked_bridge_says_so_refuses_new_sales_and_keeps_what_it_holds).
    config.cutoff_confirmations = 1_000;
    let bridge = Bridge::start(config.clone()).await.unwrap();
    for i in 0..5 {
        bridge.submit(EventDraft::new(opened(&format!("o-{i}")))).await.unwrap();
    }
    let db = &stack.db;
    eventually_eq(T, "first events landed", 5, || db.count("SELECT count(*) FROM orders")).await;

    let (exit, out) = cli(
        &stack,
        &["devices", "revoke", "--tenant", "acme", "--store", "s1", "--device", "till-1", "--reason", "till stolen"],
    )
    .await;
    assert_eq!((exit, out["credentials_revoked"].as_u64()), (0, Some(1)), "{out}");
    eventually(T, "bridge disconnected", || async {
        bridge.status().await.ok().filter(|s| s.connection != "connected").map(|_| ())
    })
    .await;
    eventually(T, "its reconnects refused and recorded", || async {
        (db.count("SELECT count(*) FROM identity_audit WHERE action = 'connection_refused' AND reason = 'revoked'")
            .await
            > 0)
        .then_some(())
    })
    .await;
    // Sales go on at the till: accepted into the outbox, not into Postgres.
    for i in 5..10 {
        bridge.submit(EventDraft::new(opened(&format!("o-{i}")))).await.unwrap();
    }
    eventually(T, "new sales held in the outbox while cut off", || async {
        bridge.status().await.ok().filter(|s| s.outbox.rows >= 5 && s.connection != "connected").map(|_| ())
    })
    .await;
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 5, "nothing from a revoked device lands");

    // Re-activated (new code, same running bridge): the outbox drains, every event once.
    let code = tillsync_tests::activation_code(&db.pool, &d, 24).await;
    assert_eq!(activate(&stack, &config.db, &code).await.exit, 0);
    eventually_eq(T, "outbox drained after re-activation", 10, || db.count("SELECT count(*) FROM orders")).await;
    assert_eq!(db.count("SELECT count(*) FROM processed_events").await, 10, "each event applied once");
    assert_eq!(db.count("SELECT watermark FROM devices WHERE device_id = 'till-1'").await, 10);
    let disconnected = db.count("SELECT count(*) FROM credentials WHERE kicked_at IS NOT NULL").await;
    assert_eq!(disconnected, 1, "the broker disconnected the revoked key");
    bridge.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_rotation_replaces_the_key_while_sales_go_on() {
    let (stack, dir) = (Stack::start_with_auth().await, tempfile::tempdir().unwrap());
    let (broker, _, config) = one_till(&stack, dir.path()).await;
    let old = Identity::load(&default_path(&config.db)).unwrap().unwrap();
    let bridge = std::sync::Arc::new(Bridge::start(config.clone()).await.unwrap());
    let selling = {
        let bridge = bridge.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                bridge.submit(EventDraft::new(opened(&format!("o-{i}")))).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    };
    let (exit, issued) =
        cli(&stack, &["devices", "rotate", "--tenant", "acme", "--store", "s1", "--device", "till-1"]).await;
    assert_eq!(exit, 0, "{issued}");
    let rotated = activate(&stack, &config.db, issued["code"].as_str().unwrap()).await;
    assert_eq!(rotated.exit, 0, "{}", rotated.json);
    let new = Identity::load(&default_path(&config.db)).unwrap().unwrap();
    assert_ne!(new.seed, old.seed);
    selling.await.unwrap();
    let db = &stack.db;
    eventually_eq(T, "every sale landed", 60, || db.count("SELECT count(*) FROM orders")).await;
    assert_eq!(db.count("SELECT count(*) FROM processed_events").await, 60);
    let new_key = nkeys::KeyPair::from_seed(&new.seed).unwrap().public_key();
    eventually(T, "the bridge reconnected with the new key", || async {
        let q =
            format!("SELECT count(*) FROM credentials WHERE public_key = '{new_key}' AND last_connect_at IS NOT NULL");
        (db.count(&q).await == 1).then_some(())
    })
    .await;
    let old_key = nkeys::KeyPair::from_seed(&old.seed).unwrap().public_key();
    let q = format!("SELECT count(*) FROM credentials WHERE public_key = '{old_key}' AND revoked_at IS NOT NULL");
    assert_eq!(db.count(&q).await, 1, "the old key is revoked");
    assert_eq!(db.count("SELECT count(*) FROM identity_audit WHERE action = 'rotated'").await, 1);
    match std::sync::Arc::try_unwrap(bridge) {
        Ok(b) => b.shutdown().await,
        Err(_) => panic!("bridge still shared"),
    }
    broker.stop().await;
}

#[tokio::test]
async fn command_consumers_no_device_may_use_are_deleted() {
    let stack = Stack::start().await;
    let js = stack.nats.jetstream().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let commands = js.get_stream(streams::COMMANDS).await.unwrap();
    let mine = DeviceAddr::new("acme", "s1", "till-1");
    // A legacy name of tenant "4" that reads as the current name of ("acme", "s1", "d").
    let tenant_4 = DeviceAddr::new("4", "acme", "2_s1_d");
    let consumers = [
        ("legacy", "edge_acme_s1_till-1".to_string(), subject::commands(&mine)),
        ("legacy, colliding", "edge_4_acme_2_s1_d".to_string(), subject::commands(&tenant_4)),
        ("current", streams::device_commands_consumer(&mine), subject::commands(&mine)),
    ];
    for (_, name, filter) in &consumers {
        let config = async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: filter.clone(),
            ..Default::default()
        };
        commands.create_consumer(config).await.unwrap();
    }
    // The broker checks at start; poll its effect.
    let names = || async {
        let mut names: Vec<String> = commands.consumer_names().map(|n| n.unwrap()).collect().await;
        names.retain(|n| n.starts_with("edge_"));
        names
    };
    let left = eventually(T, "misnamed consumers deleted", || async {
        let left = names().await;
        (left.len() == 1).then_some(left)
    })
    .await;
    assert_eq!(left, vec![consumers[2].1.clone()], "only the current consumer is left");
    broker.stop().await;
}

/// Key rotation as docs/security.md runs it, with the bridge's settings untouched: the bridge
/// learns the next key from the broker, keeps it across the switch, and applies a command
/// signed with it; its identity file follows, so a restart would keep trusting it.
#[tokio::test]
async fn a_key_rotation_reaches_the_bridge_without_touching_its_settings() {
    let stack = Stack::start_with_auth().await;
    let dir = tempfile::tempdir().unwrap();
    let next = nkeys::KeyPair::new_user();
    let next_file = dir.path().join("next.nk");
    std::fs::write(&next_file, next.seed().unwrap()).unwrap();
    let d = DeviceAddr::new("acme", "s1", "till-1");
    let broker = InProcBroker::start(stack.broker_config()).await;
    let mut config = activated_config(&stack, &d, &dir.path().join("d")).await;
    config.command_keys = Vec::new(); // only what activation and the broker say
    config.command_keys_refresh_s = 1;
    let identity_file = config.identity_path();
    let keys_on_file = || Identity::load(&identity_file).unwrap().unwrap().command_keys;
    assert_eq!(keys_on_file(), vec![tillsync_schemas::signature::TEST_PUBLIC_KEY.to_string()]);
    let bridge = Bridge::start(config).await.unwrap();

    // Step 1: the broker trusts the next key too; the bridge learns both.
    broker.stop().await;
    let mut c = stack.broker_config();
    c.signing_key_next_file = Some(next_file.clone());
    let broker = InProcBroker::start(c).await;
    let both = vec![tillsync_schemas::signature::TEST_PUBLIC_KEY.to_string(), next.public_key()];
    eventually(T, "the bridge trusts both keys", || async { (keys_on_file() == both).then_some(()) }).await;

    // Step 3: the brokers sign with the next key and still vouch for the old one, whose
    // copies may wait in device streams: the bridge keeps both.
    broker.stop().await;
    let mut c = stack.broker_config();
    let old_file = c.signing_key_file.clone();
    (c.signing_key_file, c.signing_key_next_file) = (Some(next_file.clone()), old_file);
    let broker = InProcBroker::start(c).await;
    let swapped = vec![next.public_key(), tillsync_schemas::signature::TEST_PUBLIC_KEY.to_string()];
    eventually(T, "the bridge trusts the next key and still the old", || async {
        (keys_on_file() == swapped).then_some(())
    })
    .await;

    // Step 4: the old key is dropped; the bridge follows and applies commands signed with the new.
    broker.stop().await;
    let mut c = stack.broker_config();
    c.signing_key_file = Some(next_file);
    let broker = InProcBroker::start(c).await;
    eventually(T, "the bridge trusts the next key alone", || async {
        (keys_on_file() == vec![next.public_key()]).then_some(())
    })
    .await;
    let cmd = crate::edge::support::send_via_portal(&stack.nats.jetstream().await, &d, 1).await;
    let acked =
        format!("SELECT count(*) FROM command_inbox WHERE command_id = '{}' AND state = 'acked'", cmd.command_id);
    eventually_eq(T, "the command signed with the next key is applied", 1, || stack.db.count(&acked)).await;
    bridge.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_bridge_does_not_read_a_consumer_of_its_name_that_another_subject_feeds() {
    let stack = Stack::start().await;
    let js = stack.nats.jetstream().await;
    InProcBroker::start(stack.broker_config()).await.stop().await; // the streams, then no broker to tidy up
    let mine = DeviceAddr::new("acme", "s1", "till-1");
    let other = DeviceAddr::new("beta", "s9", "till-9");
    let commands = js.get_stream(streams::COMMANDS).await.unwrap();
    let name = streams::device_commands_consumer(&mine);
    let config = async_nats::jetstream::consumer::pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: subject::commands(&other),
        ..Default::default()
    };
    commands.create_consumer(config).await.unwrap();
    js.publish(subject::commands(&other), "beta's command".into()).await.unwrap().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(tillsync_edge::Config::for_tests(&mine, &stack.nats.url(), dir.path().join("edge.db")))
        .await
        .unwrap();
    eventually(T, "the bridge connected", || async {
        let text = bridge.metrics_text();
        (tillsync_tests::metric(&text, "tillsync_edge_nats_connected", "") == Some(1.0)).then_some(())
    })
    .await;
    // A refusal leaves nothing to wait for: watch 2 s, several retries at the test backoff
    // (50 ms to 1 s), for a delivery that must not come.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    let info = commands.consumer_info(&name).await.unwrap();
    assert_eq!(info.config.filter_subject, subject::commands(&other), "the consumer was not taken over nor deleted");
    assert_eq!(info.delivered.stream_sequence, 0, "beta's command was never delivered to acme's bridge");
    bridge.shutdown().await;
}

/// One stolen identity used twice at once: a revocation closes both connections, not only the
/// last one the callout admitted, and `devices show` says how many it closed.
#[tokio::test]
async fn a_revocation_closes_every_connection_of_the_key() {
    let (stack, dir) = (Stack::start_with_auth().await, tempfile::tempdir().unwrap());
    let (broker, _d, config) = one_till(&stack, dir.path()).await;
    let first = Probe::device(&stack, &default_path(&config.db)).await;
    let second = Probe::device(&stack, &default_path(&config.db)).await;
    let (exit, out) = cli(
        &stack,
        &["devices", "revoke", "--tenant", "acme", "--store", "s1", "--device", "till-1", "--reason", "till stolen"],
    )
    .await;
    assert_eq!(exit, 0, "{out}");
    for (name, probe) in [("first", &first), ("second", &second)] {
        eventually(T, &format!("the {name} connection closed"), || async {
            (probe.client.connection_state() != async_nats::connection::State::Connected).then_some(())
        })
        .await;
    }
    let show = ["devices", "show", "--tenant", "acme", "--store", "s1", "--device", "till-1"];
    let closed = eventually(T, "devices show counts both", || async {
        let (_, shown) = cli(&stack, &show).await;
        shown["credentials"][0]["connections_closed"].as_i64()
    })
    .await;
    assert_eq!(closed, 2);
    broker.stop().await;
}

/// Plain text to another host is refused before any connection is tried (exit 2, naming the
/// host and the switch), and accepted when the operator says so. `.invalid` never resolves, and
/// nothing here connects anywhere.
#[test]
fn plain_text_to_another_host_is_refused_unless_allowed() {
    let run = |bin: &str, args: &[&str], allow: bool| {
        let out = std::process::Command::new(tillsync_tests::bin_path(bin))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TILLSYNC_ALLOW_PLAINTEXT", allow.to_string())
            .env("TILLSYNC_SIGNING_KEY_FILE", tillsync_broker::admin::signing::test_key_file())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let broker = ["--print-config", "--nats-url", "nats://nats.invalid:4222"];
    let (code, err) = run("tillsync-broker", &broker, false);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nats://nats.invalid:4222") && err.contains("--allow-plaintext"), "{err}");
    let db = ["--print-config", "--database-url", "postgres://u:pw@db.invalid/t"];
    let (code, err) = run("tillsync-broker", &db, false);
    assert!(code == Some(2) && err.contains("postgres://db.invalid") && !err.contains("pw"), "{err}");
    assert_eq!(run("tillsync-broker", &broker, true).0, Some(0), "allowed when told");
    let activate = ["activate", "--nats-url", "nats://nats.invalid:4222", "--code", "ABCDEFGHIJKLMNOPQRST"];
    let (code, err) = run("tillsync-edge", &activate, false);
    assert_eq!(code, Some(2), "the one-time code is not sent in clear: {err}");
    assert!(err.contains("--allow-plaintext"), "{err}");
}
