//! Configuration down, end to end: head office publishes over the portal subject, the broker
//! versions and distributes, activated bridges (NATS with authorization on) apply and report.

use std::collections::BTreeMap;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use futures::StreamExt;
use serde_json::json;
use tillsync_edge::Bridge;
use tillsync_schemas::config::{self, ChangeRequest, ChangeSet, PublishReply};
use tillsync_schemas::{codec, streams, DeviceAddr};
use tillsync_tests::{eventually, eventually_eq, http_get, metric, InProcBroker, Stack};

use crate::common::*;
use crate::security::support::{activated_config, cli, Probe, T};

fn upsert(t: &str, id: &str, body: serde_json::Value) -> ChangeRequest {
    ChangeRequest { op: "upsert".into(), entity_type: t.into(), id: id.into(), body: Some(body) }
}

fn menu(tenant: &str, price: i64) -> ChangeSet {
    ChangeSet {
        tenant_id: tenant.into(),
        store_id: None,
        if_match: None,
        published_by: "hq-test".into(),
        changes: vec![
            upsert("menu_category", "mains", json!({"name": "Mains"})),
            upsert(
                "menu_item",
                "burger",
                json!({"name": format!("{tenant} burger"), "price_minor": price, "category_id": "mains"}),
            ),
        ],
    }
}

/// Publishes as the portal does; returns the version each store got.
async fn publish(stack: &Stack, cs: &ChangeSet) -> BTreeMap<String, u64> {
    let client = stack.nats.client().await;
    let subject = config::publish_subject(&cs.tenant_id, cs.store_id.as_deref());
    let reply = client.request(subject, codec::encode(cs).into()).await.expect("a publish reply");
    match codec::decode::<PublishReply>(&reply.payload).unwrap() {
        PublishReply::Published { versions, .. } => versions,
        PublishReply::Refused { code, detail } => panic!("publish refused: {code} ({detail})"),
    }
}

async fn applied(bridge: &Bridge) -> u64 {
    bridge.status().await.map(|s| s.config_revision).unwrap_or(0)
}

