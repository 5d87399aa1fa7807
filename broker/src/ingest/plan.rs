//! Folding a batch of new events into read-model rows: pure, given the rows as they stand.
//!
//! Events are taken in stream order. Each touches one row; an event older (by device seq)
//! than the row's last write by the same device is stale and not applied. The output holds the
//! final state of every changed row, so one upsert per table writes the whole batch.

use std::collections::HashMap;

use tillsync_actors::decide::is_stale;
use tillsync_schemas::event::*;

pub type Key3 = (String, String, String);
pub type Key4 = (String, String, String, String);

#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub key: Key3,
    pub device_id: String,
    pub currency: String,
    pub table_label: Option<String>,
    pub status: String,
    pub opened_at_ms: i64,
    pub updated_at_ms: i64,
    pub last_seq: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ItemRow {
    pub key: Key4,
    pub device_id: String,
    pub sku: String,
    pub name: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
    pub removed: bool,
    pub last_seq: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PaymentRow {
    /// tenant, store, payment_id, refund_id ('' for a capture).
    pub key: Key4,
    pub kind: &'static str,
    pub order_id: String,
    pub device_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub method: String,
    pub reason: String,
    pub occurred_at_ms: i64,
    pub seq: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptRow {
    pub key: Key3,
    pub order_id: String,
    pub device_id: String,
    pub number: String,
    pub total_minor: i64,
    pub currency: String,
    pub issued_at_ms: i64,
    pub seq: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OverrideRow {
    pub key: Key3,
    pub available: bool,
    pub until_ms: Option<i64>,
    pub device_id: String,
    pub seq: i64,
    pub updated_at_ms: i64,
}

/// The rows a batch touches, as they stand in Postgres (absent: no row yet).
#[derive(Debug, Default)]
pub struct Rows {
    pub orders: HashMap<Key3, OrderRow>,
    pub items: HashMap<Key4, ItemRow>,
    /// Only who wrote them last and at which seq matter for these insert-mostly rows.
    pub payments: HashMap<Key4, (String, i64)>,
    pub receipts: HashMap<Key3, (String, i64)>,
    pub overrides: HashMap<Key3, (String, i64)>,
}

/// What to write: final rows of everything changed, and which events were stale.
#[derive(Debug, Default)]
pub struct Folded {
    pub orders: HashMap<Key3, OrderRow>,
    pub items: HashMap<Key4, ItemRow>,
    pub payments: HashMap<Key4, PaymentRow>,
    pub receipts: HashMap<Key3, ReceiptRow>,
    pub overrides: HashMap<Key3, OverrideRow>,
    /// Positions (in the input) of events not applied because stale.
    pub stale: Vec<usize>,
}

/// The keys an event touches, so the writer can load those rows first.
#[derive(Debug, Default)]
pub struct Touched {
    pub orders: Vec<Key3>,
    pub items: Vec<Key4>,
    pub payments: Vec<Key4>,
    pub receipts: Vec<Key3>,
    pub overrides: Vec<Key3>,
}

fn k3(ev: &EventEnvelope, id: &str) -> Key3 {
    (ev.tenant_id.clone(), ev.store_id.clone(), id.to_string())
}

fn k4(ev: &EventEnvelope, a: &str, b: &str) -> Key4 {
    (ev.tenant_id.clone(), ev.store_id.clone(), a.to_string(), b.to_string())
}

pub fn touched<'a>(events: impl IntoIterator<Item = &'a EventEnvelope>) -> Touched {
    let mut t = Touched::default();
    for ev in events {
        match &ev.body {
            EventBody::OrderOpened(e) => t.orders.push(k3(ev, &e.order_id)),
            EventBody::OrderStatusChanged(e) => t.orders.push(k3(ev, &e.order_id)),
            EventBody::OrderItemAdded(e) => t.items.push(k4(ev, &e.order_id, &e.line_id)),
            EventBody::OrderItemRemoved(e) => t.items.push(k4(ev, &e.order_id, &e.line_id)),
            EventBody::PaymentCaptured(e) => t.payments.push(k4(ev, &e.payment_id, "")),
            EventBody::PaymentRefunded(e) => t.payments.push(k4(ev, &e.payment_id, &e.refund_id)),
            EventBody::ReceiptIssued(e) => t.receipts.push(k3(ev, &e.receipt_id)),
            EventBody::AvailabilityOverridden(e) => t.overrides.push(k3(ev, &e.sku)),
        }
    }
    for v in [&mut t.orders, &mut t.receipts, &mut t.overrides] {
        v.sort();
        v.dedup();
    }
    for v in [&mut t.items, &mut t.payments] {
        v.sort();
        v.dedup();
    }
    t
}

/// Folds `events` (in stream order) over `rows`.
pub fn fold(mut rows: Rows, events: &[&EventEnvelope]) -> Folded {
    let mut out = Folded::default();
    for (i, ev) in events.iter().enumerate() {
        let seq = ev.seq as i64;
        let d = ev.device_id.as_str();
        let at = ev.occurred_at_ms;
        let applied = match &ev.body {
            EventBody::OrderOpened(e) => {
                let key = k3(ev, &e.order_id);
                let cur = rows.orders.get(&key);
                if is_stale(cur.map(|r| (r.device_id.as_str(), r.last_seq as u64)), d, ev.seq) {
                    false
                } else {
                    let status = cur.map_or_else(|| "open".to_string(), |r| r.status.clone());
                    let row = OrderRow {
                        key: key.clone(),
                        device_id: d.into(),
                        currency: e.currency.clone(),
                        table_label: e.table.clone(),
                        status,
                        opened_at_ms: at,
                        updated_at_ms: at,
                        last_seq: seq,
                    };
                    rows.orders.insert(key.clone(), row.clone());
                    out.orders.insert(key, row);
                    true
                }
            }
            EventBody::OrderStatusChanged(e) => {
                let key = k3(ev, &e.order_id);
                let cur = rows.orders.get(&key);
                if is_stale(cur.map(|r| (r.device_id.as_str(), r.last_seq as u64)), d, ev.seq) {
                    false
                } else {
                    let mut row = cur.cloned().unwrap_or_else(|| OrderRow {
                        key: key.clone(),
                        device_id: d.into(),
                        currency: String::new(),
                        table_label: None,
                        status: String::new(),
                        opened_at_ms: at,
                        updated_at_ms: at,
                        last_seq: seq,
                    });
                    row.status = e.status.clone();
                    row.device_id = d.into();
                    row.updated_at_ms = at;
                    row.last_seq = seq;
                    rows.orders.insert(key.clone(), row.clone());
                    out.orders.insert(key, row);
                    true
                }
            }
            EventBody::OrderItemAdded(e) => {
                let key = k4(ev, &e.order_id, &e.line_id);
                let cur = rows.items.get(&key);
                if is_stale(cur.map(|r| (r.device_id.as_str(), r.last_seq as u64)), d, ev.seq) {
                    false
                } else {
                    let row = ItemRow {
                        key: key.clone(),
                        device_id: d.into(),
                        sku: e.sku.clone(),
                        name: e.name.clone(),
                        quantity: e.quantity,
                        unit_price_minor: e.unit_price_minor,
                        removed: false,
                        last_seq: seq,
                    };
                    rows.items.insert(key.clone(), row.clone());
                    out.items.insert(key, row);
                    true
                }
            }
            EventBody::OrderItemRemoved(e) => {
                let key = k4(ev, &e.order_id, &e.line_id);
                let cur = rows.items.get(&key);
                if is_stale(cur.map(|r| (r.device_id.as_str(), r.last_seq as u64)), d, ev.seq) {
                    false
                } else {
                    let mut row = cur.cloned().unwrap_or_else(|| ItemRow {
                        key: key.clone(),
                        device_id: d.into(),
                        sku: String::new(),
                        name: String::new(),
                        quantity: 0,
                        unit_price_minor: 0,
                        removed: true,
                        last_seq: seq,
                    });
                    row.removed = true;
                    row.device_id = d.into();
                    row.last_seq = seq;
                    rows.items.insert(key.clone(), row.clone());
                    out.items.insert(key, row);
                    true
                }
            }
            EventBody::PaymentCaptured(e) => {
                let row = PaymentRow {
                    key: k4(ev, &e.payment_id, ""),
                    kind: "capture",
                    order_id: e.order_id.clone(),
                    device_id: d.into(),
                    amount_minor: e.amount_minor,
                    currency: e.currency.clone(),
                    method: e.method.clone(),
                    reason: String::new(),
                    occurred_at_ms: at,
                    seq,
                };
                put(&mut rows.payments, &mut out.payments, row.key.clone(), row, d, seq)
            }
            EventBody::PaymentRefunded(e) => {
                let row = PaymentRow {
                    key: k4(ev, &e.payment_id, &e.refund_id),
                    kind: "refund",
                    order_id: e.order_id.clone(),
                    device_id: d.into(),
                    amount_minor: e.amount_minor,
                    currency: e.currency.clone(),
                    method: String::new(),
                    reason: e.reason.clone(),
                    occurred_at_ms: at,
                    seq,
                };
                put(&mut rows.payments, &mut out.payments, row.key.clone(), row, d, seq)
            }
            EventBody::ReceiptIssued(e) => {
                let row = ReceiptRow {
                    key: k3(ev, &e.receipt_id),
                    order_id: e.order_id.clone(),
                    device_id: d.into(),
                    number: e.number.clone(),
                    total_minor: e.total_minor,
                    currency: e.currency.clone(),
                    issued_at_ms: at,
                    seq,
                };
                put(&mut rows.receipts, &mut out.receipts, row.key.clone(), row, d, seq)
            }
            EventBody::AvailabilityOverridden(e) => {
                let row = OverrideRow {
                    key: k3(ev, &e.sku),
                    available: e.available,
                    until_ms: e.until_ms,
                    device_id: d.into(),
                    seq,
                    updated_at_ms: at,
                };
                put(&mut rows.overrides, &mut out.overrides, row.key.clone(), row, d, seq)
            }
        };
        if !applied {
            out.stale.push(i);
        }
    }
    out
}

/// Writes a whole-row fact unless stale; returns whether it applied.
fn put<K: std::hash::Hash + Eq + Clone, R>(
    seen: &mut HashMap<K, (String, i64)>,
    out: &mut HashMap<K, R>,
    key: K,
    row: R,
    device: &str,
    seq: i64,
) -> bool {
    if is_stale(seen.get(&key).map(|(d, s)| (d.as_str(), *s as u64)), device, seq as u64) {
        return false;
    }
    seen.insert(key.clone(), (device.to_string(), seq));
    out.insert(key, row);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, body: EventBody) -> EventEnvelope {
        EventEnvelope {
            schema_version: 1,
            tenant_id: "t".into(),
            store_id: "s".into(),
            device_id: "d".into(),
            event_id: format!("01890a5d-ac96-774b-bcce-b302099a{seq:04}"),
            seq,
            occurred_at_ms: 1_000 + seq as i64,
            body,
        }
    }

    fn status(order: &str, s: &str) -> EventBody {
        EventBody::OrderStatusChanged(OrderStatusChanged { order_id: order.into(), status: s.into() })
    }

    fn opened(order: &str) -> EventBody {
        EventBody::OrderOpened(OrderOpened { order_id: order.into(), currency: "EUR".into(), table: None })
    }

    #[test]
    fn later_events_win_within_a_batch() {
        let evs = [ev(1, opened("o")), ev(2, status("o", "paid")), ev(3, status("o", "closed"))];
        let f = fold(Rows::default(), &evs.iter().collect::<Vec<_>>());
        let row = &f.orders[&("t".into(), "s".into(), "o".into())];
        assert_eq!((row.status.as_str(), row.currency.as_str(), row.last_seq), ("closed", "EUR", 3));
        assert!(f.stale.is_empty());
    }

    #[test]
    fn older_event_than_the_row_is_stale() {
        let mut rows = Rows::default();
        let key: Key3 = ("t".into(), "s".into(), "o".into());
        let evs = [ev(1, opened("o")), ev(5, status("o", "paid"))];
        let f = fold(Rows::default(), &evs.iter().collect::<Vec<_>>());
        rows.orders.insert(key.clone(), f.orders[&key].clone());
        let late = [ev(3, status("o", "held"))];
        let f2 = fold(rows, &late.iter().collect::<Vec<_>>());
        assert_eq!(f2.stale, vec![0]);
        assert!(f2.orders.is_empty());
    }

    #[test]
    fn another_device_is_not_compared_by_seq() {
        let mut rows = Rows::default();
        rows.receipts.insert(("t".into(), "s".into(), "r".into()), ("other".into(), 99));
        let e = ev(
            1,
            EventBody::ReceiptIssued(ReceiptIssued {
                order_id: "o".into(),
                receipt_id: "r".into(),
                number: "1".into(),
                total_minor: 5,
                currency: "EUR".into(),
            }),
        );
        let f = fold(rows, &[&e]);
        assert!(f.stale.is_empty());
        assert_eq!(f.receipts.len(), 1);
    }

    #[test]
    fn touched_keys_are_unique() {
        let evs = [ev(1, opened("o")), ev(2, status("o", "paid"))];
        assert_eq!(touched(evs.iter()).orders.len(), 1);
    }
}
