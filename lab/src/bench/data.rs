//! Benchmark data: devices trading concurrently, and the publisher that preloads them.
//!
//! Each device runs orders through a realistic life (opened, one to three items, paid,
//! payment captured, receipt issued, closed) with contiguous seqs. Devices are interleaved
//! round-robin, as concurrent tills are, so a batch of 500 spans up to 500 devices. A share of
//! messages are re-sent copies of earlier events without `Nats-Msg-Id`, as a bridge resending
//! after a lost ack would produce beyond the JetStream dedupe window: those reach the broker
//! and exercise its own dedupe (memory and ledger).

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::HeaderMap;
use tillsync_schemas::event::*;
use tillsync_schemas::{codec, streams, subject, DeviceAddr, EventEnvelope, SCHEMA_VERSION};

pub const TENANT: &str = "bench";
/// Devices per store.
pub const PER_STORE: usize = 10;
/// Unacked publishes in flight while preloading.
const WINDOW: usize = 2_048;

/// Small deterministic PRNG (xorshift64*): reproducible data without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn device(i: usize) -> DeviceAddr {
    DeviceAddr::new(TENANT, format!("s{}", i / PER_STORE), format!("till-{i}"))
}

/// One device's till: yields its next event.
pub struct Till {
    pub addr: DeviceAddr,
    seq: u64,
    order: u64,
    /// Events of the current order still to emit.
    pending: VecDeque<EventBody>,
}

impl Till {
    pub fn new(addr: DeviceAddr) -> Till {
        Till { addr, seq: 0, order: 0, pending: VecDeque::new() }
    }

    fn plan_order(&mut self, rng: &mut Rng) {
        self.order += 1;
        let o = format!("o-{}-{}", self.addr.device_id, self.order);
        let eur = || "EUR".to_string();
        self.pending.push_back(EventBody::OrderOpened(OrderOpened {
            order_id: o.clone(),
            currency: eur(),
            table: Some(format!("T{}", rng.below(40))),
        }));
        let lines = 1 + rng.below(3);
        let mut total = 0;
        for l in 0..lines {
            let qty = 1 + rng.below(3) as i32;
            let price = 250 + 50 * rng.below(10) as i64;
            total += qty as i64 * price;
            self.pending.push_back(EventBody::OrderItemAdded(OrderItemAdded {
                order_id: o.clone(),
                line_id: format!("l{l}"),
                sku: format!("sku-{}", rng.below(200)),
                name: "Flat white".into(),
                quantity: qty,
                unit_price_minor: price,
            }));
        }
        self.pending.push_back(EventBody::OrderStatusChanged(OrderStatusChanged {
            order_id: o.clone(),
            status: "paid".into(),
        }));
        self.pending.push_back(EventBody::PaymentCaptured(PaymentCaptured {
            order_id: o.clone(),
            payment_id: format!("p-{o}"),
            amount_minor: total,
            currency: eur(),
            method: "card".into(),
        }));
        self.pending.push_back(EventBody::ReceiptIssued(ReceiptIssued {
            order_id: o.clone(),
            receipt_id: format!("r-{o}"),
            number: format!("{}", self.order),
            total_minor: total,
            currency: eur(),
        }));
        self.pending
            .push_back(EventBody::OrderStatusChanged(OrderStatusChanged { order_id: o, status: "closed".into() }));
    }

    pub fn next_event(&mut self, rng: &mut Rng, now_ms: i64) -> EventEnvelope {
        if self.pending.is_empty() {
            self.plan_order(rng);
        }
        self.seq += 1;
        let body = self.pending.pop_front().expect("an order was planned");
        EventEnvelope {
            schema_version: SCHEMA_VERSION,
            tenant_id: self.addr.tenant_id.clone(),
            store_id: self.addr.store_id.clone(),
            device_id: self.addr.device_id.clone(),
            event_id: uuid::Uuid::now_v7().to_string(),
            seq: self.seq,
            occurred_at_ms: now_ms,
            body,
        }
    }
}

/// A message to publish: the event and whether it is a re-sent copy.
pub struct Msg {
    pub ev: EventEnvelope,
    pub duplicate: bool,
}

