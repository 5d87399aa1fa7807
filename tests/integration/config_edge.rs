//! The store side of configuration (issue 18): the edge bridge against a real nats-server with
//! the config streams, real SQLite and the real bridge. Deltas and snapshots are published here
//! by [`Distributor`], which stands in for the broker's distributor.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use async_nats::jetstream::stream::{Config as StreamConfig, StorageType, SubjectTransform};
use async_nats::HeaderMap;
use futures::StreamExt;
use serde_json::{json, Value};
use tillsync_edge::{store_config, Bridge};
use tillsync_schemas::config::{self, Change, ConfigDelta, ConfigSnapshot, EntityType};
use tillsync_schemas::subject::Family;
use tillsync_schemas::{codec, streams, subject, DeviceAddr, Outcome};
use tillsync_tests::{bin_path, eventually, eventually_eq, http_get, metric, InProcBroker, Stack};

use crate::common::add_tenant;
use crate::edge::support::*;

/// Where [`Distributor::publish_unheard`] publishes a delta.
const UNHEARD: &str = "lostcfg";

/// STAND-IN for the broker's distributor (branch cfg-cloud): the two config streams as
/// docs/design18 defines them, one delta per version and the latest snapshot per store.
struct Distributor {
    js: async_nats::jetstream::Context,
    tenant: String,
    store: String,
    version: u64,
    state: std::collections::BTreeMap<(EntityType, String), Value>,
}

impl Distributor {
    async fn new(js: async_nats::jetstream::Context, addr: &DeviceAddr) -> Distributor {
        for (name, subjects, per_subject) in [
            (streams::CONFIG, Family::Config, config::DEFAULT_DELTAS_KEPT as i64),
            (streams::CONFIG_SNAPSHOTS, Family::ConfigSnapshot, 1),
        ] {
            let mut subjects = vec![subjects.all_subjects()];
            // Test only: a delta published on `lostcfg.<t>.<s>._store` is stored as the store's
            // delta but reaches no subscriber of that subject: a live delta lost on the way.
            let unheard = (name == streams::CONFIG).then(|| {
                subjects.push(format!("{UNHEARD}.>"));
                SubjectTransform { source: format!("{UNHEARD}.>"), destination: subjects[0].clone() }
            });
            js.get_or_create_stream(StreamConfig {
                name: name.to_string(),
                subjects,
                subject_transform: unheard,
                max_messages_per_subject: per_subject,
                allow_direct: true,
                storage: StorageType::File,
                ..Default::default()
            })
            .await
            .expect("config stream");
        }
        Distributor {
            js,
            tenant: addr.tenant_id.clone(),
            store: addr.store_id.clone(),
            version: 0,
            state: Default::default(),
        }
    }

    /// Publishes the next version's delta, then the snapshot at that version.
    async fn publish(&mut self, changes: Vec<Change>) -> u64 {
        self.publish_as(changes, true).await
    }

    /// [`Distributor::publish`], but the delta reaches the stream only, no live subscriber.
    async fn publish_unheard(&mut self, changes: Vec<Change>) -> u64 {
        self.publish_as(changes, false).await
    }

