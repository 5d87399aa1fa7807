//! Events JetStream acked and then lost (a power cut on a nats-server with its default fsync;
//! simulated by deleting them from TILLSYNC_EVENTS) are sent again from the bridge's outbox and
//! land exactly once: after a stalled watermark, on reconnect, and when the broker asks for an
//! open gap or for seqs a device reports beyond the watermark.

use std::path::Path;

use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use tillsync_edge::{Bridge, EventDraft};
use tillsync_schemas::{codec, streams, subject, DeviceAddr};
use tillsync_tests::{eventually, eventually_eq, inproc_broker_metric, metric, InProcBroker, Stack};

use crate::common::*;
use crate::edge::support::*;

/// A stack with tenant `acme` and the broker's streams, but no broker running yet (so the
/// bridge's publishes wait in the stream), and the broker config to start it with.
async fn stopped_broker(gap_repair_after_s: u64) -> (Stack, Context, tillsync_broker::config::Config) {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let mut cfg = stack.broker_config();
    cfg.gap_repair_after_s = gap_repair_after_s;
    // These tests play NATS write loss by deleting acknowledged events.
    cfg.fault_streams_deletable = true;
    let js = stack.nats.jetstream().await;
    tillsync_broker::admin::streams::ensure(&js, &cfg).await.unwrap();
    (stack, js, cfg)
}

async fn bridge(stack: &Stack, d: &DeviceAddr, dir: &Path, resend_after_s: u64) -> Bridge {
    let mut c = config(stack, d, dir);
    c.resend_after_s = resend_after_s;
    let b = Bridge::start(c).await.unwrap();
    wait_connected(&b).await;
    b
}

/// Submits one order's `n` events (opened, then items) and waits until JetStream acked all.
async fn submit_and_publish(bridge: &Bridge, n: u64) {
    bridge.submit(EventDraft::new(opened("o-1"))).await.unwrap();
    for i in 2..=n {
        bridge.submit(EventDraft::new(item("o-1", &format!("l-{i}"), i as i32))).await.unwrap();
    }
    eventually_eq(T, "every event acked by JetStream", n, || async { bridge_status(bridge).await.last_sent_seq }).await;
}

/// Deletes the first sends (not resends) of the device's events whose seq `lose` picks, as a
/// power cut would lose them; returns how many.
async fn lose(js: &Context, d: &DeviceAddr, lose: impl Fn(u64) -> bool) -> usize {
    let mut stream = js.get_stream(streams::EVENTS).await.unwrap();
    let info = stream.info().await.unwrap().clone();
    let mut lost = 0;
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else { continue };
        let ev = codec::decode_event(&m.subject, &m.payload).unwrap();
        let msg_id = m.headers.get(streams::HEADER_MSG_ID).map(|v| v.to_string());
        if lose(ev.seq)
            && msg_id.is_some_and(|id| {
                id.starts_with(&streams::msg_id_prefix(d, "")) && id.ends_with(&format!(":{}", ev.event_id))
            })
        {
            assert!(stream.delete_message(seq).await.unwrap());
            lost += 1;
        }
    }
    lost
}

/// Every event 1..=n is in the ledger once, the order's rows are there once, nothing conflicted,
/// the watermark reached n and the bridge's outbox drained.
async fn landed_once(stack: &Stack, bridge: &Bridge, n: u64) {
    let db = &stack.db;
    eventually_eq(T, "device watermark", n as i64, || {
        db.count("SELECT coalesce(max(watermark), 0) FROM devices WHERE device_id = 'till-1'")
    })
    .await;
    assert_eq!(db.count("SELECT count(*) FROM processed_events WHERE device_id = 'till-1'").await, n as i64);
    assert_eq!(db.count("SELECT count(DISTINCT seq) FROM processed_events WHERE device_id = 'till-1'").await, n as i64);
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM order_items").await, n as i64 - 1);
    let want: i64 = (2..=n as i64).sum();
    assert_eq!(
        db.count("SELECT coalesce(sum(quantity), 0)::int8 FROM order_items").await,
        want,
        "no item applied twice"
    );
    assert_eq!(db.count("SELECT count(*) FROM conflicts").await, 0);
    eventually(T, "outbox drained by the watermark", || async {
        let s = bridge_status(bridge).await;
        (s.outbox.watermark == n && s.outbox.rows == 0).then_some(())
    })
    .await;
}

fn resent(bridge: &Bridge, reason: &str) -> f64 {
    metric(&bridge.metrics_text(), "tillsync_edge_events_resent_total", &format!("reason=\"{reason}\"")).unwrap()
}

fn resend_requests(why: &str) -> f64 {
    inproc_broker_metric("tillsync_resend_requests_total", &format!("why=\"{why}\""))
}

