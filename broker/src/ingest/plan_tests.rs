//! The fold converges: for generated device histories, every arrival order (every permutation of
//! small histories, seeded shuffles of larger ones), in one batch or split over several, leaves
//! the rows the in-order fold leaves.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use super::*;

/// What Postgres would hold: every row in full.
#[derive(Debug, Default, Clone, PartialEq)]
struct Db {
    orders: HashMap<Key3, OrderRow>,
    items: HashMap<Key4, ItemRow>,
    payments: HashMap<Key4, PaymentRow>,
    receipts: HashMap<Key3, ReceiptRow>,
    overrides: HashMap<Key3, OverrideRow>,
}

fn pick<K: Clone + Eq + std::hash::Hash, R: Clone, T>(
    all: &HashMap<K, R>,
    keys: &[K],
    f: impl Fn(&R) -> T,
) -> HashMap<K, T> {
    keys.iter().filter_map(|k| all.get(k).map(|r| (k.clone(), f(r)))).collect()
}

impl Db {
    /// The rows a batch touches, as the writer loads them.
    fn load(&self, events: &[&EventEnvelope]) -> Rows {
        let t = touched(events.iter().copied());
        Rows {
            orders: pick(&self.orders, &t.orders, Clone::clone),
            items: pick(&self.items, &t.items, Clone::clone),
            payments: pick(&self.payments, &t.payments, |r| (r.device_id.clone(), r.seq)),
            receipts: pick(&self.receipts, &t.receipts, |r| (r.device_id.clone(), r.seq)),
            overrides: pick(&self.overrides, &t.overrides, |r| (r.device_id.clone(), r.seq)),
        }
    }

    /// Commits one batch as the writer does; returns the seqs found stale.
    fn commit(&mut self, batch: &[EventEnvelope]) -> Vec<u64> {
        let evs: Vec<&EventEnvelope> = batch.iter().collect();
        let f = fold(self.load(&evs), &evs);
        self.orders.extend(f.orders);
        self.items.extend(f.items);
        self.payments.extend(f.payments);
        self.receipts.extend(f.receipts);
        self.overrides.extend(f.overrides);
        f.stale.iter().map(|i| batch[*i].seq).collect()
    }
}

/// Commits `arrival` split into batches at `cuts` (positions); returns the rows and stale seqs.
fn deliver(arrival: &[EventEnvelope], cuts: &[usize]) -> (Db, Vec<u64>) {
    let mut db = Db::default();
    let mut stale = Vec::new();
    let mut from = 0;
    for to in cuts.iter().copied().chain([arrival.len()]) {
        stale.extend(db.commit(&arrival[from..to]));
        from = to;
    }
    (db, stale)
}

/// A random history of one device: `n` events over a few orders, lines, payments, receipts and
/// skus, so the same row is opened, changed, removed and re-added in any combination.
fn history(rng: &mut StdRng, n: u64) -> Vec<EventEnvelope> {
    let orders = ["o1", "o2"];
    let lines = ["l1", "l2"];
    (1..=n)
        .map(|seq| {
            let order = orders.choose(rng).unwrap().to_string();
            let line = lines.choose(rng).unwrap().to_string();
            let cur = ["EUR", "USD"].choose(rng).unwrap().to_string();
            let payment_id = ["p1", "p2"].choose(rng).unwrap().to_string();
            let body = match rng.random_range(0..8) {
                0 => EventBody::OrderOpened(OrderOpened {
                    order_id: order,
                    currency: cur,
                    table: rng.random_bool(0.5).then(|| format!("T{seq}")),
                }),
                1 => EventBody::OrderItemAdded(OrderItemAdded {
                    order_id: order,
                    line_id: line,
                    sku: format!("sku{}", rng.random_range(0..3)),
                    name: format!("name{seq}"),
                    quantity: rng.random_range(1..5),
                    unit_price_minor: rng.random_range(100..500),
                }),
                2 => EventBody::OrderItemRemoved(OrderItemRemoved { order_id: order, line_id: line }),
                3 => EventBody::OrderStatusChanged(OrderStatusChanged {
                    order_id: order,
                    status: ["held", "paid", "closed", "voided"].choose(rng).unwrap().to_string(),
                }),
                4 => EventBody::PaymentCaptured(PaymentCaptured {
                    order_id: order,
                    payment_id,
                    amount_minor: rng.random_range(100..900),
                    currency: cur,
                    method: "card".into(),
                }),
                5 => EventBody::PaymentRefunded(PaymentRefunded {
                    order_id: order,
                    payment_id,
                    refund_id: ["f1", "f2"].choose(rng).unwrap().to_string(),
                    amount_minor: rng.random_range(1..100),
                    currency: cur,
                    reason: format!("r{seq}"),
                }),
                6 => EventBody::ReceiptIssued(ReceiptIssued {
                    order_id: order,
                    receipt_id: ["r1", "r2"].choose(rng).unwrap().to_string(),
                    number: format!("n{seq}"),
                    total_minor: rng.random_range(100..900),
                    currency: cur,
                }),
                _ => EventBody::AvailabilityOverridden(AvailabilityOverridden {
                    sku: format!("sku{}", rng.random_range(0..2)),
                    available: rng.random_bool(0.5),
                    until_ms: rng.random_bool(0.5).then(|| 5_000 + seq as i64),
                }),
            };
            EventEnvelope {
                schema_version: 1,
                tenant_id: "t".into(),
                store_id: "s".into(),
                device_id: "d".into(),
                event_id: format!("01890a5d-ac96-774b-bcce-b302099a{seq:04}"),
                seq,
                // Not monotonic in seq: a device clock may step back.
                occurred_at_ms: 1_000 + rng.random_range(0..100),
                body,
            }
        })
        .collect()
}

