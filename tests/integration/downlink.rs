//! The downlink without consumers (docs/architecture.md): bridges read their commands live on
//! plain subscriptions and catch up by asking the broker, so the server holds no consumer per
//! device.
//!
//! Faults, injected for real: commands delivered live to bridges that are down (lost: nobody
//! subscribed), a NATS restart (SIGKILL, same store) and every bridge reconnecting at once; a
//! device whose catch-up requests are over its budget. Checked by the handlers' own records:
//! every command applied exactly once on its own device, none lost, none doubled, and no
//! consumer on the server.

use std::time::{Duration, Instant};

use tillsync_edge::Bridge;
use tillsync_schemas::{streams, DeviceAddr};
use tillsync_tests::{eventually, eventually_eq, free_addr, metric, BrokerProc, Stack};

use crate::common::add_tenant;
use crate::edge::support::*;

const T: Duration = Duration::from_secs(90);

/// Consumers on the command and configuration streams, together.
async fn consumers(js: &async_nats::jetstream::Context) -> usize {
    let mut n = 0;
    for s in [streams::COMMANDS, streams::CONFIG] {
        n += js.get_stream(s).await.unwrap().info().await.unwrap().state.consumer_count;
    }
    n
}

fn broker_config(stack: &Stack) -> tillsync_broker::config::Config {
    let mut c = stack.broker_config();
    c.http_addr = free_addr();
    // The broker keeps taking a stopped bridge for online, so it delivers to nobody.
    c.offline_after_s = 300;
    c
}

async fn broker_metric(broker: &BrokerProc, name: &str, labels: &str) -> f64 {
    broker.metrics().await.and_then(|text| metric(&text, name, labels)).unwrap_or(0.0)
}