    async fn publish_as(&mut self, changes: Vec<Change>, heard: bool) -> u64 {
        self.version += 1;
        for c in &changes {
            let key = (c.entity_type, c.id.clone());
            match &c.body {
                Some(b) => self.state.insert(key, b.clone()),
                None => self.state.remove(&key),
            };
        }
        let delta = ConfigDelta {
            schema_version: 1,
            tenant_id: self.tenant.clone(),
            store_id: self.store.clone(),
            version: self.version,
            publish_id: format!("p{}", self.version),
            published_by: "hq".into(),
            published_at_ms: tillsync_edge::now_ms(),
            changes,
        };
        let subject = config::delta_subject(&self.tenant, &self.store);
        let subject = match heard {
            true => subject,
            false => {
                let family = Family::Config.all_subjects();
                format!("{UNHEARD}.{}", subject.strip_prefix(family.trim_end_matches('>')).unwrap())
            }
        };
        let msg_id = format!("cfg:{}:{}:{}", self.tenant, self.store, self.version);
        let delta_seq = self.put(subject, Some(&msg_id), codec::encode(&delta)).await;
        let snapshot = ConfigSnapshot {
            schema_version: 1,
            tenant_id: self.tenant.clone(),
            store_id: self.store.clone(),
            version: self.version,
            delta_seq,
            published_at_ms: delta.published_at_ms,
            entities: self
                .state
                .iter()
                .map(|((t, id), b)| Change { entity_type: *t, id: id.clone(), body: Some(b.clone()) })
                .collect(),
        };
        self.put(config::snapshot_subject(&self.tenant, &self.store), None, codec::encode(&snapshot)).await;
        self.version
    }

    /// Publishes raw bytes as a delta (a malformed one).
    async fn publish_raw_delta(&self, bytes: Vec<u8>) -> u64 {
        self.put(config::delta_subject(&self.tenant, &self.store), None, bytes).await
    }

    async fn put(&self, subject: String, msg_id: Option<&str>, payload: Vec<u8>) -> u64 {
        let mut headers = HeaderMap::new();
        headers.insert(tillsync_schemas::config::HEADER_VERSION, self.version.to_string().as_str());
        if let Some(id) = msg_id {
            headers.insert(streams::HEADER_MSG_ID, id);
        }
        let ack = self.js.publish_with_headers(subject, headers, payload.into()).await.unwrap().await.unwrap();
        ack.sequence
    }
}

fn upsert(t: EntityType, id: &str, body: Value) -> Change {
    Change { entity_type: t, id: id.into(), body: Some(body) }
}

fn delete(t: EntityType, id: &str) -> Change {
    Change { entity_type: t, id: id.into(), body: None }
}

fn menu() -> Vec<Change> {
    vec![
        upsert(EntityType::MenuCategory, "mains", json!({"name": "Mains"})),
        upsert(EntityType::MenuItem, "burger", json!({"name": "Burger", "price_minor": 950, "category_id": "mains"})),
        upsert(EntityType::MenuItem, "fries", json!({"name": "Fries", "price_minor": 350, "category_id": "mains"})),
        upsert(EntityType::Tender, "cash", json!({"name": "Cash"})),
    ]
}

/// A test's stack, with version 1 (the [`menu`]) published for `device`'s store, and a folder
/// for its bridge.
async fn world(device: &str) -> (Stack, DeviceAddr, Distributor, tempfile::TempDir) {
    let stack = Stack::start().await;
    let d = DeviceAddr::new("acme", "s1", device);
    let mut hq = Distributor::new(stack.nats.jetstream().await, &d).await;
    hq.publish(menu()).await;
    (stack, d, hq, tempfile::tempdir().unwrap())
}

async fn version(bridge: &Bridge) -> u64 {
    bridge_status(bridge).await.config_revision
}

fn applied(bridge: &Bridge, via: &str) -> Option<f64> {
    metric(&bridge.metrics_text(), "tillsync_edge_config_applied_total", &format!("via=\"{via}\""))
}