fn permutations(items: &[EventEnvelope]) -> Vec<Vec<EventEnvelope>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first.clone());
            out.push(p);
        }
    }
    out
}

/// Asserts one arrival converges, and that what it calls stale carries nothing: the in-order
/// fold of the history without the stale events leaves the same rows.
fn check(history: &[EventEnvelope], want: &Db, arrival: &[EventEnvelope], cuts: &[usize]) {
    let (got, stale) = deliver(arrival, cuts);
    let seqs: Vec<u64> = arrival.iter().map(|e| e.seq).collect();
    assert_eq!(&got, want, "arrival {seqs:?} cut at {cuts:?}");
    let kept: Vec<EventEnvelope> = history.iter().filter(|e| !stale.contains(&e.seq)).cloned().collect();
    assert_eq!(&deliver(&kept, &[]).0, want, "stale {stale:?} of arrival {seqs:?} carried a fact");
}

#[test]
fn every_permutation_of_small_histories_converges() {
    let mut rng = StdRng::seed_from_u64(15);
    for _ in 0..60 {
        let h = history(&mut rng, 5);
        let (want, stale) = deliver(&h, &[]);
        assert!(stale.is_empty(), "nothing is stale in order");
        for p in permutations(&h) {
            check(&h, &want, &p, &[]);
            check(&h, &want, &p, &[1, 2, 3, 4]);
            let cut = rng.random_range(1..5);
            check(&h, &want, &p, &[cut]);
        }
    }
}

#[test]
fn seeded_shuffles_of_larger_histories_converge_across_batches() {
    let mut rng = StdRng::seed_from_u64(1515);
    for _ in 0..40 {
        let h = history(&mut rng, 60);
        let (want, _) = deliver(&h, &[]);
        let mut reversed = h.clone();
        reversed.reverse();
        check(&h, &want, &reversed, &[]);
        check(&h, &want, &reversed, &(1..60).collect::<Vec<_>>());
        for _ in 0..20 {
            let mut arrival = h.clone();
            arrival.shuffle(&mut rng);
            let mut cuts: Vec<usize> = (0..rng.random_range(0..8)).map(|_| rng.random_range(1..60)).collect();
            cuts.sort();
            cuts.dedup();
            check(&h, &want, &arrival, &cuts);
        }
    }
}

#[test]
fn the_reported_three_two_one_keeps_the_currency() {
    let h = vec![
        ev(1, opened("o")),
        ev(
            2,
            EventBody::OrderItemAdded(OrderItemAdded {
                order_id: "o".into(),
                line_id: "l".into(),
                sku: "latte".into(),
                name: "Latte".into(),
                quantity: 1,
                unit_price_minor: 350,
            }),
        ),
        ev(3, status("o", "paid")),
    ];
    let arrival: Vec<EventEnvelope> = h.iter().rev().cloned().collect();
    let (db, stale) = deliver(&arrival, &[1, 2]);
    let row = &db.orders[&("t".into(), "s".into(), "o".into())];
    assert_eq!((row.currency.as_str(), row.status.as_str(), row.last_seq), ("EUR", "paid", 3));
    assert!(stale.is_empty(), "seq 1 applied its currency");
    assert_eq!(db, deliver(&h, &[]).0);
}

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
fn an_event_older_than_every_fact_it_carries_is_stale() {
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

#[test]
fn another_device_takes_an_order_and_its_seqs_compare_from_there() {
    let key: Key3 = ("t".into(), "s".into(), "o".into());
    let mine = [ev(1, opened("o")), ev(9, status("o", "paid"))];
    let f = fold(Rows::default(), &mine.iter().collect::<Vec<_>>());
    let mut rows = Rows::default();
    rows.orders.insert(key.clone(), f.orders[&key].clone());
    // Seq 2 of another device: not comparable with seq 9 of the first, so it applies.
    let mut theirs = ev(2, status("o", "held"));
    theirs.device_id = "e".into();
    let mut older = ev(1, status("o", "open"));
    older.device_id = "e".into();
    let f = fold(rows, &[&theirs, &older]);
    let row = &f.orders[&key];
    assert_eq!((row.device_id.as_str(), row.status.as_str(), row.currency.as_str()), ("e", "held", "EUR"));
    assert_eq!(f.stale, vec![1], "its own older status is stale; the first device's opening stays");
    assert_eq!((row.last_seq, row.status_seq, row.opened_seq), (2, 2, 0));
}
