//! The read-model rows a device's accepted events imply, computed here from the events in seq
//! order with a model of their meaning that is independent of the broker's fold: an order is
//! opened, changes status, gets lines added or removed; payments, refunds, receipts and
//! availability overrides are facts keyed by their ids. Only what the events carry is
//! compared (no timestamps, no seq bookkeeping); `collect` reads Postgres into the same text.

use std::collections::BTreeMap;

use tillsync_schemas::EventBody;

use super::history::{AcceptedEvent, ModelRow};

pub fn order_value(currency: &str, table: Option<&str>, status: &str) -> String {
    format!("currency={currency} table={} status={status}", table.unwrap_or("-"))
}

pub fn item_value(sku: &str, name: &str, quantity: i64, price: i64, removed: bool) -> String {
    format!("sku={sku} name={name} qty={quantity} price={price} removed={removed}")
}

pub fn payment_value(kind: &str, order: &str, amount: i64, currency: &str, method: &str, reason: &str) -> String {
    format!("kind={kind} order={order} amount={amount} currency={currency} method={method} reason={reason}")
}

pub fn receipt_value(order: &str, number: &str, total: i64, currency: &str) -> String {
    format!("order={order} number={number} total={total} currency={currency}")
}

pub fn override_value(available: bool, until_ms: Option<i64>) -> String {
    format!("available={available} until={}", until_ms.map_or_else(|| "-".into(), |u| u.to_string()))
}

#[derive(Clone)]
struct Order {
    currency: String,
    table: Option<String>,
    status: String,
}

#[derive(Clone)]
struct Item {
    sku: String,
    name: String,
    quantity: i64,
    price: i64,
    removed: bool,
}

/// The rows of one device after its `events` (any order in; applied in seq order).
pub fn expected_rows(device_id: &str, events: &[&AcceptedEvent]) -> Vec<ModelRow> {
    let mut sorted: Vec<&AcceptedEvent> = events.to_vec();
    sorted.sort_by_key(|e| e.seq);
    let mut orders: BTreeMap<String, Order> = BTreeMap::new();
    let mut items: BTreeMap<String, Item> = BTreeMap::new();
    let mut facts: BTreeMap<(&'static str, String), String> = BTreeMap::new();
    for ev in sorted {
        match &ev.body {
            EventBody::OrderOpened(e) => {
                let status = orders.get(&e.order_id).map_or("open".to_string(), |o| o.status.clone());
                orders
                    .insert(e.order_id.clone(), Order { currency: e.currency.clone(), table: e.table.clone(), status });
            }
            EventBody::OrderStatusChanged(e) => {
                let o = orders.entry(e.order_id.clone()).or_insert(Order {
                    currency: String::new(),
                    table: None,
                    status: String::new(),
                });
                o.status = e.status.clone();
            }
            EventBody::OrderItemAdded(e) => {
                let item = Item {
                    sku: e.sku.clone(),
                    name: e.name.clone(),
                    quantity: e.quantity.into(),
                    price: e.unit_price_minor,
                    removed: false,
                };
                items.insert(format!("{}/{}", e.order_id, e.line_id), item);
            }
            EventBody::OrderItemRemoved(e) => {
                let empty = Item { sku: String::new(), name: String::new(), quantity: 0, price: 0, removed: true };
                items.entry(format!("{}/{}", e.order_id, e.line_id)).or_insert(empty).removed = true;
            }
            EventBody::PaymentCaptured(e) => {
                let v = payment_value("capture", &e.order_id, e.amount_minor, &e.currency, &e.method, "");
                facts.insert(("payments", format!("{}/", e.payment_id)), v);
            }
            EventBody::PaymentRefunded(e) => {
                let v = payment_value("refund", &e.order_id, e.amount_minor, &e.currency, "", &e.reason);
                facts.insert(("payments", format!("{}/{}", e.payment_id, e.refund_id)), v);
            }
            EventBody::ReceiptIssued(e) => {
                let v = receipt_value(&e.order_id, &e.number, e.total_minor, &e.currency);
                facts.insert(("receipts", e.receipt_id.clone()), v);
            }
            EventBody::AvailabilityOverridden(e) => {
                facts.insert(("availability_overrides", e.sku.clone()), override_value(e.available, e.until_ms));
            }
        }
    }
    let row = |table: &'static str, key: String, value: String| ModelRow {
        device_id: device_id.to_string(),
        table,
        key,
        value,
    };
    let mut out: Vec<ModelRow> = Vec::new();
    for (k, o) in orders {
        out.push(row("orders", k, order_value(&o.currency, o.table.as_deref(), &o.status)));
    }
    for (k, i) in items {
        out.push(row("order_items", k, item_value(&i.sku, &i.name, i.quantity, i.price, i.removed)));
    }
    for ((table, k), v) in facts {
        out.push(row(table, k, v));
    }
    out.sort();
    out
}

/// Whether `later` (a higher seq of the same device) writes every fact `earlier` carries, so an
/// in-order delivery would leave nothing of `earlier` in the read models either. The broker may
/// then record `earlier` as `stale` when it arrives last (docs/architecture.md, "Staleness per
/// fact"); anything else recorded stale lost a fact to the arrival order.
pub fn supersedes(later: &EventBody, earlier: &EventBody) -> bool {
    use EventBody::*;
    match (earlier, later) {
        (OrderOpened(e), OrderOpened(l)) => e.order_id == l.order_id,
        (OrderStatusChanged(e), OrderStatusChanged(l)) => e.order_id == l.order_id,
        (OrderItemAdded(e), OrderItemAdded(l)) => (&e.order_id, &e.line_id) == (&l.order_id, &l.line_id),
        (OrderItemRemoved(e), OrderItemAdded(l)) => (&e.order_id, &e.line_id) == (&l.order_id, &l.line_id),
        (OrderItemRemoved(e), OrderItemRemoved(l)) => (&e.order_id, &e.line_id) == (&l.order_id, &l.line_id),
        (PaymentCaptured(e), PaymentCaptured(l)) => e.payment_id == l.payment_id,
        (PaymentRefunded(e), PaymentRefunded(l)) => (&e.payment_id, &e.refund_id) == (&l.payment_id, &l.refund_id),
        (ReceiptIssued(e), ReceiptIssued(l)) => e.receipt_id == l.receipt_id,
        (AvailabilityOverridden(e), AvailabilityOverridden(l)) => e.sku == l.sku,
        _ => false,
    }
}