async fn get_json(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let (code, body) = http_get(addr, path).await.expect("local API answers");
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn first_boot_takes_the_snapshot_then_deltas_and_the_pos_reads_it_with_nats_down() {
    let mut stack = Stack::start().await;
    let d = DeviceAddr::new("acme", "s1", "till-c");
    let mut hq = Distributor::new(stack.nats.jetstream().await, &d).await;
    hq.publish(menu()).await;
    hq.publish(vec![upsert(EntityType::Tax, "vat", json!({"name": "VAT", "rate_bp": 2000}))]).await;
    let dir = tempfile::tempdir().unwrap();
    let handler = recording_handler(dir.path());
    let mut cfg = config(&stack, &d, dir.path());
    cfg.handler_exec = Some(handler.clone());
    // Beats only at connect and on an applied version.
    cfg.heartbeat_s = 3_600;
    let bridge = Bridge::start(cfg).await.unwrap();
    let api = bridge.http_addr().unwrap();
    let nats = stack.nats.client().await;
    let mut beats = nats.subscribe(subject::heartbeats(&d)).await.unwrap();

    eventually_eq(T, "first boot reaches version 2", 2, || version(&bridge)).await;
    eventually_eq(T, "one snapshot counted", (Some(1.0), Some(0.0)), || async {
        (applied(&bridge, "snapshot"), applied(&bridge, "delta"))
    })
    .await;
    let (code, body) = get_json(api, "/v1/config").await;
    assert_eq!(code, 200);
    assert_eq!(body["version"], 2);
    assert_eq!(body["entities"]["menu_item"]["burger"]["price_minor"], 950);
    assert_eq!(body["entities"]["tax"]["vat"]["rate_bp"], 2000);

    // A new version arrives as a delta within seconds; a delete removes the entity.
    let started = std::time::Instant::now();
    hq.publish(vec![upsert(
        EntityType::MenuItem,
        "burger",
        json!({"name": "Burger", "price_minor": 990, "category_id": "mains"}),
    )])
    .await;
    eventually_eq(T, "delta 3 applied", 3, || version(&bridge)).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "took {:?}", started.elapsed());
    // The broker hears of the applied version at once, not at the next periodic heartbeat.
    let beat = async {
        loop {
            let m = beats.next().await.expect("heartbeat subscription");
            if codec::decode_heartbeat(&m.subject, &m.payload).unwrap().config_revision == 3 {
                return;
            }
        }
    };
    tokio::time::timeout(T, beat).await.expect("a heartbeat carrying version 3");
    hq.publish(vec![delete(EntityType::MenuItem, "fries")]).await;
    eventually_eq(T, "delta 4 applied", 4, || version(&bridge)).await;
    // The counters follow the commit that the version shows, a moment later.
    eventually_eq(T, "two deltas counted", Some(2.0), || async { applied(&bridge, "delta") }).await;
    eventually_eq(T, "version gauge", Some(4.0), || async {
        metric(&bridge.metrics_text(), "tillsync_edge_config_version", "")
    })
    .await;

    // The handler got each applied change set once, in order.
    eventually_eq(T, "three change sets handed over", 3, || async { handled(&handler).len() }).await;
    let got = handled(&handler);
    let versions: Vec<_> =
        got.iter().map(|h| (h["kind"].clone(), h["version"].clone(), h["snapshot"].clone())).collect();
    assert_eq!(
        versions,
        vec![
            (json!("config_applied"), json!(2), json!(true)),
            (json!("config_applied"), json!(3), json!(false)),
            (json!("config_applied"), json!(4), json!(false))
        ]
    );
    assert_eq!(got[2]["changes"], json!([{"type": "menu_item", "id": "fries", "body": null}]));

    // The POS reads its configuration from SQLite with NATS gone.
    stack.nats.stop();
    let (code, body) = get_json(api, "/v1/config").await;
    assert_eq!(code, 200);
    assert_eq!(body["version"], 4);
    assert_eq!(body["entities"]["menu_item"]["burger"]["price_minor"], 990);
    assert!(body["entities"]["menu_item"].get("fries").is_none(), "{body}");
    let (code, body) = get_json(api, "/v1/config/changes?since=2").await;
    assert_eq!(code, 200);
    assert_eq!(body["version"], 4);
    let changes: Vec<_> =
        body["changes"].as_array().unwrap().iter().map(|c| (c["version"].clone(), c["id"].clone())).collect();
    assert_eq!(changes, vec![(json!(3), json!("burger")), (json!(4), json!("fries"))]);
    assert_eq!(body["changes"][1]["body"], Value::Null);
    assert_eq!(get_json(api, "/v1/config/changes?since=4").await, (200, json!({"version": 4, "changes": []})));
    // Before the snapshot the log does not reach: the POS must read the whole configuration.
    let (code, body) = get_json(api, "/v1/config/changes?since=1").await;
    assert_eq!((code, body["code"].as_str()), (410, Some("snapshot_required")));
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_bridge_behind_by_more_than_the_kept_deltas_takes_one_snapshot() {
    let stack = Stack::start().await;
    let d = DeviceAddr::new("acme", "s1", "till-a");
    // The other device decides by the gap alone: its threshold is never reached.
    let gap = DeviceAddr::new("acme", "s1", "till-g");
    let mut hq = Distributor::new(stack.nats.jetstream().await, &d).await;
    hq.publish(menu()).await;
    let (dir_a, dir_g) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg_a = config(&stack, &d, dir_a.path());
    let mut cfg_g = config(&stack, &gap, dir_g.path());
    cfg_g.config_snapshot_after = 1_000;
    for cfg in [&cfg_a, &cfg_g] {
        let bridge = Bridge::start(cfg.clone()).await.unwrap();
        eventually_eq(T, "version 1", 1, || version(&bridge)).await;
        bridge.shutdown().await;
    }

    // While they are off, more versions than the stream keeps.
    let kept = config::DEFAULT_DELTAS_KEPT;
    for n in 0..kept + 5 {
        hq.publish(vec![upsert(EntityType::Tender, &format!("t{}", n % 7), json!({"name": format!("T{n}")}))]).await;
    }
    let t5 = (0..kept + 5).rev().find(|n| n % 7 == 5).unwrap();
    for cfg in [cfg_a, cfg_g] {
        let last = hq.version;
        let bridge = Bridge::start(cfg).await.unwrap();
        eventually_eq(T, "caught up", last, || version(&bridge)).await;
        eventually_eq(T, "one snapshot counted", (Some(1.0), Some(0.0)), || async {
            (applied(&bridge, "snapshot"), applied(&bridge, "delta"))
        })
        .await;
        let (_, body) = get_json(bridge.http_addr().unwrap(), "/v1/config").await;
        assert_eq!(body["entities"]["tender"]["t5"]["name"], format!("T{t5}"));
        // And deltas again after that.
        hq.publish(vec![delete(EntityType::Tender, "cash")]).await;
        eventually_eq(T, "the next delta", hq.version, || version(&bridge)).await;
        eventually_eq(T, "one delta counted", Some(1.0), || async { applied(&bridge, "delta") }).await;
        bridge.shutdown().await;
    }
}

#[tokio::test]
async fn a_malformed_delta_is_refused_with_a_code_and_the_next_snapshot_moves_on() {
    let (stack, d, mut hq, dir) = world("till-m").await;
    let bridge = Bridge::start(config(&stack, &d, dir.path())).await.unwrap();
    eventually_eq(T, "version 1", 1, || version(&bridge)).await;

    hq.publish_raw_delta(b"\xc1 not msgpack".to_vec()).await;
    let refused =
        || async { metric(&bridge.metrics_text(), "tillsync_edge_config_refused_total", "code=\"undecodable\"") };
    eventually_eq(T, "the malformed delta refused", Some(1.0), refused).await;
    assert_eq!(version(&bridge).await, 1, "nothing applied from it");
    let pool = tillsync_edge::db::open_read_only(&dir.path().join("edge.db")).await.unwrap();
    let codes: Vec<String> = sqlx::query_scalar("SELECT code FROM refused_config").fetch_all(&pool).await.unwrap();
    assert_eq!(codes, vec!["undecodable"]);

    // The next version's snapshot lies past the refused message: the store moves on.
    hq.publish(vec![delete(EntityType::Tender, "cash")]).await;
    eventually_eq(T, "version 2", 2, || version(&bridge)).await;
    hq.publish(vec![upsert(EntityType::Tender, "card", json!({"name": "Card"}))]).await;
    eventually_eq(T, "version 3", 3, || version(&bridge)).await;
    assert_eq!(refused().await, Some(1.0), "refused once, not once per retry");
    pool.close().await;
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_command_whose_if_match_names_a_stale_config_version_is_rejected() {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let js = stack.nats.jetstream().await;
    let d = DeviceAddr::new("acme", "s1", "till-i");
    let mut hq = Distributor::new(js.clone(), &d).await;
    hq.publish(menu()).await;
    hq.publish(vec![delete(EntityType::Tender, "cash")]).await;
    let dir = tempfile::tempdir().unwrap();
    let handler = recording_handler(dir.path());
    let mut cfg = config(&stack, &d, dir.path());
    cfg.handler_exec = Some(handler.clone());
    let bridge = Bridge::start(cfg).await.unwrap();
    eventually_eq(T, "version 2", 2, || version(&bridge)).await;
    wait_commands_live(&bridge).await;

    let mut stale = settings_patch(&d, 9, tillsync_edge::now_ms(), 60_000);
    stale.if_match = Some(1);
    publish_command(&js, &stale, 1).await;
    let ack = the_ack(&js, &d, &stale.command_id).await;
    assert_eq!((ack.outcome, ack.code.as_str()), (Outcome::Rejected, "precondition_failed"));
    assert!(ack.detail.contains("applied revision is 2"), "{}", ack.detail);

    let mut current = settings_patch(&d, 9, tillsync_edge::now_ms(), 60_000);
    current.if_match = Some(2);
    publish_command(&js, &current, 1).await;
    let ack = the_ack(&js, &d, &current.command_id).await;
    assert_eq!((ack.outcome, ack.code.as_str()), (Outcome::Applied, "ok"));
    let commands: Vec<_> = handled(&handler).into_iter().filter(|h| h.get("command_id").is_some()).collect();
    assert_eq!(commands.len(), 1, "only the matching command reached the handler");
    assert_eq!(version(&bridge).await, 2, "a settings_patch does not move the configuration version");
    bridge.shutdown().await;
    broker.stop().await;
}

/// `tillsync-edge run` with the debug-build pause in the middle of each apply.
fn edge_paused(cfg: &tillsync_edge::Config, pause_ms: Option<u64>) -> Child {
    let mut cmd = Command::new(bin_path("tillsync-edge"));
    cmd.arg("run").envs(cfg.to_env()).env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::inherit());
    if let Some(ms) = pause_ms {
        cmd.env("TILLSYNC_EDGE_TEST_APPLY_PAUSE_MS", ms.to_string());
    }
    cmd.spawn().expect("spawn tillsync-edge")
}

async fn on_file(db: &Path) -> store_config::cache::Current {
    let pool = tillsync_edge::db::open(db, false).await.unwrap();
    let c = store_config::cache::current(&pool).await.unwrap();
    pool.close().await;
    c
}

#[tokio::test]
async fn kill_9_mid_apply_leaves_the_old_version_and_a_restart_reaches_the_new_one() {
    let (stack, d, mut hq, dir) = world("till-k").await;
    let mut cfg = config(&stack, &d, dir.path());
    cfg.http_addr = tillsync_tests::free_addr();
    let db = cfg.db.clone();
    let marker = dir.path().join("edge.db.applying");

    // Killed halfway through the first snapshot: nothing at all.
    for want in [0, 1] {
        let _ = std::fs::remove_file(&marker);
        let mut edge = edge_paused(&cfg, Some(30_000));
        eventually(T, "the apply paused halfway", || async { marker.exists().then_some(()) }).await;
        edge.kill().unwrap();
        edge.wait().unwrap();
        let c = on_file(&db).await;
        assert_eq!(c.version, want, "the old version");
        let entities = if want == 0 { 0 } else { menu().len() };
        assert_eq!(c.entities.values().map(|m| m.len()).sum::<usize>(), entities, "the old entities: {c:?}");

        // Restarted without the pause: the new version, whole.
        let mut edge = edge_paused(&cfg, None);
        let next = want + 1;
        eventually_eq(T, "the new version after restart", next, || async { on_file(&db).await.version }).await;
        let c = on_file(&db).await;
        edge.kill().unwrap();
        edge.wait().unwrap();
        if next == 1 {
            assert_eq!(c.entities["menu_item"].len(), 2);
            // The next version changes four entities: the kill lands after two of them.
            hq.publish(vec![
                delete(EntityType::MenuItem, "fries"),
                upsert(EntityType::Tender, "card", json!({"name": "Card"})),
                upsert(EntityType::Tender, "voucher", json!({"name": "Voucher"})),
                upsert(EntityType::Tax, "vat", json!({"name": "VAT", "rate_bp": 2000})),
            ])
            .await;
        } else {
            assert_eq!(c.entities["menu_item"].len(), 1);
            assert_eq!(c.entities["tender"].len(), 3);
            assert!(c.entities.contains_key("tax"));
        }
    }
}

/// `tillsync-edge run` with the configuration recheck every `recheck_ms`.
fn edge_rechecking(cfg: &tillsync_edge::Config, recheck_ms: u64) -> Child {
    let mut cmd = Command::new(bin_path("tillsync-edge"));
    cmd.arg("run").envs(cfg.to_env()).env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::inherit());
    cmd.env("TILLSYNC_EDGE_CONFIG_RECHECK_MS", recheck_ms.to_string());
    cmd.spawn().expect("spawn tillsync-edge")
}

