//! Configuration from head office, the cloud side: publishes checked whole and versioned per
//! store in Postgres, distributed on JetStream (deltas in version order, then the snapshot),
//! the portal's request/reply, the `tillsync config` CLI, drift from heartbeats, and recovery
//! of versions committed while no broker ran. Real Postgres, real nats-server.

use std::collections::BTreeMap;

use async_nats::jetstream;
use serde_json::{json, Value};
use sqlx::PgPool;
use tillsync_broker::admin::store_config::{self, rows, PublishError};
use tillsync_schemas::config::{
    delta_subject, publish_subject, snapshot_subject, ChangeRequest, ChangeSet, ConfigDelta, ConfigSnapshot,
    EntityType, PublishReply, Refusal,
};
use tillsync_schemas::{codec, streams, subject, DeviceAddr, Heartbeat};
use tillsync_tests::{eventually, eventually_eq, http_get, metric, InProcBroker, Stack, DEFAULT_TIMEOUT};

use crate::common::*;
use crate::ops::tillsync;

fn upsert(t: &str, id: &str, body: Value) -> ChangeRequest {
    ChangeRequest { op: "upsert".into(), entity_type: t.into(), id: id.into(), body: Some(body) }
}

fn delete(t: &str, id: &str) -> ChangeRequest {
    ChangeRequest { op: "delete".into(), entity_type: t.into(), id: id.into(), body: None }
}

fn tenant_wide(changes: Vec<ChangeRequest>) -> ChangeSet {
    ChangeSet { tenant_id: "acme".into(), store_id: None, if_match: None, published_by: "hq".into(), changes }
}

fn menu() -> Vec<ChangeRequest> {
    vec![
        upsert("menu_category", "drinks", json!({"name": "Drinks"})),
        upsert("menu_item", "latte", json!({"name": "Latte", "price_minor": 350, "category_id": "drinks"})),
        upsert("tender", "cash", json!({"name": "Cash"})),
    ]
}

/// A device row, as `tillsync devices add` leaves it: its store now exists.
async fn add_device(pool: &PgPool, store: &str, device: &str) {
    sqlx::query("INSERT INTO devices (tenant_id, store_id, device_id, provisioned) VALUES ('acme', $1, $2, true)")
        .bind(store)
        .bind(device)
        .execute(pool)
        .await
        .unwrap();
}

async fn versions(pool: &PgPool) -> Vec<(String, i64, String)> {
    sqlx::query_as("SELECT store_id, version, publish_id FROM config_versions ORDER BY store_id, version")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Every delta on the config stream, in stream order.
pub(crate) async fn deltas(js: &jetstream::Context) -> Vec<ConfigDelta> {
    let mut stream = js.get_stream(streams::CONFIG).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(codec::decode::<ConfigDelta>(&m.payload).unwrap());
        }
    }
    out
}

/// Waits until every committed version is on the stream and every store's snapshot is current.
async fn distributed(pool: &PgPool) {
    distributed_within(pool, DEFAULT_TIMEOUT).await
}

pub(crate) async fn distributed_within(pool: &PgPool, timeout: std::time::Duration) {
    eventually(timeout, "every version and snapshot distributed", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM config_versions WHERE distributed_at IS NULL)
                  + (SELECT count(*) FROM config_stores WHERE snapshot_version < version)",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        (waiting == 0).then_some(())
    })
    .await;
}

async fn snapshot(js: &jetstream::Context, store: &str) -> ConfigSnapshot {
    let stream = js.get_stream(streams::CONFIG_SNAPSHOTS).await.unwrap();
    let m = stream.direct_get_last_for_subject(snapshot_subject("acme", store)).await.unwrap();
    codec::decode(&m.payload).unwrap()
}

async fn metrics_text(broker: &InProcBroker) -> String {
    http_get(broker.broker.http_addr, "/metrics").await.unwrap().1
}