struct Till {
    addr: DeviceAddr,
    config: tillsync_edge::Config,
    handler: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn tills(stack: &Stack, n: usize) -> Vec<Till> {
    (1..=n)
        .map(|i| {
            let dir = tempfile::tempdir().unwrap();
            let addr = DeviceAddr::new("acme", format!("s{}", i % 3), format!("till-{i}"));
            let handler = recording_handler(dir.path());
            let mut config = config(stack, &addr, dir.path());
            config.handler_exec = Some(handler.clone());
            Till { addr, config, handler, _dir: dir }
        })
        .collect()
}

async fn start_all(tills: &[Till]) -> Vec<Bridge> {
    futures::future::join_all(tills.iter().map(|t| async { Bridge::start(t.config.clone()).await.unwrap() })).await
}

async fn acked(stack: &Stack) -> i64 {
    stack.db.count("SELECT count(*) FROM command_inbox WHERE state = 'acked'").await
}

/// Waits until `bridge`'s catch-up request was answered. The broker may not hold its catch-up
/// subscription yet when a bridge started with it first asks; the bridge then asks again on
/// its timer, and a test that stops it before that would count an answer never given.
async fn wait_caught_up(bridge: &Bridge) {
    eventually(T, "the bridge's catch-up answered", || async {
        let text = bridge.metrics_text();
        let answered = metric(&text, "tillsync_edge_command_catchups_total", "result=\"answered\"");
        answered.filter(|n| *n >= 1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reconnect_storm_after_a_nats_restart_hands_every_device_its_commands_once() {
    const N: usize = 12;
    const EACH: u64 = 3;
    let mut stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let broker = BrokerProc::start(&broker_config(&stack));
    let tills = tills(&stack, N);
    for t in &tills {
        provision(&stack, &t.addr).await;
    }
    // Online once, so the broker knows them and takes them for online; then all stop.
    let bridges = start_all(&tills).await;
    for b in &bridges {
        wait_commands_live(b).await;
        wait_caught_up(b).await;
    }
    let js = stack.nats.jetstream().await;
    assert_eq!(consumers(&js).await, 0, "twelve live bridges hold no consumer");
    eventually_eq(T, "all online", N as i64, || stack.db.count("SELECT count(*) FROM devices WHERE online")).await;
    for b in bridges {
        b.shutdown().await;
    }

    // Delivered live to nobody: the bridges are down.
    let mut sent = Vec::new();
    for t in &tills {
        for rev in 1..=EACH {
            sent.push((t.addr.clone(), send_via_portal(&js, &t.addr, rev).await.command_id));
        }
    }
    let want = (N as u64 * EACH) as i64;
    eventually_eq(T, "every command delivered (to nobody)", want, || {
        stack.db.count("SELECT count(*) FROM command_inbox WHERE state = 'delivered'")
    })
    .await;

    // The node restarts, and every till comes back at once.
    stack.nats.restart().await;
    let restarted = Instant::now();
    let bridges = start_all(&tills).await;
    eventually_eq(T, "every command acked", want, || acked(&stack)).await;
    eprintln!("{N} devices, {want} commands: all acked {:?} after the restart", restarted.elapsed());

    // The checker: each till's handler ran exactly its own commands, each once.
    for t in &tills {
        let mut ran: Vec<String> =
            handled(&t.handler).iter().map(|c| c["command_id"].as_str().unwrap().to_string()).collect();
        ran.sort();
        let mut own: Vec<String> = sent.iter().filter(|(a, _)| *a == t.addr).map(|(_, id)| id.clone()).collect();
        own.sort();
        assert_eq!(ran, own, "{}: lost or doubled", t.addr.device_id);
    }
    let js = stack.nats.jetstream().await;
    assert_eq!(consumers(&js).await, 0, "no consumer after the storm either");
    for b in &bridges {
        wait_caught_up(b).await;
    }
    assert!(
        broker_metric(&broker, "tillsync_command_syncs_total", "result=\"answered\"").await >= (2 * N) as f64,
        "each till asked at both starts"
    );
    assert!(broker_metric(&broker, "tillsync_command_copies_handed_total", "why=\"sync\"").await >= want as f64);
    for b in bridges {
        b.shutdown().await;
    }
    drop(broker);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_lost_with_its_connection_is_handed_again_by_the_due_check_and_asks_over_budget_are_dropped() {
    use futures::StreamExt;
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let broker = BrokerProc::start(&broker_config(&stack));
    let till = tills(&stack, 1).pop().unwrap();
    provision(&stack, &till.addr).await;
    let bridge = Bridge::start(till.config.clone()).await.unwrap();
    wait_commands_live(&bridge).await;
    eventually_eq(T, "online", 1, || stack.db.count("SELECT count(*) FROM devices WHERE online")).await;
    wait_caught_up(&bridge).await;
    let asked = broker_metric(&broker, "tillsync_command_syncs_total", "result=\"answered\"").await;
    bridge.shutdown().await;

    // Something listening on the till's copies subject that never asks: only a due check can
    // hand it anything.
    let nc = stack.nats.client().await;
    let mut copies = nc.subscribe(tillsync_schemas::subject::command_copies(&till.addr)).await.unwrap();
    nc.flush().await.unwrap();
    let js = stack.nats.jetstream().await;
    let cmd = send_via_portal(&js, &till.addr, 1).await;
    let copy = tokio::time::timeout(T, copies.next()).await.expect("a copy handed by the check").unwrap();
    let handed: tillsync_schemas::CommandEnvelope = tillsync_schemas::codec::decode(&copy.payload).unwrap();
    assert_eq!(handed.command_id, cmd.command_id);
    let h = copy.headers.expect("signed");
    assert!(h.get(tillsync_schemas::signature::HEADER_SIGNATURE).is_some());
    assert!(broker_metric(&broker, "tillsync_command_copies_handed_total", "why=\"check\"").await >= 1.0);
    assert_eq!(
        broker_metric(&broker, "tillsync_command_syncs_total", "result=\"answered\"").await,
        asked,
        "nothing asked after the bridge stopped"
    );

    // A till asking in a loop: past its budget its asks are dropped and counted.
    let ask = tillsync_schemas::subject::command_sync(&till.addr);
    let per_minute = tillsync_broker::admin::commands::CATCH_UP_PER_MINUTE as f64;
    for i in 1..=(per_minute as usize + 2) {
        nc.publish(ask.clone(), Default::default()).await.unwrap();
        eventually(T, "the ask taken", || async {
            let answered = broker_metric(&broker, "tillsync_command_syncs_total", "result=\"answered\"").await;
            let limited = broker_metric(&broker, "tillsync_command_syncs_total", "result=\"limited\"").await;
            (answered + limited >= asked + i as f64).then_some(())
        })
        .await;
    }
    assert!(broker_metric(&broker, "tillsync_command_syncs_total", "result=\"limited\"").await >= 1.0);

    // The till itself still gets its command (by a check, or an ask once its budget refills).
    let bridge = Bridge::start(till.config.clone()).await.unwrap();
    eventually_eq(T, "acked", 1, || acked(&stack)).await;
    let ran = handled(&till.handler);
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert_eq!(ran[0]["command_id"], cmd.command_id.as_str());
    bridge.shutdown().await;
    drop(broker);
}

/// Upgrading: brokers first, bridges at their pace. A bridge of the previous version reads
/// through its durable consumer (created as it did, pulled, acked) and its command still ends
/// `acked` on an upgraded broker.
#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_of_the_previous_version_still_gets_its_commands_through_its_consumer() {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    use futures::StreamExt;
    use tillsync_schemas::{codec, subject, CommandAck, Outcome};
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let broker = BrokerProc::start(&broker_config(&stack));
    let d = DeviceAddr::new("acme", "s1", "till-old");
    provision(&stack, &d).await;
    let js = stack.nats.jetstream().await;
    let commands = eventually(T, "commands stream", || async { js.get_stream(streams::COMMANDS).await.ok() }).await;
    let consumer = commands
        .create_consumer(pull::Config {
            durable_name: Some(streams::device_commands_consumer(&d)),
            filter_subject: subject::commands(&d),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    // Online: the broker heard from it.
    crate::common::publish(&js, &crate::common::event(&d, 1, crate::common::opened("o-old"))).await;
    eventually_eq(T, "online", 1, || stack.db.count("SELECT count(*) FROM devices WHERE online")).await;

    let cmd = send_via_portal(&js, &d, 1).await;
    let mut messages = consumer.messages().await.unwrap();
    let msg = tokio::time::timeout(T, messages.next()).await.expect("pulled in time").unwrap().unwrap();
    let got = codec::decode_command(&msg.subject, &msg.payload).unwrap();
    assert_eq!(got.command_id, cmd.command_id);
    let ack = CommandAck {
        schema_version: tillsync_schemas::SCHEMA_VERSION,
        command_id: cmd.command_id.clone(),
        tenant_id: d.tenant_id.clone(),
        store_id: d.store_id.clone(),
        device_id: d.device_id.clone(),
        outcome: Outcome::Applied,
        code: "ok".into(),
        detail: String::new(),
        at_ms: tillsync_edge::now_ms(),
    };
    js.publish(subject::command_acks(&d), codec::encode(&ack).into()).await.unwrap().await.unwrap();
    msg.ack().await.unwrap();
    eventually_eq(T, "acked", 1, || acked(&stack)).await;
    assert_eq!(
        broker_metric(&broker, "tillsync_command_copies_handed_total", "why=\"check\"").await,
        0.0,
        "it has a consumer: nothing handed"
    );
    drop(broker);
}
