//! Event ingest against real NATS JetStream and Postgres: dedupe in three layers, conflicts,
//! staleness, gaps, quarantine, crash between commit and ack, actor restarts and passivation.

use std::time::Duration;

use tillsync_schemas::{codec, subject, DeviceAddr, EventBody};
use tillsync_tests::{
    eventually, eventually_eq, free_addr, http_get, inproc_broker_metric, metric, BrokerProc, InProcBroker, Stack,
    DEFAULT_TIMEOUT,
};

use crate::common::*;

fn till(n: u32) -> DeviceAddr {
    DeviceAddr::new("acme", "s1", format!("till-{n}"))
}

#[tokio::test]
async fn an_event_lands_as_a_row() {
    let (stack, broker, js) = live().await;
    let d = till(1);
    publish(&js, &event(&d, 1, opened("o-1"))).await;
    publish(&js, &event(&d, 2, item("o-1", "l-1", 2))).await;
    publish(&js, &event(&d, 3, payment("o-1", "p-1", 700))).await;
    let db = &stack.db;
    eventually_eq(DEFAULT_TIMEOUT, "payment row", 1, || db.count("SELECT count(*) FROM payments")).await;
    assert_eq!(db.count("SELECT count(*) FROM orders WHERE tenant_id = 'acme' AND order_id = 'o-1'").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM order_items").await, 1);
    eventually_eq(DEFAULT_TIMEOUT, "watermark", 3, || {
        db.count("SELECT watermark FROM devices WHERE device_id = 'till-1'")
    })
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn the_same_event_three_times_has_one_effect() {
    let (stack, broker, js) = live().await;
    let ev = event(&till(1), 1, payment("o-1", "p-1", 700));
    // Layer 1: a publish retry with the same Nats-Msg-Id is dropped by JetStream itself.
    publish(&js, &ev).await;
    publish(&js, &ev).await;
    let stream = js.get_stream(tillsync_schemas::streams::EVENTS).await.unwrap();
    assert_eq!(stream.cached_info().state.messages, 1);
    wait_drained(&js).await;
    // Layers 2 and 3: copies without a message id reach the broker (memory set, then ledger).
    publish_raw(&js, subject::events(&ev.addr()), codec::encode(&ev)).await;
    publish_raw(&js, subject::events(&ev.addr()), codec::encode(&ev)).await;
    wait_drained(&js).await;
    let db = &stack.db;
    assert_eq!(db.count("SELECT count(*) FROM processed_events").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM payments").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM conflicts").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn same_id_other_content_is_a_conflict_not_applied() {
    let (stack, broker, js) = live().await;
    let ev = event(&till(1), 1, payment("o-1", "p-1", 700));
    publish(&js, &ev).await;
    let mut other = ev.clone();
    other.body = payment("o-1", "p-1", 9_999);
    publish_raw(&js, subject::events(&ev.addr()), codec::encode(&other)).await;
    wait_drained(&js).await;
    let db = &stack.db;
    assert_eq!(db.count("SELECT amount_minor FROM payments").await, 700);
    assert_eq!(
        db.count(
            "SELECT count(*) FROM conflicts WHERE kind = 'content_mismatch'
             AND existing_hash IS NOT NULL AND existing_hash <> incoming_hash AND payload IS NOT NULL"
        )
        .await,
        1
    );
    broker.stop().await;
}

#[tokio::test]
async fn broker_killed_between_commit_and_ack_redelivers_without_double_effect() {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let js = stack.nats.jetstream().await;
    let mut config = stack.broker_config();
    config.http_addr = free_addr();
    config.ack_wait_s = 2;
    config.fault_crash_after_commit = true;
    // Streams must exist before publishing: a first broker creates them and crashes on commit.
    let mut crashing = BrokerProc::start(&config);
    let d = till(1);
    let evs =
        [event(&d, 1, opened("o-1")), event(&d, 2, item("o-1", "l-1", 1)), event(&d, 3, payment("o-1", "p-1", 350))];
    eventually(DEFAULT_TIMEOUT, "events stream created", || async {
        js.get_stream(tillsync_schemas::streams::EVENTS).await.ok().map(|_| ())
    })
    .await;
    for ev in &evs {
        publish(&js, ev).await;
    }
    crashing.wait_exit(DEFAULT_TIMEOUT).await;
    let db = &stack.db;
    let committed = db.count("SELECT count(*) FROM processed_events").await;
    assert!(committed >= 1, "the crash came after a commit");
    assert!(!events_drained(&js).await, "nothing was acked before the crash");

    config.fault_crash_after_commit = false;
    let _broker = BrokerProc::start(&config);
    wait_drained(&js).await;
    assert_eq!(db.count("SELECT count(*) FROM processed_events").await, 3);
    assert_eq!(db.count("SELECT count(*) FROM payments").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM order_items").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM conflicts").await, 0);
}

#[tokio::test]
async fn fifty_devices_interleaved_each_end_with_correct_orders() {
    let (stack, broker, js) = live().await;
    let steps = |n: u32| -> Vec<EventBody> {
        let o = format!("o-{n}");
        vec![
            opened(&o),
            item(&o, "l-1", 1),
            item(&o, "l-2", 2),
            status(&o, "held"),
            payment(&o, &format!("p-{n}"), 1_050),
            status(&o, "paid"),
        ]
    };
    // Round-robin: step k of every device before step k + 1 of any.
    for k in 0..6 {
        let pubs = (0..50).map(|n| {
            let ev = event(&till(n), k as u64 + 1, steps(n).remove(k));
            let js = js.clone();
            async move { publish(&js, &ev).await }
        });
        futures::future::join_all(pubs).await;
    }
    let db = &stack.db;
    eventually_eq(DEFAULT_TIMEOUT, "every watermark at 6", 50, || {
        db.count("SELECT count(*) FROM devices WHERE watermark = 6 AND gaps = 0")
    })
    .await;
    assert_eq!(db.count("SELECT count(*) FROM orders WHERE status = 'paid'").await, 50);
    assert_eq!(db.count("SELECT count(*) FROM order_items").await, 100);
    assert_eq!(db.count("SELECT count(*) FROM payments WHERE amount_minor = 1050").await, 50);
    assert_eq!(db.count("SELECT count(*) FROM conflicts").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn an_event_older_than_its_row_is_stale() {
    let (stack, broker, js) = live().await;
    let d = till(1);
    publish(&js, &event(&d, 1, opened("o-1"))).await;
    publish(&js, &event(&d, 3, status("o-1", "paid"))).await;
    wait_drained(&js).await;
    publish(&js, &event(&d, 2, status("o-1", "held"))).await;
    wait_drained(&js).await;
    let db = &stack.db;
    assert_eq!(db.count("SELECT count(*) FROM orders WHERE status = 'paid' AND last_seq = 3").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM conflicts WHERE kind = 'stale' AND seq = 2").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM processed_events WHERE outcome = 'stale'").await, 1);
    // The stale event still fills its seq: the watermark moves past it.
    assert_eq!(db.count("SELECT watermark FROM devices").await, 3);
    broker.stop().await;
}

#[tokio::test]
async fn a_gap_is_recorded_and_does_not_block() {
    let (stack, broker, js) = live().await;
    let d = till(1);
    for (seq, o) in [(1, "o-1"), (2, "o-2"), (5, "o-5")] {
        publish(&js, &event(&d, seq, opened(o))).await;
    }
    wait_drained(&js).await;
    let db = &stack.db;
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 3, "the gap does not block seq 5");
    assert_eq!(db.count("SELECT gaps FROM devices").await, 1);
    assert_eq!(db.count("SELECT watermark FROM devices").await, 2);
    assert_eq!(
        db.count("SELECT count(*) FROM device_gaps WHERE from_seq = 3 AND to_seq = 4 AND filled_at IS NULL").await,
        1
    );
    for (seq, o) in [(3, "o-3"), (4, "o-4")] {
        publish(&js, &event(&d, seq, opened(o))).await;
    }
    wait_drained(&js).await;
    assert_eq!(db.count("SELECT watermark FROM devices").await, 5);
    assert_eq!(db.count("SELECT count(*) FROM device_gaps WHERE filled_at IS NOT NULL").await, 1);
    broker.stop().await;
}

/// Every class of bad input is quarantined with its reason and counted; ingest goes on.
#[tokio::test]
async fn bad_input_is_quarantined_with_its_reason() {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    add_tenant(&stack.db.pool, "beta").await;
    let js = stack.nats.jetstream().await;
    let mut config = stack.broker_config();
    config.http_addr = free_addr();
    let _broker = BrokerProc::start(&config);
    eventually(DEFAULT_TIMEOUT, "broker ready", || async {
        http_get(config.http_addr, "/readyz").await.filter(|(c, _)| *c == 200).map(|_| ())
    })
    .await;
    let d = till(1);
    let good = event(&d, 1, opened("o-1"));
    let on = |ev: &tillsync_schemas::EventEnvelope| subject::events(&ev.addr());
    let mut cases: Vec<(&str, String, Vec<u8>)> = vec![("undecodable", on(&good), b"\xc1 not msgpack".to_vec())];
    let mut unknown_kind = serde_json::to_value(&good).unwrap();
    unknown_kind["body"]["kind"] = "teleport".into();
    cases.push(("unknown_kind", on(&good), rmp_serde::to_vec_named(&unknown_kind).unwrap()));
    let mut v9 = good.clone();
    v9.schema_version = 9;
    cases.push(("unsupported_version", on(&good), codec::encode(&v9)));
    cases.push(("subject_mismatch", subject::events(&till(2)), codec::encode(&good)));
    cases.push(("oversize", on(&good), vec![0x90; tillsync_schemas::MAX_MESSAGE_BYTES + 100]));
    let mut bad_id = good.clone();
    bad_id.event_id = "not-an-id".into();
    cases.push(("invalid_id", on(&good), codec::encode(&bad_id)));
    let negative = event(&d, 2, payment("o-1", "p-1", -5));
    cases.push(("invalid_amount", on(&good), codec::encode(&negative)));
    let ghost = event(&DeviceAddr::new("ghost", "s1", "till-1"), 1, opened("o-1"));
    cases.push(("unknown_tenant", on(&ghost), codec::encode(&ghost)));
    // Tenant A's device naming tenant B in its envelope: refused, nothing lands in B.
    let cross = event(&DeviceAddr::new("beta", "s1", "till-1"), 1, opened("o-x"));
    cases.push(("subject_mismatch", on(&good), codec::encode(&cross)));
    for (_, subject, bytes) in &cases {
        publish_raw(&js, subject.clone(), bytes.clone()).await;
    }
    // A subject of the wrong shape is refused at once by JetStream (no stream takes it in), so
    // the publisher learns; nothing is stored that no partition would consume.
    let refused = match js.publish("tillsync.ev.acme.s1", codec::encode(&good).into()).await {
        Ok(ack) => ack.await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a four-token event subject must be refused");
    publish(&js, &good).await;
    wait_drained(&js).await;

    let db = &stack.db;
    assert_eq!(db.count("SELECT count(*) FROM orders WHERE order_id = 'o-1'").await, 1, "ingest went on");
    assert_eq!(db.count("SELECT count(*) FROM quarantine").await, cases.len() as i64);
    assert_eq!(db.count("SELECT count(*) FROM orders WHERE tenant_id = 'beta'").await, 0);
    assert_eq!(db.count("SELECT count(*) FROM processed_events WHERE tenant_id = 'beta'").await, 0);
    let (_, text) = http_get(config.http_addr, "/metrics").await.unwrap();
    for (reason, _, _) in &cases {
        let want = cases.iter().filter(|(r, _, _)| r == reason).count() as i64;
        let sql = format!("SELECT count(*) FROM quarantine WHERE reason = '{reason}' AND length(payload) > 0");
        assert_eq!(db.count(&sql).await, want, "{reason}");
        let m = metric(&text, "tillsync_events_quarantined_total", &format!("reason=\"{reason}\""));
        assert_eq!(m, Some(want as f64), "metric for {reason}");
    }
    // Terminated, not looping: nothing was redelivered.
    let infos =
        crate::common::partition_consumers(&js, tillsync_schemas::streams::EVENTS, "broker-events").await.unwrap();
    assert!(!infos.is_empty());
    assert_eq!(infos.iter().map(|i| i.num_redelivered).sum::<usize>(), 0);
}

#[tokio::test]
async fn an_injected_actor_failure_restarts_with_nothing_lost() {
    let (stack, broker, js) = live().await;
    let d = till(1);
    let first = event(&d, 1, opened("o-1"));
    publish(&js, &first).await;
    wait_drained(&js).await;
    let actors = &broker.broker.ctx.actors;
    actors.fail(&d, "test").await.unwrap();
    eventually(DEFAULT_TIMEOUT, "actor restarted", || async { (actors.stats().restarts == 1).then_some(()) }).await;
    publish(&js, &event(&d, 2, item("o-1", "l-1", 1))).await;
    publish(&js, &event(&d, 3, payment("o-1", "p-1", 350))).await;
    publish_raw(&js, subject::events(&d), codec::encode(&first)).await;
    wait_drained(&js).await;
    let db = &stack.db;
    assert_eq!(db.count("SELECT count(*) FROM processed_events").await, 3);
    assert_eq!(db.count("SELECT count(*) FROM conflicts").await, 0);
    assert_eq!(actors.watermark(&d).await.unwrap(), 3, "restarted actor reloaded its state");
    broker.stop().await;
}

#[tokio::test]
async fn passivation_and_reactivation_keep_dedupe_correct() {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let mut config = stack.broker_config();
    config.idle_passivate_s = 1;
    let broker = InProcBroker::start(config).await;
    let js = stack.nats.jetstream().await;
    let d = till(1);
    let evs: Vec<_> = (1..=3).map(|s| event(&d, s, opened(&format!("o-{s}")))).collect();
    for ev in &evs {
        publish(&js, ev).await;
    }
    wait_drained(&js).await;
    let actors = &broker.broker.ctx.actors;
    eventually(Duration::from_secs(10), "actor passivated", || async {
        (actors.resident() == 0 && actors.stats().passivations >= 1).then_some(())
    })
    .await;
    publish_raw(&js, subject::events(&d), codec::encode(&evs[1])).await;
    publish(&js, &event(&d, 4, opened("o-4"))).await;
    wait_drained(&js).await;
    let db = &stack.db;
    assert_eq!(db.count("SELECT count(*) FROM processed_events").await, 4);
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 4);
    assert_eq!(db.count("SELECT count(*) FROM conflicts").await, 0);
    assert_eq!(db.count("SELECT watermark FROM devices").await, 4);
    assert!(actors.stats().activations >= 2, "reactivated after passivation");
    broker.stop().await;
}

/// The device actors hold what they decide as committed. When the commit then fails (here a
/// transient error a trigger raises once), the retry must not take the batch's events for
/// duplicates: every event lands once, and the retry is counted.
#[tokio::test]
async fn a_commit_failing_after_the_decision_is_retried_with_nothing_lost() {
    let (stack, broker, js) = live().await;
    let db = &stack.db;
    // The first payment insert fails with a serialization failure (transient, so retried); a
    // sequence is not rolled back with the failed transaction, so the retry passes.
    for sql in [
        "CREATE SEQUENCE fail_once",
        "CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF nextval('fail_once') = 1 THEN
             RAISE EXCEPTION 'injected' USING ERRCODE = 'serialization_failure';
           END IF;
           RETURN NEW;
         END $$",
        "CREATE TRIGGER fail_once BEFORE INSERT ON payments FOR EACH ROW EXECUTE FUNCTION fail_once()",
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    let retries = || inproc_broker_metric("tillsync_db_retries_total", "op=\"ingest\"");
    let before = retries();
    let d = till(1);
    publish(&js, &event(&d, 1, opened("o-1"))).await;
    publish(&js, &event(&d, 2, payment("o-1", "p-1", 700))).await;
    publish(&js, &event(&d, 3, status("o-1", "closed"))).await;
    let closed = "SELECT count(*) FROM orders WHERE order_id = 'o-1' AND status = 'closed'";
    eventually_eq(DEFAULT_TIMEOUT, "order closed", 1, || db.count(closed)).await;
    eventually_eq(DEFAULT_TIMEOUT, "watermark", 3, || {
        db.count("SELECT watermark FROM devices WHERE device_id = 'till-1'")
    })
    .await;
    wait_drained(&js).await;
    assert_eq!(db.count("SELECT last_value FROM fail_once").await, 2, "the payment insert failed once, then passed");
    assert_eq!(db.count("SELECT count(*) FROM payments WHERE payment_id = 'p-1'").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM processed_events WHERE outcome = 'applied'").await, 3);
    let counted = retries() - before;
    assert!(counted >= 1.0, "the retry is counted, got {counted}");
    broker.stop().await;
}
