//! Folding a batch of new events into read-model rows: pure, given the rows as they stand.
//!
//! Events are taken in stream order, but the result does not depend on it: for one device, the
//! rows end as an in-order delivery of the same events leaves them, whatever order they arrive
//! in, alone or across batches. Staleness is decided per fact, not per row: a row's fields are
//! grouped by the event kind that writes them, each group keeps the device seq that last wrote
//! it, and an event writes a group only where its seq is newer. An event none of whose facts is
//! newer is stale (recorded, not applied); one that writes any is applied.
//!
//! The groups and their version columns are listed in docs/architecture.md ("Staleness per
//! fact") and on the row structs below.
//!
//! Versions compare only within one device. An event from another device than the row's takes
//! the row as today: what it carries applies, and the versions restart under the new device
//! (cross-device writes to one row stay last-arrival-wins; devices share no clock). The output
//! holds the final state of every changed row, so one upsert per table writes the whole batch.

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
    /// The newest seq of `device_id` on this row; `updated_at_ms` is its time.
    pub last_seq: i64,
    /// Version of currency, table_label and opened_at: the seq of the `order_opened` that
    /// wrote them; before one arrives, minus the seq of the earliest event (whose time stands in
    /// for opened_at), so that a lower seq is newer and any `order_opened` newer still; 0 once
    /// another device took the row (only its `order_opened` replaces them).
    pub opened_seq: i64,
    /// The seq of the `order_status_changed` that wrote status; 0 for none (status `open`).
    pub status_seq: i64,
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
    /// The newest seq of `device_id` on this line, an add or a remove: it decides `removed`.
    pub last_seq: i64,
    /// The seq of the `order_item_added` that wrote sku, name, quantity and price; 0 for none.
    pub added_seq: i64,
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
            EventBody::OrderOpened(e) => touch(&mut rows.orders, &mut out.orders, k3(ev, &e.order_id), d, |row| {
                let opened = newer(&mut row.opened_seq, seq);
                if opened {
                    row.currency = e.currency.clone();
                    row.table_label = e.table.clone();
                    row.opened_at_ms = at;
                }
                row.touched(seq, at) | opened
            }),
            EventBody::OrderStatusChanged(e) => {
                touch(&mut rows.orders, &mut out.orders, k3(ev, &e.order_id), d, |row| {
                    let status = newer(&mut row.status_seq, seq);
                    if status {
                        row.status = e.status.clone();
                    }
                    // Until an order_opened arrives, opened_at is the time of the order's
                    // earliest event: a lower seq is a better stand-in (see `OrderRow::opened_seq`).
                    let stand_in = newer(&mut row.opened_seq, -seq);
                    if stand_in {
                        row.opened_at_ms = at;
                    }
                    row.touched(seq, at) | status | stand_in
                })
            }
            EventBody::OrderItemAdded(e) => {
                touch(&mut rows.items, &mut out.items, k4(ev, &e.order_id, &e.line_id), d, |row| {
                    let item = newer(&mut row.added_seq, seq);
                    if item {
                        row.sku = e.sku.clone();
                        row.name = e.name.clone();
                        row.quantity = e.quantity;
                        row.unit_price_minor = e.unit_price_minor;
                    }
                    let last = newer(&mut row.last_seq, seq);
                    if last {
                        row.removed = false;
                    }
                    item | last
                })
            }
            EventBody::OrderItemRemoved(e) => {
                touch(&mut rows.items, &mut out.items, k4(ev, &e.order_id, &e.line_id), d, |row| {
                    let last = newer(&mut row.last_seq, seq);
                    if last {
                        row.removed = true;
                    }
                    last
                })
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

/// Raises a fact's version to `version` if that is newer; returns whether it did.
fn newer(held: &mut i64, version: i64) -> bool {
    let newer = version > *held;
    if newer {
        *held = version;
    }
    newer
}

/// A row whose fields are versioned in groups, each by the seq of the device that last wrote it.
trait Facts {
    type Key;
    fn blank(key: &Self::Key, device_id: &str) -> Self;
    fn device_id(&self) -> &str;
    /// Another device's event: its seqs are not comparable with the row's versions, so it takes
    /// the row; every fact it carries applies, the others keep their values.
    fn claim(&mut self, device_id: &str);
}

/// Applies to the row at `key` (a blank one if absent) whatever facts of one event are newer
/// than the row's; keeps the row if any was. Returns whether any was.
fn touch<K: std::hash::Hash + Eq + Clone, R: Facts<Key = K> + Clone>(
    seen: &mut HashMap<K, R>,
    out: &mut HashMap<K, R>,
    key: K,
    device_id: &str,
    apply: impl FnOnce(&mut R) -> bool,
) -> bool {
    let mut row = seen.get(&key).cloned().unwrap_or_else(|| R::blank(&key, device_id));
    if row.device_id() != device_id {
        row.claim(device_id);
    }
    if !apply(&mut row) {
        return false;
    }
    seen.insert(key.clone(), row.clone());
    out.insert(key, row);
    true
}

impl OrderRow {
    /// Every event on an order moves `last_seq` and `updated_at` forward, if it is the newest.
    fn touched(&mut self, seq: i64, at: i64) -> bool {
        let last = newer(&mut self.last_seq, seq);
        if last {
            self.updated_at_ms = at;
        }
        last
    }
}

impl Facts for OrderRow {
    type Key = Key3;

    fn blank(key: &Key3, device_id: &str) -> OrderRow {
        OrderRow {
            key: key.clone(),
            device_id: device_id.into(),
            currency: String::new(),
            table_label: None,
            status: "open".into(),
            opened_at_ms: 0,
            updated_at_ms: 0,
            last_seq: 0,
            opened_seq: i64::MIN,
            status_seq: 0,
        }
    }

    fn device_id(&self) -> &str {
        &self.device_id
    }

    fn claim(&mut self, device_id: &str) {
        self.device_id = device_id.into();
        self.last_seq = 0;
        self.status_seq = 0;
        // 0, not below: the other device's opening stays until this one's order_opened.
        self.opened_seq = 0;
    }
}

impl Facts for ItemRow {
    type Key = Key4;

    fn blank(key: &Key4, device_id: &str) -> ItemRow {
        ItemRow {
            key: key.clone(),
            device_id: device_id.into(),
            sku: String::new(),
            name: String::new(),
            quantity: 0,
            unit_price_minor: 0,
            removed: false,
            last_seq: 0,
            added_seq: 0,
        }
    }

    fn device_id(&self) -> &str {
        &self.device_id
    }

    fn claim(&mut self, device_id: &str) {
        self.device_id = device_id.into();
        self.last_seq = 0;
        self.added_seq = 0;
    }
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
#[path = "plan_tests.rs"]
mod tests;