#[tokio::test]
async fn an_invalid_publish_is_refused_whole_and_nothing_is_distributed() {
    let (stack, broker, js) = live().await;
    let pool = &stack.db.pool;
    add_device(pool, "s1", "till-1").await;
    // The item names a category that does not exist: the whole change set is refused.
    let mut bad = menu();
    bad.remove(0);
    let err = store_config::publish(pool, &tenant_wide(bad)).await.unwrap_err();
    let PublishError::Refused(r) = err else { panic!("not a refusal: {err}") };
    assert_eq!(r.code, Refusal::BadReference);
    assert!(versions(pool).await.is_empty());
    let entities: i64 = sqlx::query_scalar("SELECT count(*) FROM config_entities").fetch_one(pool).await.unwrap();
    assert_eq!(entities, 0, "nothing of a refused change set is written");
    let refusal: (String, String, String) =
        sqlx::query_as("SELECT code, published_by, detail FROM config_refusals WHERE tenant_id = 'acme'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((refusal.0.as_str(), refusal.1.as_str()), ("bad_reference", "hq"));
    assert!(refusal.2.contains("drinks"), "{}", refusal.2);
    // Unknown tenant and unknown store have their codes too.
    let mut other = tenant_wide(menu());
    other.tenant_id = "globex".into();
    let code = |e: PublishError| match e {
        PublishError::Refused(r) => r.code,
        e => panic!("{e}"),
    };
    assert_eq!(code(store_config::publish(pool, &other).await.unwrap_err()), Refusal::UnknownTenant);
    let mut nowhere = tenant_wide(vec![upsert("setting", "receipt", json!({"values": {}}))]);
    nowhere.store_id = Some("s9".into());
    assert_eq!(code(store_config::publish(pool, &nowhere).await.unwrap_err()), Refusal::UnknownStore);
    // A valid publish after them is version 1, and the stream holds exactly its delta.
    let p = store_config::publish(pool, &tenant_wide(menu())).await.unwrap();
    assert_eq!(p.versions, BTreeMap::from([("s1".to_string(), 1)]));
    distributed(pool).await;
    let on_stream = deltas(&js).await;
    assert_eq!(on_stream.len(), 1);
    assert_eq!((on_stream[0].version, on_stream[0].publish_id.as_str()), (1, p.publish_id.as_str()));
    let text = metrics_text(&broker).await;
    let refused = metric(&text, "tillsync_config_publishes_total", r#"result="refused",code="bad_reference""#);
    assert!(refused.unwrap_or(0.0) >= 1.0, "refusals are counted:\n{text}");
    broker.stop().await;
}

#[tokio::test]
async fn concurrent_publishes_get_consecutive_versions_in_one_order() {
    let (stack, broker, js) = live().await;
    let pool = &stack.db.pool;
    add_device(pool, "s1", "till-1").await;
    add_device(pool, "s2", "till-1").await;
    let a = tenant_wide(menu());
    let b = tenant_wide(vec![upsert("tax", "vat", json!({"name": "VAT", "rate_bp": 2000}))]);
    let (pa, pb) = tokio::join!(store_config::publish(pool, &a), store_config::publish(pool, &b));
    let (pa, pb) = (pa.unwrap(), pb.unwrap());
    // Each store has versions 1 and 2, and both stores saw the publishes in the same order.
    let mut got: Vec<u64> = pa.versions.values().chain(pb.versions.values()).copied().collect();
    got.sort();
    assert_eq!(got, vec![1, 1, 2, 2]);
    assert_eq!(pa.versions["s1"], pa.versions["s2"]);
    assert_eq!(pb.versions["s1"], pb.versions["s2"]);
    let first = if pa.versions["s1"] == 1 { &pa.publish_id } else { &pb.publish_id };
    distributed(pool).await;
    for store in ["s1", "s2"] {
        let on_stream: Vec<(u64, String)> =
            deltas(&js).await.into_iter().filter(|d| d.store_id == store).map(|d| (d.version, d.publish_id)).collect();
        assert_eq!(on_stream.len(), 2, "{store}: {on_stream:?}");
        assert_eq!(on_stream[0].0, 1);
        assert_eq!(&on_stream[0].1, first, "{store}'s deltas are on the stream in version order");
        assert_eq!(on_stream[1].0, 2);
    }
    broker.stop().await;
}

#[tokio::test]
async fn every_store_gets_its_version_the_snapshot_is_the_state_and_deletes_are_tombstones() {
    let (stack, broker, js) = live().await;
    let pool = &stack.db.pool;
    add_device(pool, "s1", "till-1").await;
    store_config::publish(pool, &tenant_wide(menu())).await.unwrap();
    // s1 overrides a setting; s2 appears afterwards and starts from the tenant's configuration.
    let mut own = tenant_wide(vec![upsert("setting", "receipt", json!({"values": {"footer": "Shop"}}))]);
    own.store_id = Some("s1".into());
    own.if_match = Some(1);
    assert_eq!(store_config::publish(pool, &own).await.unwrap().versions["s1"], 2);
    own.if_match = Some(1);
    let stale = store_config::publish(pool, &own).await.unwrap_err();
    assert!(matches!(stale, PublishError::Refused(r) if r.code == Refusal::PreconditionFailed));
    add_device(pool, "s2", "till-1").await;
    eventually_eq(DEFAULT_TIMEOUT, "s2's version 1", 1, || async {
        rows::current_version(pool, "acme", "s2").await.unwrap()
    })
    .await;
    // A tenant-wide publish: each store its own next version.
    let p = store_config::publish(
        pool,
        &tenant_wide(vec![delete("tender", "cash"), upsert("setting", "receipt", json!({"values": {"footer": "HQ"}}))]),
    )
    .await
    .unwrap();
    assert_eq!(p.versions, BTreeMap::from([("s1".to_string(), 3), ("s2".to_string(), 2)]));
    distributed(pool).await;
    for (store, version) in [("s1", 3), ("s2", 2)] {
        let snap = snapshot(&js, store).await;
        assert_eq!(snap.version, version);
        let state = rows::state_at(pool, "acme", store, version as i64).await.unwrap();
        assert_eq!(snap.entities, store_config::model::as_changes(&state), "{store}");
        let seq: i64 = sqlx::query_scalar(
            "SELECT delta_seq FROM config_versions WHERE tenant_id = 'acme' AND store_id = $1 AND version = $2",
        )
        .bind(store)
        .bind(version as i64)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(snap.delta_seq, seq as u64);
        let last = js
            .get_stream(streams::CONFIG)
            .await
            .unwrap()
            .direct_get_last_for_subject(delta_subject("acme", store))
            .await
            .unwrap();
        let delta: ConfigDelta = codec::decode(&last.payload).unwrap();
        let cash = delta.changes.iter().find(|c| c.id == "cash").unwrap();
        assert_eq!(cash.body, None, "a delete is a tombstone");
        let receipt = delta.changes.iter().find(|c| c.entity_type == EntityType::Setting).unwrap();
        let footer = if store == "s1" { "Shop" } else { "HQ" };
        assert_eq!(receipt.body, Some(json!({"values": {"footer": footer}})), "a store's own setting stays");
        assert!(snap.entities.iter().all(|c| c.id != "cash"));
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_portal_publish_gets_its_reply() {
    let (stack, broker, _js) = live().await;
    add_device(&stack.db.pool, "s1", "till-1").await;
    let nats = stack.nats.client().await;
    let ask = |subject: String, cs: ChangeSet| {
        let nats = nats.clone();
        async move {
            let reply = nats.request(subject, codec::encode(&cs).into()).await.unwrap();
            codec::decode::<PublishReply>(&reply.payload).unwrap()
        }
    };
    let mut cs = tenant_wide(menu());
    cs.published_by = String::new();
    match ask(publish_subject("acme", None), cs.clone()).await {
        PublishReply::Published { versions, .. } => assert_eq!(versions, BTreeMap::from([("s1".to_string(), 1)])),
        other => panic!("{other:?}"),
    }
    let by: String =
        sqlx::query_scalar("SELECT published_by FROM config_versions").fetch_one(&stack.db.pool).await.unwrap();
    assert_eq!(by, "portal");
    // The body must name the subject's tenant and store.
    match ask(publish_subject("globex", None), cs.clone()).await {
        PublishReply::Refused { code, .. } => assert_eq!(code, "wrong_tenant"),
        other => panic!("{other:?}"),
    }
    match ask(publish_subject("acme", Some("s1")), cs).await {
        PublishReply::Refused { code, .. } => assert_eq!(code, "wrong_tenant"),
        other => panic!("{other:?}"),
    }
    let garbage = nats.request(publish_subject("acme", None), vec![0xc1, 0x00].into()).await.unwrap();
    match codec::decode::<PublishReply>(&garbage.payload).unwrap() {
        PublishReply::Refused { code, .. } => assert_eq!(code, "undecodable"),
        other => panic!("{other:?}"),
    }
    let refusals: i64 = sqlx::query_scalar("SELECT count(*) FROM config_refusals WHERE code = 'wrong_tenant'")
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(refusals, 2);
    broker.stop().await;
}

#[tokio::test]
async fn a_menu_publish_leaves_availability_overrides_alone() {
    let (stack, broker, _js) = live().await;
    let pool = &stack.db.pool;
    add_device(pool, "s1", "till-1").await;
    sqlx::query(
        "INSERT INTO availability_overrides (tenant_id, store_id, sku, available, device_id, seq, updated_at)
         VALUES ('acme', 's1', 'latte', false, 'till-1', 7, now())",
    )
    .execute(pool)
    .await
    .unwrap();
    let before: Vec<(String, bool, i64)> =
        sqlx::query_as("SELECT sku, available, seq FROM availability_overrides").fetch_all(pool).await.unwrap();
    store_config::publish(pool, &tenant_wide(menu())).await.unwrap();
    let mut again = menu();
    again[1] = upsert("menu_item", "latte", json!({"name": "Latte", "price_minor": 380, "category_id": "drinks"}));
    store_config::publish(pool, &tenant_wide(again)).await.unwrap();
    distributed(pool).await;
    let after: Vec<(String, bool, i64)> =
        sqlx::query_as("SELECT sku, available, seq FROM availability_overrides").fetch_all(pool).await.unwrap();
    assert_eq!(after, before);
    assert_eq!(before, vec![("latte".to_string(), false, 7)]);
    broker.stop().await;
}

#[tokio::test]
async fn versions_committed_without_a_broker_are_distributed_when_one_starts() {
    let stack = Stack::start().await;
    let pool = &stack.db.pool;
    add_tenant(pool, "acme").await;
    add_device(pool, "s1", "till-1").await;
    let p = store_config::publish(pool, &tenant_wide(menu())).await.unwrap();
    store_config::publish(pool, &tenant_wide(vec![delete("tender", "cash")])).await.unwrap();
    let undistributed: i64 = sqlx::query_scalar("SELECT count(*) FROM config_versions WHERE distributed_at IS NULL")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(undistributed, 2);
    let broker = InProcBroker::start(stack.broker_config()).await;
    let js = stack.nats.jetstream().await;
    distributed(pool).await;
    let on_stream = deltas(&js).await;
    assert_eq!(on_stream.iter().map(|d| d.version).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(on_stream[0].publish_id, p.publish_id);
    assert_eq!(snapshot(&js, "s1").await.version, 2);
    broker.stop().await;
}

fn heartbeat(addr: &DeviceAddr, config_revision: u64) -> Heartbeat {
    Heartbeat {
        schema_version: tillsync_schemas::SCHEMA_VERSION,
        tenant_id: addr.tenant_id.clone(),
        store_id: addr.store_id.clone(),
        device_id: addr.device_id.clone(),
        at_ms: tillsync_broker::now_ms(),
        software_version: "test".into(),
        outbox_depth: 0,
        oldest_unsent_age_s: 0,
        last_acked_seq: 0,
        config_revision,
        uptime_s: 1,
        watermarks_refused: 0,
    }
}

#[tokio::test]
async fn a_new_stores_first_heartbeat_brings_the_configuration_and_drift_follows_heartbeats() {
    let (stack, broker, js) = live().await;
    let pool = &stack.db.pool;
    add_device(pool, "s1", "till-1").await;
    store_config::publish(pool, &tenant_wide(menu())).await.unwrap();
    let till = DeviceAddr::new("acme", "s7", "till-9");
    js.publish(subject::heartbeats(&till), codec::encode(&heartbeat(&till, 0)).into()).await.unwrap().await.unwrap();
    eventually_eq(DEFAULT_TIMEOUT, "s7's version 1", 1, || async {
        rows::current_version(pool, "acme", "s7").await.unwrap()
    })
    .await;
    let behind = |text: &str| metric(text, "tillsync_config_devices_behind", r#"tenant="acme""#);
    eventually_eq(DEFAULT_TIMEOUT, "one device behind", Some(1.0), || async { behind(&metrics_text(&broker).await) })
        .await;
    let latency = |text: &str| metric(text, "tillsync_config_apply_latency_seconds_count", "").unwrap_or(0.0);
    let observed = latency(&metrics_text(&broker).await);
    js.publish(subject::heartbeats(&till), codec::encode(&heartbeat(&till, 1)).into()).await.unwrap().await.unwrap();
    eventually_eq(DEFAULT_TIMEOUT, "nobody behind", Some(0.0), || async { behind(&metrics_text(&broker).await) }).await;
    assert!(latency(&metrics_text(&broker).await) > observed, "the apply latency was observed");
    // A till that falls behind and is then decommissioned never catches up: not counted.
    let set = |sql: &'static str| async move { sqlx::query(sql).execute(pool).await.unwrap() };
    set("UPDATE devices SET config_revision = 0 WHERE device_id = 'till-9'").await;
    eventually_eq(DEFAULT_TIMEOUT, "behind again", Some(1.0), || async { behind(&metrics_text(&broker).await) }).await;
    set("UPDATE devices SET decommissioned_at = now() WHERE device_id = 'till-9'").await;
    eventually_eq(DEFAULT_TIMEOUT, "a decommissioned till is not behind", Some(0.0), || async {
        behind(&metrics_text(&broker).await)
    })
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn the_cli_publishes_shows_diffs_and_lists_drift() {
    let (stack, broker, _js) = live().await;
    let pool = &stack.db.pool;
    add_device(pool, "s1", "till-1").await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, v: Value| {
        let p = dir.path().join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p.display().to_string()
    };
    let first = file("menu.json", json!({"changes": menu()}));
    let run = tillsync(&stack, &["--json", "config", "publish", "--tenant", "acme", "--by", "ops", &first]).await.ok();
    assert_eq!(run.json()["result"], "published");
    assert_eq!(run.json()["versions"]["s1"], 1);
    let second = file(
        "price.json",
        json!({"tenant_id": "acme", "changes": [
            upsert("menu_item", "latte", json!({"name": "Latte", "price_minor": 380, "category_id": "drinks"})),
            delete("tender", "cash"),
        ]}),
    );
    tillsync(&stack, &["config", "publish", "--tenant", "acme", &second]).await.ok();
    // Refused: exit 6 with the code, as JSON too.
    let wrong = tillsync(&stack, &["--json", "config", "publish", "--tenant", "globex", &second]).await;
    assert_eq!(wrong.code, 6, "{}", wrong.stderr);
    assert_eq!(wrong.json()["code"], "wrong_tenant");
    let dangling = file("bad.json", json!({"changes": [delete("menu_category", "drinks")]}));
    let refused = tillsync(&stack, &["config", "publish", "--tenant", "acme", &dangling]).await;
    assert_eq!(refused.code, 6);
    assert!(refused.stdout.contains("bad_reference"), "{}", refused.stdout);
    let usage = tillsync(&stack, &["config", "publish", &second]).await;
    assert_eq!(usage.code, 2);

    let shown = tillsync(&stack, &["--json", "config", "show", "--tenant", "acme", "--store", "s1", "--version", "1"])
        .await
        .ok();
    let ids: Vec<String> =
        shown.json()["entities"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, vec!["drinks", "latte", "cash"]);
    let now = tillsync(&stack, &["--json", "config", "show", "--tenant", "acme", "--store", "s1"]).await.ok();
    assert_eq!(now.json()["version"], 2);
    assert_eq!(now.json()["entities"].as_array().unwrap().len(), 2);
    let missing = tillsync(&stack, &["config", "show", "--tenant", "acme", "--store", "s1", "--version", "9"]).await;
    assert_eq!(missing.code, 4);

    let diff =
        tillsync(&stack, &["--json", "config", "diff", "--tenant", "acme", "--store", "s1", "1", "2"]).await.ok();
    let changes: Vec<(String, String)> = diff.json()["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap().into(), c["change"].as_str().unwrap().into()))
        .collect();
    assert_eq!(changes, vec![("latte".into(), "changed".into()), ("cash".into(), "removed".into())]);

    sqlx::query("UPDATE devices SET config_revision = 1 WHERE store_id = 's1'").execute(pool).await.unwrap();
    add_device(pool, "s2", "till-2").await;
    sqlx::query("UPDATE devices SET config_revision = 0 WHERE store_id = 's2'").execute(pool).await.unwrap();
    let status = tillsync(&stack, &["--json", "config", "status", "--tenant", "acme", "--behind"]).await.ok();
    let rows = status.json();
    let rows = rows.as_array().unwrap();
    assert!(rows
        .iter()
        .any(|r| r["store_id"] == "s1" && r["desired"] == 2 && r["applied"] == 1 && r["behind_since"].is_string()));
    let everyone = tillsync(&stack, &["config", "status"]).await.ok();
    assert!(everyone.stdout.contains("till-1"), "{}", everyone.stdout);
    broker.stop().await;
}

#[tokio::test]
async fn a_snapshot_nats_lost_is_republished_at_the_stores_version() {
    let stack = Stack::start().await;
    let pool = &stack.db.pool;
    add_tenant(pool, "acme").await;
    add_device(pool, "s1", "till-1").await;
    add_device(pool, "s2", "till-2").await;
    // The fault below purges a snapshot, which the streams otherwise deny.
    let mut config = stack.broker_config();
    config.fault_streams_deletable = true;
    let broker = InProcBroker::start(config.clone()).await;
    let js = stack.nats.jetstream().await;
    store_config::publish(pool, &tenant_wide(menu())).await.unwrap();
    distributed(pool).await;
    let before = snapshot(&js, "s1").await;
    let stream = js.get_stream(streams::CONFIG_SNAPSHOTS).await.unwrap();
    let s2_seq = stream.direct_get_last_for_subject(snapshot_subject("acme", "s2")).await.unwrap().sequence;
    broker.stop().await;

    // The fault: NATS no longer holds s1's snapshot (a lost write or a recreated stream leaves
    // it so), while Postgres records it as published. A till on first boot would find none.
    stream.purge().filter(snapshot_subject("acme", "s1")).await.unwrap();
    assert!(stream.direct_get_last_for_subject(snapshot_subject("acme", "s1")).await.is_err());

    let broker = InProcBroker::start(config).await;
    let again = eventually(DEFAULT_TIMEOUT, "s1's snapshot back on JetStream", || async {
        let m = stream.direct_get_last_for_subject(snapshot_subject("acme", "s1")).await.ok()?;
        Some(codec::decode::<ConfigSnapshot>(&m.payload).unwrap())
    })
    .await;
    assert_eq!((again.version, again.delta_seq), (before.version, before.delta_seq));
    assert_eq!(again.entities, before.entities);
    // Only the lost one is published again.
    let s2_now = stream.direct_get_last_for_subject(snapshot_subject("acme", "s2")).await.unwrap().sequence;
    assert_eq!(s2_now, s2_seq, "s2's snapshot was not lost and is not republished");
    let lost = metric(&metrics_text(&broker).await, "tillsync_config_snapshots_lost_total", "").unwrap_or(0.0);
    assert!(lost >= 1.0, "the republish is counted: {lost}");
    broker.stop().await;
}

#[tokio::test]
async fn a_snapshot_never_replaces_a_newer_one() {
    let stack = Stack::start().await;
    let pool = &stack.db.pool;
    add_tenant(pool, "acme").await;
    add_device(pool, "s1", "till-1").await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let js = stack.nats.jetstream().await;
    store_config::publish(pool, &tenant_wide(menu())).await.unwrap();
    distributed(pool).await;
    broker.stop().await;
    store_config::publish(pool, &tenant_wide(vec![delete("tender", "cash")])).await.unwrap();

    // What an instance that took partition 0 over could have stored while this one was
    // paused: a snapshot newer than the state this one is about to read.
    let mut newer = snapshot(&js, "s1").await;
    newer.version = 99;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(tillsync_schemas::config::HEADER_VERSION, "99");
    let stored = js
        .publish_with_headers(snapshot_subject("acme", "s1"), headers, tillsync_schemas::encode(&newer).into())
        .await
        .unwrap()
        .await
        .unwrap();

    let broker = InProcBroker::start(stack.broker_config()).await;
    distributed(pool).await;
    let stream = js.get_stream(streams::CONFIG_SNAPSHOTS).await.unwrap();
    let last = stream.direct_get_last_for_subject(snapshot_subject("acme", "s1")).await.unwrap();
    assert_eq!(last.sequence, stored.sequence, "version 2's snapshot did not replace version 99's");
    assert_eq!(deltas(&js).await.iter().map(|d| d.version).collect::<Vec<_>>(), vec![1, 2]);
    broker.stop().await;
}
