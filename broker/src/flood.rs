//! Cutting off a flooding device. Every event and command-ack message is counted against its
//! device (one allowance for both), by the second JetStream stored it (not when the broker
//! reads it: a backlog drained after an outage is not a flood). A device over `TILLSYNC_DEVICE_MAX_EVENTS_PER_S` or
//! `TILLSYNC_DEVICE_MAX_BYTES_PER_S`, averaged over [`WINDOW_S`] seconds, has its credentials
//! revoked with reason `flooding`; the kick duty closes its connections within a second and the
//! auth callout refuses it from then on. Junk counts as much as sales: it is the load that
//! matters. Only with authorization on: without credentials there is nothing to cut.

use std::collections::VecDeque;

use dashmap::DashMap;
use tillsync_schemas::subject;
use tillsync_schemas::DeviceAddr;

use crate::auth::records;
use crate::{metrics, Ctx};

/// Counts a batch of events or command acks against each device's allowance and cuts off any
/// device that went over; nothing when this instance does not watch ([`Ctx::flood`]).
pub async fn watch(ctx: &Ctx, batch: &[async_nats::jetstream::Message]) {
    let Some(guard) = &ctx.flood else { return };
    let now_s = crate::now_ms() / 1000;
    guard.maybe_prune(now_s);
    for m in batch {
        let stored_s = m.info().map_or(now_s, |i| i.published.unix_timestamp());
        if let Some((device, over)) = guard.observe(&m.subject, stored_s, m.payload.len()) {
            cut_off(ctx, device, over, guard.limits()).await;
        }
    }
}

/// Seconds of publish time a device's rate is averaged over.
pub const WINDOW_S: i64 = 10;
/// Who revokes, in the credentials and the audit trail.
const BY: &str = "broker";

/// A device's allowance, per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub events_per_s: u64,
    pub bytes_per_s: u64,
}

/// Which limit a device went over, and what it sent within the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Events(u64),
    Bytes(u64),
}

impl Over {
    pub fn label(self) -> &'static str {
        match self {
            Over::Events(_) => "events",
            Over::Bytes(_) => "bytes",
        }
    }

    fn detail(self, l: Limits) -> String {
        match self {
            Over::Events(n) => {
                format!("{n} events within {WINDOW_S} s of publish time, over {} a second", l.events_per_s)
            }
            Over::Bytes(n) => format!("{n} bytes within {WINDOW_S} s of publish time, over {} a second", l.bytes_per_s),
        }
    }
}

/// One device's counts per second of publish time, the last [`WINDOW_S`] seconds.
#[derive(Debug, Default)]
pub struct Window {
    /// (second, events, bytes), oldest first.
    seconds: VecDeque<(i64, u64, u64)>,
}

impl Window {
    /// Counts a message stored at `at_s` (Unix seconds); which limit the window is now over.
    pub fn add(&mut self, at_s: i64, bytes: u64, l: Limits) -> Option<Over> {
        match self.seconds.iter_mut().rev().find(|(s, _, _)| *s == at_s) {
            Some(slot) => {
                slot.1 += 1;
                slot.2 += bytes;
            }
            None => {
                let at = self.seconds.iter().position(|(s, _, _)| *s > at_s).unwrap_or(self.seconds.len());
                self.seconds.insert(at, (at_s, 1, bytes));
            }
        }
        let newest = self.seconds.back().map_or(at_s, |(s, _, _)| *s);
        while self.seconds.front().is_some_and(|(s, _, _)| *s <= newest - WINDOW_S) {
            self.seconds.pop_front();
        }
        let (events, bytes) = self.seconds.iter().fold((0, 0), |(e, b), (_, de, db)| (e + de, b + db));
        let span = WINDOW_S as u64;
        if events > l.events_per_s * span {
            Some(Over::Events(events))
        } else if bytes > l.bytes_per_s * span {
            Some(Over::Bytes(bytes))
        } else {
            None
        }
    }

    fn newest(&self) -> Option<i64> {
        self.seconds.back().map(|(s, _, _)| *s)
    }
}

/// The windows of every device this instance reads events of.
pub struct Guard {
    limits: Limits,
    /// When windows were last pruned, Unix seconds.
    pruned_at: std::sync::atomic::AtomicI64,
    windows: DashMap<String, Window>,
    /// Devices this instance cut off, and when (Unix seconds): one revocation each.
    cut: DashMap<String, i64>,
}

