//! Read models converge (issue 15): the same device histories fed to a real broker in order,
//! reversed and shuffled end in identical read-model tables, and an order whose `order_opened`
//! arrives last still gets its currency.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use tillsync_schemas::event::*;
use tillsync_schemas::{DeviceAddr, EventBody, EventEnvelope};
use tillsync_tests::{eventually_eq, InProcBroker, Stack, TestDb, DEFAULT_TIMEOUT};

use crate::common::*;

/// The read-model tables and their keys. None of them has a wall-clock column (opened_at,
/// updated_at, occurred_at, issued_at and until come from the events), so every column is
/// compared; the ledger, conflicts and devices tables are not read models (their outcomes, gap
/// counts and commit times depend on arrival order by design).
const READ_MODELS: &[(&str, &str)] = &[
    ("orders", "tenant_id, store_id, order_id"),
    ("order_items", "tenant_id, store_id, order_id, line_id"),
    ("payments", "tenant_id, store_id, payment_id, refund_id"),
    ("receipts", "tenant_id, store_id, receipt_id"),
    ("availability_overrides", "tenant_id, store_id, sku"),
];

/// The device of the report: seq 1 `order_opened` (EUR), 2 `order_item_added`,
/// 3 `order_status_changed`.
fn reported() -> DeviceAddr {
    DeviceAddr::new("acme", "s3", "till-9")
}

fn opened_in(order: &str, currency: &str, table: Option<&str>) -> EventBody {
    EventBody::OrderOpened(OrderOpened {
        order_id: order.into(),
        currency: currency.into(),
        table: table.map(Into::into),
    })
}

fn line(order: &str, line: &str, sku: &str, qty: i32, price: i64) -> EventBody {
    EventBody::OrderItemAdded(OrderItemAdded {
        order_id: order.into(),
        line_id: line.into(),
        sku: sku.into(),
        name: sku.to_uppercase(),
        quantity: qty,
        unit_price_minor: price,
    })
}

fn removed(order: &str, line: &str) -> EventBody {
    EventBody::OrderItemRemoved(OrderItemRemoved { order_id: order.into(), line_id: line.into() })
}

fn refund(order: &str, payment: &str, refund: &str, amount: i64) -> EventBody {
    EventBody::PaymentRefunded(PaymentRefunded {
        order_id: order.into(),
        payment_id: payment.into(),
        refund_id: refund.into(),
        amount_minor: amount,
        currency: "EUR".into(),
        reason: "spilt".into(),
    })
}

fn receipt(order: &str, id: &str, total: i64) -> EventBody {
    EventBody::ReceiptIssued(ReceiptIssued {
        order_id: order.into(),
        receipt_id: id.into(),
        number: format!("N-{id}"),
        total_minor: total,
        currency: "EUR".into(),
    })
}

fn availability(sku: &str, available: bool, until_ms: Option<i64>) -> EventBody {
    EventBody::AvailabilityOverridden(AvailabilityOverridden { sku: sku.into(), available, until_ms })
}

/// A till's day: orders with lines added, removed, re-added and changed, status changes,
/// payments, a refund, receipts, a second capture of the same payment, and an availability
/// override changed twice. Ids carry the device so no two devices write the same row.
fn day(addr: &DeviceAddr) -> Vec<EventBody> {
    let p = format!("{}-{}", addr.store_id, addr.device_id);
    let (a, b, c) = (format!("{p}-a"), format!("{p}-b"), format!("{p}-c"));
    let sku = format!("oat-{p}");
    vec![
        opened_in(&a, "EUR", Some("T4")),
        line(&a, "l1", "latte", 2, 350),
        line(&a, "l2", "bagel", 1, 290),
        availability(&sku, false, None),
        status(&a, "held"),
        removed(&a, "l2"),
        line(&a, "l2", "bagel", 3, 280),
        line(&a, "l3", "scone", 1, 310),
        removed(&a, "l3"),
        opened_in(&b, "CHF", None),
        payment(&a, &format!("{p}-pa"), 1_540),
        status(&a, "paid"),
        receipt(&a, &format!("{p}-ra"), 1_540),
        line(&b, "l1", "tea", 1, 250),
        refund(&a, &format!("{p}-pa"), &format!("{p}-fa"), 290),
        availability(&sku, true, Some(1_800_000_000_000)),
        status(&a, "closed"),
        status(&b, "voided"),
        // An order whose opening comes after its first status change.
        status(&c, "held"),
        opened_in(&c, "GBP", Some("bar")),
        line(&c, "l1", "cake", 2, 400),
        payment(&c, &format!("{p}-pc"), 400),
        payment(&c, &format!("{p}-pc"), 800),
        availability(&sku, false, Some(1_900_000_000_000)),
        status(&c, "paid"),
    ]
}