/// `total` messages from `devices` tills, of which `round(total * dup_ratio)` are copies of
/// earlier events placed up to a few thousand messages later.
pub fn generate(total: usize, devices: usize, dup_ratio: f64, seed: u64) -> Vec<Msg> {
    let mut rng = Rng::new(seed);
    let dups = ((total as f64) * dup_ratio.clamp(0.0, 0.9)).round() as usize;
    let unique = total - dups;
    let mut tills: Vec<Till> = (0..devices.max(1)).map(|i| Till::new(device(i))).collect();
    let now = tillsync_broker::now_ms();
    let mut originals: Vec<EventEnvelope> = (0..unique)
        .map(|k| {
            let n = tills.len();
            tills[k % n].next_event(&mut rng, now)
        })
        .collect();
    // Each duplicate goes after its original, 1..=4096 positions later.
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); unique];
    for _ in 0..dups {
        let src = rng.below(unique as u64) as usize;
        let at = (src + 1 + rng.below(4_096) as usize).min(unique - 1);
        after[at].push(src);
    }
    let mut out = Vec::with_capacity(total);
    for (i, copies) in after.iter().enumerate() {
        out.push(Msg { ev: originals[i].clone(), duplicate: false });
        for src in copies {
            out.push(Msg { ev: originals[*src].clone(), duplicate: true });
        }
    }
    originals.clear();
    out
}

pub fn unique_count(msgs: &[Msg]) -> usize {
    msgs.iter().filter(|m| !m.duplicate).count()
}

/// Publishes one event the way a bridge does; copies go without a message id.
pub async fn publish(js: &jetstream::Context, ev: &EventEnvelope, duplicate: bool) -> anyhow::Result<PublishAckFuture> {
    send(js, outgoing(ev, duplicate)).await
}

/// An event ready to publish: subject, headers (a copy has no `Nats-Msg-Id`), encoded bytes.
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: bytes::Bytes,
}

pub fn outgoing(ev: &EventEnvelope, duplicate: bool) -> Outgoing {
    let mut headers = HeaderMap::new();
    if !duplicate {
        headers.insert(
            streams::HEADER_MSG_ID,
            streams::event_msg_id(&streams::msg_id_prefix(&ev.addr(), "bench"), &ev.event_id).as_str(),
        );
    }
    headers.insert(streams::HEADER_CONTENT_TYPE, streams::CONTENT_TYPE);
    Outgoing { subject: subject::events(&ev.addr()), headers, payload: codec::encode(ev).into() }
}

pub async fn send(js: &jetstream::Context, out: Outgoing) -> anyhow::Result<PublishAckFuture> {
    Ok(js.publish_with_headers(out.subject, out.headers, out.payload).await?)
}

/// Publishes every message with a bounded window of unacknowledged publishes.
pub async fn preload(js: &jetstream::Context, msgs: &[Msg]) -> anyhow::Result<()> {
    let mut inflight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(WINDOW);
    for m in msgs {
        if inflight.len() >= WINDOW {
            let ack = inflight.pop_front().expect("window is full");
            ack.await.context("preload publish not acknowledged")?;
        }
        inflight.push_back(publish(js, &m.ev, m.duplicate).await?);
    }
    for ack in inflight {
        ack.await.context("preload publish not acknowledged")?;
    }
    Ok(())
}

/// Inserts the bench tenant, so its events are not quarantined as `unknown_tenant`, with the
/// test approvers `bench commands` signs with.
pub async fn add_tenant(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO tenants (tenant_id, name) VALUES ($1, 'benchmark') ON CONFLICT DO NOTHING")
        .bind(TENANT)
        .execute(pool)
        .await?;
    tillsync_ops::approvers::add_test_approvers(pool, TENANT).await?;
    Ok(())
}

/// A JetStream context whose requests wait long enough on a loaded 2-core machine.
pub fn js(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new().timeout(Duration::from_secs(30)).build(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_contiguous_seqs_and_the_asked_share_of_copies() {
        let msgs = generate(1_000, 7, 0.1, 42);
        assert_eq!(msgs.len(), 1_000);
        assert_eq!(unique_count(&msgs), 900);
        let mut last = std::collections::HashMap::new();
        for m in msgs.iter().filter(|m| !m.duplicate) {
            let prev = last.insert(m.ev.device_id.clone(), m.ev.seq).unwrap_or(0);
            assert_eq!(m.ev.seq, prev + 1);
            m.ev.validate().unwrap();
        }
        assert_eq!(last.len(), 7);
    }

    #[test]
    fn copies_follow_their_original() {
        let msgs = generate(500, 3, 0.2, 1);
        for (i, m) in msgs.iter().enumerate().filter(|(_, m)| m.duplicate) {
            assert!(msgs[..i].iter().any(|o| !o.duplicate && o.ev.event_id == m.ev.event_id));
        }
    }
}