impl Guard {
    pub fn new(limits: Limits) -> Guard {
        Guard { limits, pruned_at: Default::default(), windows: DashMap::new(), cut: DashMap::new() }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// [`Guard::prune`] at most once a minute.
    pub fn maybe_prune(&self, now_s: i64) {
        use std::sync::atomic::Ordering;
        let last = self.pruned_at.load(Ordering::Relaxed);
        if now_s - last >= 60
            && self.pruned_at.compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.prune(now_s);
        }
    }

    /// Counts one event message; the device to cut off, the first time it goes over.
    pub fn observe(&self, subject_name: &str, stored_at_s: i64, bytes: usize) -> Option<(DeviceAddr, Over)> {
        let parsed = subject::parse(subject_name).ok()?;
        let key = format!("{}.{}.{}", parsed.tenant_id, parsed.store_id, parsed.last);
        if self.cut.contains_key(&key) {
            return None;
        }
        let over = self.windows.entry(key.clone()).or_default().add(stored_at_s, bytes as u64, self.limits)?;
        self.windows.remove(&key);
        self.cut.insert(key, stored_at_s);
        Some((DeviceAddr::new(&parsed.tenant_id, &parsed.store_id, &parsed.last), over))
    }

    /// Forgets windows with nothing newer than `now_s - 2 * WINDOW_S`, and devices cut off
    /// more than an hour ago (one activated again is watched afresh).
    pub fn prune(&self, now_s: i64) {
        self.windows.retain(|_, w| w.newest().is_some_and(|n| n > now_s - 2 * WINDOW_S));
        self.cut.retain(|_, at| *at > now_s - 3_600);
    }
}

/// Revokes a flooding device's credentials (the kick duty closes its connections) and says so
/// everywhere an operator looks: a metric, an error log line and the device's audit trail.
pub async fn cut_off(ctx: &Ctx, device: DeviceAddr, over: Over, limits: Limits) {
    metrics::device_cut_off(over.label());
    let detail = over.detail(limits);
    tracing::error!(tenant_id = %device.tenant_id, store_id = %device.store_id, device_id = %device.device_id, %detail, "Device flooding: cut off (credentials revoked).");
    let done = async {
        let mut tx = ctx.pool.begin().await?;
        let revoked = records::revoke_device(&mut *tx, &device, BY, "flooding").await?;
        let audit = records::Audit {
            action: "cut_off",
            reason: Some("flooding"),
            device: Some(&device),
            actor: BY,
            detail: &format!("{detail}; {revoked} credential(s) revoked"),
            ..Default::default()
        };
        records::audit(&mut *tx, &audit).await?;
        tx.commit().await
    };
    if let Err(error) = done.await {
        tracing::error!(%error, device_id = %device.device_id, "Cut-off of a flooding device not recorded.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { events_per_s: 10, bytes_per_s: 1_000 };

    #[test]
    fn a_steady_device_stays_under_and_a_burst_goes_over() {
        let mut w = Window::default();
        // 10 a second for a minute: never over.
        for s in 0..60 {
            for _ in 0..10 {
                assert_eq!(w.add(s, 10, L), None, "second {s}");
            }
        }
        // 101 within one second of a fresh window: over (the window allows 100).
        let mut w = Window::default();
        let over: Vec<_> = (0..101).filter_map(|_| w.add(100, 1, L)).collect();
        assert_eq!(over, vec![Over::Events(101)]);
    }

    #[test]
    fn a_backlog_counts_by_publish_time_and_bytes_count_too() {
        // Read all at once after an outage, published 5 a second over 100 s: never over.
        let mut w = Window::default();
        for s in 0..100 {
            for _ in 0..5 {
                assert_eq!(w.add(s, 10, L), None);
            }
        }
        // Late arrivals for an old second are counted in their own second.
        assert_eq!(w.add(95, 10, L), None);
        let mut w = Window::default();
        assert_eq!(w.add(7, 10_000, L), None);
        assert_eq!(w.add(7, 1, L), Some(Over::Bytes(10_001)));
    }

    #[test]
    fn a_device_is_cut_off_once() {
        let g = Guard::new(L);
        let subj = "tillsync.ev.acme.s1.till-1";
        let cut: Vec<_> = (0..300).filter_map(|_| g.observe(subj, 5, 1)).collect();
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].0, DeviceAddr::new("acme", "s1", "till-1"));
        assert_eq!(g.observe("tillsync.ev.acme.s1.till-2", 5, 1), None, "another device has its own window");
        assert_eq!(g.observe("not a subject", 5, 1), None);
    }
}