/// Every device's history with seqs from 1 and event times from the seq (not the wall clock,
/// so the three runs compare equal), interleaved round-robin: the in-order arrival.
fn histories() -> (Vec<EventEnvelope>, Vec<(DeviceAddr, u64)>) {
    let devices = [
        DeviceAddr::new("acme", "s1", "till-1"),
        DeviceAddr::new("acme", "s1", "till-2"),
        DeviceAddr::new("acme", "s2", "till-1"),
        DeviceAddr::new("beta", "s1", "till-1"),
    ];
    let mut per_device: Vec<(DeviceAddr, Vec<EventBody>)> = devices.iter().map(|d| (d.clone(), day(d))).collect();
    let r = reported();
    per_device.push((r, vec![opened("o-321"), item("o-321", "l-1", 1), status("o-321", "paid")]));
    let mut lists: Vec<Vec<EventEnvelope>> = per_device
        .iter()
        .map(|(addr, bodies)| {
            let evs = bodies.iter().cloned().enumerate().map(|(i, body)| {
                let mut ev = event(addr, i as u64 + 1, body);
                ev.occurred_at_ms = 1_700_000_000_000 + (i as i64 + 1) * 1_000;
                ev
            });
            evs.collect()
        })
        .collect();
    let expected = per_device.iter().map(|(a, b)| (a.clone(), b.len() as u64)).collect();
    let mut out = Vec::new();
    while lists.iter().any(|l| !l.is_empty()) {
        for l in lists.iter_mut().filter(|l| !l.is_empty()) {
            out.push(l.remove(0));
        }
    }
    (out, expected)
}

/// Every read-model row, per table in key order, as JSON text of all its columns.
async fn read_models(db: &TestDb) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    for (table, key) in READ_MODELS {
        let sql = format!("SELECT to_jsonb(t)::text FROM {table} t ORDER BY {key}");
        out.push((*table, sqlx::query_scalar(&sql).fetch_all(&db.pool).await.unwrap()));
    }
    out
}

/// Publishes `arrival` to a fresh stack's broker, one message at a time (so batches split the
/// histories however the broker's linger falls), and waits until every device's watermark covers
/// its whole history.
async fn run(arrival: &[EventEnvelope], expected: &[(DeviceAddr, u64)]) -> Stack {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    add_tenant(&stack.db.pool, "beta").await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let js = stack.nats.jetstream().await;
    for ev in arrival {
        publish(&js, ev).await;
    }
    let db = &stack.db;
    for (addr, n) in expected {
        let sql = format!(
            "SELECT count(*) FROM devices WHERE tenant_id = '{}' AND store_id = '{}' AND device_id = '{}' AND watermark = {n}",
            addr.tenant_id, addr.store_id, addr.device_id
        );
        eventually_eq(DEFAULT_TIMEOUT, &format!("watermark of {addr:?} at {n}"), 1, || db.count(&sql)).await;
    }
    broker.stop().await;
    stack
}

#[tokio::test]
async fn histories_in_order_reversed_and_shuffled_give_identical_read_models() {
    let (in_order, expected) = histories();
    let mut reversed = in_order.clone();
    reversed.reverse();
    let mut shuffled = in_order.clone();
    shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(15));

    let reference = run(&in_order, &expected).await;
    let want = read_models(&reference.db).await;
    for (table, rows) in &want {
        assert!(!rows.is_empty(), "the histories write {table}");
    }
    assert_eq!(reference.db.count("SELECT count(*) FROM conflicts").await, 0, "nothing is stale in order");

    for (name, arrival) in [("reversed", &reversed), ("shuffled", &shuffled)] {
        let stack = run(arrival, &expected).await;
        let got = read_models(&stack.db).await;
        for ((table, want_rows), (_, got_rows)) in want.iter().zip(&got) {
            assert_eq!(got_rows, want_rows, "{table} after {name} arrival differs from in-order");
        }
        let db = &stack.db;
        if name == "reversed" {
            // The report: seq 3, 2, 1 on one device; seq 1 alone carries the currency.
            let r = reported();
            assert_eq!(
                db.count(
                    "SELECT count(*) FROM orders WHERE store_id = 's3' AND order_id = 'o-321'
                     AND currency = 'EUR' AND status = 'paid'"
                )
                .await,
                1
            );
            let stale = format!(
                "SELECT count(*) FROM conflicts WHERE kind = 'stale' AND store_id = '{}' AND device_id = '{}'",
                r.store_id, r.device_id
            );
            assert_eq!(db.count(&stale).await, 0, "seq 1 applied its currency: not stale");
            let applied =
                "SELECT count(*) FROM processed_events WHERE store_id = 's3' AND seq = 1 AND outcome = 'applied'";
            assert_eq!(db.count(applied).await, 1);
        }
    }
}