async fn scraped(addr: std::net::SocketAddr, name: &str, labels: &str) -> Option<f64> {
    let (_, text) = http_get(addr, "/metrics").await?;
    metric(&text, name, labels)
}

#[tokio::test]
async fn a_lost_live_delta_is_caught_up_by_the_periodic_recheck() {
    let (stack, d, mut hq, dir) = world("till-r").await;
    let mut cfg = config(&stack, &d, dir.path());
    cfg.http_addr = tillsync_tests::free_addr();
    let (db, api) = (cfg.db.clone(), cfg.http_addr);
    let js = stack.nats.jetstream().await;
    let mut edge = edge_rechecking(&cfg, 500);
    // Served once the bridge has made and migrated its SQLite file: only then read it here.
    let rechecks = || scraped(api, "tillsync_edge_config_catchups_total", "why=\"recheck\"");
    eventually_eq(T, "metrics served", Some(0.0), rechecks).await;
    eventually_eq(T, "version 1", 1, || async { on_file(&db).await.version }).await;

    // Version 2 is on the stream, but its live delta never reaches the bridge.
    hq.publish_unheard(vec![delete(EntityType::MenuItem, "fries")]).await;
    eventually_eq(T, "version 2, caught up by a recheck", 2, || async { on_file(&db).await.version }).await;
    eventually_eq(T, "the catch-up counted", Some(1.0), rechecks).await;
    assert_eq!(on_file(&db).await.entities["menu_item"].len(), 1, "fries deleted");
    assert_eq!(scraped(api, "tillsync_edge_config_applied_total", "via=\"delta\"").await, Some(1.0));
    let consumers = || async {
        let stream = js.get_stream(streams::CONFIG).await.unwrap();
        stream.consumer_names().map(|n| n.unwrap()).collect::<Vec<String>>().await
    };
    eventually_eq(T, "its catch-up consumer deleted", Vec::<String>::new(), consumers).await;

    // The next version comes live, and later rechecks find the bridge in step.
    hq.publish(vec![upsert(EntityType::Tender, "card", json!({"name": "Card"}))]).await;
    eventually_eq(T, "version 3", 3, || async { on_file(&db).await.version }).await;
    assert_eq!(rechecks().await, Some(1.0));
    edge.kill().unwrap();
    edge.wait().unwrap();
}