#[tokio::test]
async fn jetstream_swallows_a_resend_under_the_msg_id_of_a_deleted_message() {
    let (_stack, js, _) = stopped_broker(3600).await;
    let d = DeviceAddr::new("acme", "s1", "till-1");
    let ev = event(&d, 1, opened("o-1"));
    let prefix = streams::msg_id_prefix(&d, "test");
    let send = |msg_id: String| {
        let js = js.clone();
        let bytes = codec::encode(&ev);
        let subject = subject::events(&d);
        async move {
            let mut h = HeaderMap::new();
            h.insert(streams::HEADER_MSG_ID, msg_id.as_str());
            js.publish_with_headers(subject, h, bytes.into()).await.unwrap().await.unwrap()
        }
    };
    let first = send(streams::event_msg_id(&prefix, &ev.event_id)).await;
    assert!(!first.duplicate);
    let stream = js.get_stream(streams::EVENTS).await.unwrap();
    assert!(stream.delete_message(first.sequence).await.unwrap());
    let same_id = send(streams::event_msg_id(&prefix, &ev.event_id)).await;
    assert!(same_id.duplicate, "the duplicate window outlives the deleted message: a same-id resend never lands");
    let resend = send(streams::event_resend_msg_id(&prefix, &ev.event_id, 1)).await;
    assert!(!resend.duplicate, "a resend under its own msg id lands");
}

#[tokio::test]
async fn acked_then_deleted_events_are_resent_after_a_stall_and_land_once() {
    let (stack, js, cfg) = stopped_broker(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let d = DeviceAddr::new("acme", "s1", "till-1");
    let bridge = bridge(&stack, &d, dir.path(), 2).await;
    submit_and_publish(&bridge, 3).await;
    assert_eq!(lose(&js, &d, |_| true).await, 3);
    let broker = InProcBroker::start(cfg).await;
    landed_once(&stack, &bridge, 3).await;
    assert!(resent(&bridge, "stall") >= 3.0);
    bridge.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_gap_older_than_the_bound_is_repaired_by_a_request_to_the_device() {
    let (stack, js, cfg) = stopped_broker(1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = DeviceAddr::new("acme", "s1", "till-1");
    let bridge = bridge(&stack, &d, dir.path(), 3600).await;
    submit_and_publish(&bridge, 10).await;
    assert_eq!(lose(&js, &d, |seq| seq == 4).await, 1);
    let before = resend_requests("gap");
    let broker = InProcBroker::start(cfg).await;
    landed_once(&stack, &bridge, 10).await;
    let db = &stack.db;
    assert_eq!(db.count("SELECT count(*) FROM device_gaps WHERE from_seq = 4 AND filled_at IS NOT NULL").await, 1);
    assert!(resend_requests("gap") >= before + 1.0);
    assert!(resent(&bridge, "request") >= 1.0);
    assert_eq!(resent(&bridge, "stall"), 0.0);
    bridge.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn events_lost_at_the_tail_are_requested_from_what_the_heartbeat_reports() {
    let (stack, js, cfg) = stopped_broker(1).await;
    let dir = tempfile::tempdir().unwrap();
    let d = DeviceAddr::new("acme", "s1", "till-1");
    let bridge = bridge(&stack, &d, dir.path(), 3600).await;
    submit_and_publish(&bridge, 3).await;
    assert_eq!(lose(&js, &d, |_| true).await, 3);
    let before = resend_requests("behind");
    let broker = InProcBroker::start(cfg).await;
    landed_once(&stack, &bridge, 3).await;
    assert!(resend_requests("behind") >= before + 1.0);
    assert!(resent(&bridge, "request") >= 3.0);
    bridge.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn events_lost_by_a_restarted_nats_server_are_resent_on_reconnect() {
    let (mut stack, js, cfg) = stopped_broker(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let d = DeviceAddr::new("acme", "s1", "till-1");
    let bridge = bridge(&stack, &d, dir.path(), 3600).await;
    submit_and_publish(&bridge, 3).await;
    assert_eq!(lose(&js, &d, |_| true).await, 3);
    assert_eq!(resent(&bridge, "reconnect"), 0.0);
    stack.nats.restart().await;
    eventually(T, "rows resent after the reconnect", || async { (resent(&bridge, "reconnect") >= 3.0).then_some(()) })
        .await;
    let broker = InProcBroker::start(cfg).await;
    landed_once(&stack, &bridge, 3).await;
    assert_eq!(resent(&bridge, "stall"), 0.0);
    bridge.shutdown().await;
    broker.stop().await;
}

/// A request for seqs the bridge no longer holds (covered) or never had is clamped to nothing.
#[tokio::test]
async fn a_request_beyond_what_the_bridge_holds_rewinds_nothing() {
    let (stack, _js, _cfg) = stopped_broker(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let d = DeviceAddr::new("acme", "s1", "till-1");
    let bridge = bridge(&stack, &d, dir.path(), 3600).await;
    submit_and_publish(&bridge, 2).await;
    let client = stack.nats.client().await;
    let ask = |from: u64, to: u64| tillsync_schemas::ResendRequest {
        schema_version: tillsync_schemas::SCHEMA_VERSION,
        tenant_id: d.tenant_id.clone(),
        store_id: d.store_id.clone(),
        device_id: d.device_id.clone(),
        from_seq: from,
        to_seq: to,
    };
    client.publish(subject::resend_requests(&d), codec::encode(&ask(5, 9)).into()).await.unwrap();
    client.publish(subject::resend_requests(&d), codec::encode(&ask(2, 9)).into()).await.unwrap();
    client.flush().await.unwrap();
    eventually_eq(T, "only seq 2 rewound", 1.0, || async { resent(&bridge, "request") }).await;
    eventually_eq(T, "seq 2 published again", 2, || async { bridge_status(&bridge).await.last_sent_seq }).await;
    bridge.shutdown().await;
}