/// The bridge's configuration as the POS reads it.
async fn local_config(bridge: &Bridge) -> serde_json::Value {
    let (code, body) = http_get(bridge.http_addr().unwrap(), "/v1/config").await.expect("local API answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn bridge_metric(bridge: &Bridge, name: &str, labels: &str) -> f64 {
    let (_, text) = http_get(bridge.http_addr().unwrap(), "/metrics").await.expect("metrics");
    metric(&text, name, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn a_publish_reaches_every_bridge_of_the_store_and_the_broker_sees_it_applied() {
    let stack = Stack::start_with_auth().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    add_tenant(&stack.db.pool, "acme").await;
    let dir = tempfile::tempdir().unwrap();
    let addrs = [
        DeviceAddr::new("acme", "s1", "till-1"),
        DeviceAddr::new("acme", "s1", "till-2"),
        DeviceAddr::new("acme", "s2", "till-3"),
    ];
    let mut bridges = Vec::new();
    for a in &addrs {
        let cfg = activated_config(&stack, a, &dir.path().join(&a.device_id)).await;
        bridges.push(Bridge::start(cfg).await.unwrap());
    }
    let versions = publish(&stack, &menu("acme", 950)).await;
    assert_eq!(versions, BTreeMap::from([("s1".to_string(), 1), ("s2".to_string(), 1)]));
    for b in &bridges {
        eventually_eq(T, "first version applied (snapshot)", 1, || applied(b)).await;
    }
    let versions = publish(&stack, &menu("acme", 1050)).await;
    assert_eq!(versions["s1"], 2);
    for b in &bridges {
        eventually_eq(T, "second version applied (delta)", 2, || applied(b)).await;
        let c = local_config(b).await;
        assert_eq!(c["version"], 2);
        assert_eq!(c["entities"]["menu_item"]["burger"]["price_minor"], 1050, "{c}");
    }
    // A device added later in a new store finds that store's configuration waiting.
    let (exit, out) = cli(&stack, &["devices", "add", "--tenant", "acme", "--store", "s9", "--device", "till-9"]).await;
    assert_eq!(exit, 0, "{out}");
    let q = "SELECT count(*) FROM config_versions WHERE tenant_id = 'acme' AND store_id = 's9' AND version = 1";
    assert_eq!(stack.db.count(q).await, 1, "devices add gave the new store version 1");
    // The broker learns each applied version from the heartbeats.
    for a in &addrs {
        let q = format!("SELECT count(*) FROM devices WHERE device_id = '{}' AND config_revision = 2", a.device_id);
        eventually_eq(T, "applied version reported to the broker", 1, || stack.db.count(&q)).await;
    }
    for b in bridges {
        b.shutdown().await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_bridge_offline_across_150_versions_takes_one_snapshot_not_150_deltas() {
    let stack = Stack::start_with_auth().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    add_tenant(&stack.db.pool, "acme").await;
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceAddr::new("acme", "s1", "till-1");
    let cfg = activated_config(&stack, &a, dir.path()).await;
    let bridge = Bridge::start(cfg.clone()).await.unwrap();
    publish(&stack, &menu("acme", 100)).await;
    eventually_eq(T, "version 1 applied", 1, || applied(&bridge)).await;
    bridge.shutdown().await;

    for k in 0..150 {
        let versions = publish(&stack, &menu("acme", 200 + k)).await;
        assert_eq!(versions["s1"], 2 + k as u64, "gap-free versions");
    }
    let bridge = Bridge::start(cfg).await.unwrap();
    eventually_eq(T, "caught up to version 151", 151, || applied(&bridge)).await;
    assert_eq!(local_config(&bridge).await["entities"]["menu_item"]["burger"]["price_minor"], 349);
    // Counters start at zero with the process: this run took one snapshot, then at most the
    // deltas the snapshot lagged behind (the broker refreshes a snapshot every 2 s or 20
    // versions, so it may trail the newest version by up to 20).
    eventually_eq(T, "one snapshot counted", 1.0, || {
        bridge_metric(&bridge, "tillsync_edge_config_applied_total", "via=\"snapshot\"")
    })
    .await;
    let deltas = bridge_metric(&bridge, "tillsync_edge_config_applied_total", "via=\"delta\"").await;
    assert!(deltas <= 20.0, "{deltas} deltas after the snapshot");
    bridge.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn tenant_b_configuration_never_reaches_tenant_a() {
    let stack = Stack::start_with_auth().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    add_tenant(&stack.db.pool, "acme").await;
    add_tenant(&stack.db.pool, "beta").await;
    let dir = tempfile::tempdir().unwrap();
    // Same store id in both tenants: only the tenant token keeps them apart.
    let a = DeviceAddr::new("acme", "s1", "till-1");
    let b = DeviceAddr::new("beta", "s1", "till-1");
    let a_cfg = activated_config(&stack, &a, &dir.path().join("a")).await;
    let b_cfg = activated_config(&stack, &b, &dir.path().join("b")).await;
    let a_bridge = Bridge::start(a_cfg.clone()).await.unwrap();
    let b_bridge = Bridge::start(b_cfg).await.unwrap();
    publish(&stack, &menu("acme", 100)).await;
    for k in 0..3 {
        publish(&stack, &menu("beta", 900 + k)).await;
    }
    eventually_eq(T, "beta at its third version", 3, || applied(&b_bridge)).await;
    eventually_eq(T, "acme at its first version", 1, || applied(&a_bridge)).await;
    let c = local_config(&a_bridge).await;
    assert_eq!(c["entities"]["menu_item"]["burger"]["name"], "acme burger", "{c}");
    assert_eq!(c["version"], 1);

    // Acme's device key cannot read beta's snapshot, deltas or consumer, even by asking.
    let mut probe = Probe::device(&stack, &tillsync_edge::identity::default_path(&a_cfg.db)).await;
    let beta_consumer = config::device_consumer(&b);
    for s in [
        format!(
            "$JS.API.DIRECT.GET.{}.{}",
            tillsync_schemas::streams::CONFIG_SNAPSHOTS,
            config::snapshot_subject("beta", "s1")
        ),
        format!("$JS.API.DIRECT.GET.{}.{}", tillsync_schemas::streams::CONFIG, config::delta_subject("beta", "s1")),
        format!("$JS.API.CONSUMER.MSG.NEXT.{}.{beta_consumer}", tillsync_schemas::streams::CONFIG),
        format!(
            "$JS.API.CONSUMER.CREATE.{}.{}.{}",
            tillsync_schemas::streams::CONFIG,
            config::device_consumer(&a),
            config::delta_subject("beta", "s1")
        ),
        config::publish_subject("acme", None),
    ] {
        probe.publish_refused(&s).await;
    }
    let _sub = probe.client.subscribe(config::delta_subject("beta", "s1")).await.unwrap();
    probe.client.flush().await.unwrap();
    probe.expect_violation(&format!("subscription to \"{}\"", config::delta_subject("beta", "s1"))).await;
    a_bridge.shutdown().await;
    b_bridge.shutdown().await;
    broker.stop().await;
}

/// The consumers on TILLSYNC_CONFIG, by name.
async fn config_consumers(js: &async_nats::jetstream::Context) -> Vec<String> {
    let stream = js.get_stream(streams::CONFIG).await.expect("config stream");
    let mut names: Vec<String> = stream.consumer_names().map(|n| n.expect("consumer names")).collect().await;
    names.sort();
    names
}

/// JetStream's advisories of consumers created and deleted on TILLSYNC_CONFIG, in order.
struct Advisories {
    sub: async_nats::Subscriber,
    js: async_nats::jetstream::Context,
}

impl Advisories {
    async fn watch(stack: &Stack) -> Advisories {
        let client = stack.nats.client().await;
        let sub = client.subscribe(format!("$JS.EVENT.ADVISORY.CONSUMER.*.{}.*", streams::CONFIG)).await.unwrap();
        client.flush().await.unwrap();
        Advisories { sub, js: async_nats::jetstream::new(client) }
    }

    /// Every advisory so far, as `CREATED <name>` / `DELETED <name>`. A probe consumer made and
    /// deleted here marks the end: advisories go out in order, so all earlier ones are in.
    async fn so_far(&mut self) -> Vec<String> {
        let probe = format!("probe-{}", uuid::Uuid::new_v4().simple());
        let stream = self.js.get_stream(streams::CONFIG).await.unwrap();
        stream
            .create_consumer(pull::Config { name: Some(probe.clone()), ..Default::default() })
            .await
            .expect("probe consumer");
        stream.delete_consumer(&probe).await.expect("probe consumer deleted");
        let mut seen = Vec::new();
        loop {
            let m = tokio::time::timeout(T, self.sub.next()).await.expect("the probe's advisories").unwrap();
            // $JS.EVENT.ADVISORY.CONSUMER.<kind>.<stream>.<name>
            let tokens: Vec<&str> = m.subject.split('.').collect();
            let (kind, name) = (tokens[4].to_string(), tokens[6].to_string());
            if name == probe {
                if kind == "DELETED" {
                    return seen;
                }
                continue;
            }
            seen.push(format!("{kind} {name}"));
        }
    }
}

/// One activated till of acme/s1 that applied version 1 and stopped; the broker runs on.
async fn a_till_that_applied_version_1(
    stack: &Stack,
) -> (InProcBroker, tempfile::TempDir, DeviceAddr, tillsync_edge::Config) {
    let broker = InProcBroker::start(stack.broker_config()).await;
    add_tenant(&stack.db.pool, "acme").await;
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceAddr::new("acme", "s1", "till-1");
    let cfg = activated_config(stack, &a, dir.path()).await;
    let bridge = Bridge::start(cfg.clone()).await.unwrap();
    publish(stack, &menu("acme", 100)).await;
    eventually_eq(T, "version 1 applied", 1, || applied(&bridge)).await;
    bridge.shutdown().await;
    (broker, dir, a, cfg)
}

#[tokio::test]
async fn an_up_to_date_bridge_holds_no_config_consumer_and_takes_a_new_version_live() {
    let stack = Stack::start_with_auth().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    add_tenant(&stack.db.pool, "acme").await;
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceAddr::new("acme", "s1", "till-1");
    let cfg = activated_config(&stack, &a, dir.path()).await;
    let js = stack.nats.jetstream().await;
    publish(&stack, &menu("acme", 100)).await;
    let mut advisories = Advisories::watch(&stack).await;
    let bridge = Bridge::start(cfg).await.unwrap();
    eventually_eq(T, "version 1 applied", 1, || applied(&bridge)).await;
    assert_eq!(config_consumers(&js).await, Vec::<String>::new(), "in step: no consumer");
    // Version 1 came as the snapshot, or as a delta when the bridge was quicker than the
    // distributor; counted a moment after the commit.
    let counted = || async {
        let delta = bridge_metric(&bridge, "tillsync_edge_config_applied_total", "via=\"delta\"").await;
        let snapshot = bridge_metric(&bridge, "tillsync_edge_config_applied_total", "via=\"snapshot\"").await;
        (delta, snapshot)
    };
    eventually(T, "version 1 counted", || async {
        let (d, s) = counted().await;
        (d + s == 1.0).then_some(())
    })
    .await;
    let (deltas, snapshots) = counted().await;

    assert_eq!(publish(&stack, &menu("acme", 200)).await["s1"], 2);
    eventually_eq(T, "version 2 applied live", 2, || applied(&bridge)).await;
    assert_eq!(local_config(&bridge).await["entities"]["menu_item"]["burger"]["price_minor"], 200);
    eventually_eq(T, "one more delta, no snapshot", (deltas + 1.0, snapshots), counted).await;
    assert_eq!(config_consumers(&js).await, Vec::<String>::new(), "still no consumer");
    assert_eq!(advisories.so_far().await, Vec::<String>::new(), "no consumer was made at any point");
    assert_eq!(bridge_metric(&bridge, "tillsync_edge_config_catchups_total", "why=\"connect\"").await, 0.0);
    bridge.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_bridge_stopped_across_3_versions_catches_up_by_deltas_then_holds_no_consumer() {
    let stack = Stack::start_with_auth().await;
    let (broker, _dir, a, cfg) = a_till_that_applied_version_1(&stack).await;
    let js = stack.nats.jetstream().await;

    for k in 0..3 {
        assert_eq!(publish(&stack, &menu("acme", 201 + k)).await["s1"], 2 + k as u64);
    }
    let mut advisories = Advisories::watch(&stack).await;
    let bridge = Bridge::start(cfg).await.unwrap();
    eventually_eq(T, "caught up to version 4", 4, || applied(&bridge)).await;
    // Counters start with the process: three deltas, no snapshot, one catch-up.
    eventually_eq(T, "three deltas applied", 3.0, || {
        bridge_metric(&bridge, "tillsync_edge_config_applied_total", "via=\"delta\"")
    })
    .await;
    assert_eq!(bridge_metric(&bridge, "tillsync_edge_config_applied_total", "via=\"snapshot\"").await, 0.0);
    assert_eq!(bridge_metric(&bridge, "tillsync_edge_config_catchups_total", "why=\"connect\"").await, 1.0);
    // The change log holds versions 2..4 one by one: deltas, not a snapshot (which restarts it).
    let (code, body) = http_get(bridge.http_addr().unwrap(), "/v1/config/changes?since=1").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let versions: Vec<_> = body["changes"].as_array().unwrap().iter().map(|c| c["version"].as_u64()).collect();
    assert!(versions.contains(&Some(2)) && versions.contains(&Some(4)), "{body}");
    assert_eq!(local_config(&bridge).await["entities"]["menu_item"]["burger"]["price_minor"], 203);

    // The catch-up consumer was made and deleted by the bridge (its inactivity threshold is
    // longer than this wait), and nothing holds one now.
    let name = config::device_consumer(&a);
    eventually_eq(T, "no consumer after the catch-up", Vec::<String>::new(), || config_consumers(&js)).await;
    assert_eq!(advisories.so_far().await, vec![format!("CREATED {name}"), format!("DELETED {name}")]);
    // And the next version comes live.
    assert_eq!(publish(&stack, &menu("acme", 300)).await["s1"], 5);
    eventually_eq(T, "version 5 applied live", 5, || applied(&bridge)).await;
    assert_eq!(config_consumers(&js).await, Vec::<String>::new());
    assert_eq!(advisories.so_far().await, Vec::<String>::new());
    let q = "SELECT count(*) FROM devices WHERE device_id = 'till-1' AND config_revision = 5";
    eventually_eq(T, "applied version reported to the broker", 1, || stack.db.count(q)).await;
    bridge.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_config_consumer_left_by_an_older_bridge_is_deleted_on_start() {
    let stack = Stack::start_with_auth().await;
    let (broker, _dir, a, cfg) = a_till_that_applied_version_1(&stack).await;
    let js = stack.nats.jetstream().await;

    // What an older bridge held for as long as it ran; durable, so it never goes by itself.
    let name = config::device_consumer(&a);
    let stream = js.get_stream(streams::CONFIG).await.unwrap();
    stream
        .create_consumer(pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: config::delta_subject("acme", "s1"),
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(config_consumers(&js).await, vec![name.clone()]);

    // In step at start: no catch-up, so only the start can delete it.
    let mut advisories = Advisories::watch(&stack).await;
    let bridge = Bridge::start(cfg).await.unwrap();
    eventually_eq(T, "the old consumer deleted", Vec::<String>::new(), || config_consumers(&js)).await;
    assert_eq!(advisories.so_far().await, vec![format!("DELETED {name}")]);
    assert_eq!(bridge_metric(&bridge, "tillsync_edge_config_catchups_total", "why=\"connect\"").await, 0.0);
    assert_eq!(publish(&stack, &menu("acme", 200)).await["s1"], 2);
    eventually_eq(T, "version 2 applied live", 2, || applied(&bridge)).await;
    assert_eq!(config_consumers(&js).await, Vec::<String>::new(), "still no consumer");
    assert_eq!(advisories.so_far().await, Vec::<String>::new());
    bridge.shutdown().await;
    broker.stop().await;
}