#[tokio::test]
async fn a_reconnect_reads_from_the_stream_what_the_subscription_missed() {
    let (mut stack, d, mut hq, dir) = world("till-n").await;
    let bridge = Bridge::start(config(&stack, &d, dir.path())).await.unwrap();
    eventually_eq(T, "version 1", 1, || version(&bridge)).await;
    let catchups =
        || async { metric(&bridge.metrics_text(), "tillsync_edge_config_catchups_total", "why=\"connect\"") };
    assert_eq!(catchups().await, Some(0.0), "first boot: the snapshot alone");

    // Version 2 never reaches the subscription; the recheck (5 min) is far off. Only starting
    // over at the reconnect finds it.
    hq.publish_unheard(vec![delete(EntityType::MenuItem, "fries")]).await;
    stack.nats.restart().await;
    eventually_eq(T, "version 2 after the reconnect", 2, || version(&bridge)).await;
    eventually_eq(T, "one catch-up by deltas", (Some(1.0), Some(1.0)), || async {
        (catchups().await, applied(&bridge, "delta"))
    })
    .await;
    hq.publish(vec![upsert(EntityType::Tender, "card", json!({"name": "Card"}))]).await;
    eventually_eq(T, "version 3, live", 3, || version(&bridge)).await;
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_gap_on_the_subscription_takes_the_snapshot() {
    let (stack, d, mut hq, dir) = world("till-p").await;
    let bridge = Bridge::start(config(&stack, &d, dir.path())).await.unwrap();
    eventually_eq(T, "version 1", 1, || version(&bridge)).await;
    hq.publish_unheard(vec![delete(EntityType::MenuItem, "fries")]).await;
    hq.publish(vec![upsert(EntityType::Tender, "card", json!({"name": "Card"}))]).await;
    eventually_eq(T, "version 3", 3, || version(&bridge)).await;
    // The first boot's snapshot, then the one the gap (3 after 1) called for.
    eventually_eq(T, "two snapshots", Some(2.0), || async { applied(&bridge, "snapshot") }).await;
    let (_, body) = get_json(bridge.http_addr().unwrap(), "/v1/config").await;
    assert!(body["entities"]["menu_item"].get("fries").is_none(), "{body}");
    assert_eq!(body["entities"]["tender"]["card"]["name"], "Card");
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_failing_handler_is_retried_and_counted_without_holding_the_sync_back() {
    let (stack, d, mut hq, dir) = world("till-h").await;
    // Fails until `<script>.ok` exists, then records what it gets.
    let handler = dir.path().join("flaky.sh");
    std::fs::write(&handler, "#!/bin/sh\n[ -f \"$0.ok\" ] || exit 1\ncat >> \"$0.log\"\necho >> \"$0.log\"\n").unwrap();
    std::fs::set_permissions(&handler, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755))
        .unwrap();
    let mut cfg = config(&stack, &d, dir.path());
    cfg.handler_exec = Some(handler.clone());
    let bridge = Bridge::start(cfg).await.unwrap();

    eventually_eq(T, "version 1 applied while the handler fails", 1, || version(&bridge)).await;
    let failures =
        || async { metric(&bridge.metrics_text(), "tillsync_edge_config_handler_failures_total", "").unwrap_or(0.0) };
    eventually(T, "handler failures counted", || async { (failures().await >= 2.0).then_some(()) }).await;
    hq.publish(vec![delete(EntityType::Tender, "cash")]).await;
    eventually_eq(T, "version 2 applied while the handler fails", 2, || version(&bridge)).await;
    assert!(handled(&handler).is_empty());

    std::fs::write(format!("{}.ok", handler.display()), b"").unwrap();
    eventually_eq(T, "both versions handed over, in order", vec![json!(1), json!(2)], || async {
        handled(&handler).iter().map(|h| h["version"].clone()).collect::<Vec<_>>()
    })
    .await;
    bridge.shutdown().await;
}
