//! Resends: until the broker's watermark covers a row, the outbox is the source of truth, not
//! JetStream (which acks a publish before it is fsynced, so a power cut can lose acked
//! messages). A row acked by JetStream but not yet covered is rewound, and so published again
//! under a new msg id, when
//! - the NATS connection comes up (first connect of a run, and every reconnect),
//! - the watermark has not covered it within `--resend-after-s` (the stall bound),
//! - the broker asks for its range on `tillsync.rs.<tenant>.<store>.<device>`.
//!
//! The broker's ledger dedupes whatever was not lost after all.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tillsync_schemas::{subject, ResendRequest};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::events::outbox::Outbox;

/// How often stalled rows are looked for: a quarter of the bound, between 250 ms and 5 s.
pub fn check_every(resend_after: Duration) -> Duration {
    (resend_after / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

pub struct Resender {
    pub client: async_nats::Client,
    pub outbox: Arc<Outbox>,
    pub connected: watch::Receiver<bool>,
    pub cancel: CancellationToken,
    pub resend_after: Duration,
}

impl Resender {
    pub async fn run(mut self) {
        let subject = subject::resend_requests(self.outbox.addr());
        let mut requests = loop {
            match self.client.subscribe(subject.clone()).await {
                Ok(s) => break s,
                Err(error) => {
                    tracing::warn!(%error, "Resend request subscription failed; retrying.");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        if *self.connected.borrow_and_update() {
            self.rewind_all().await;
        }
        let mut tick = tokio::time::interval(check_every(self.resend_after));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let after_ms = self.resend_after.as_millis() as i64;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                msg = requests.next() => match msg {
                    Some(m) => self.requested(&m.subject, &m.payload).await,
                    None => return,
                },
                changed = self.connected.changed() => {
                    if changed.is_err() { return; }
                    if *self.connected.borrow_and_update() { self.rewind_all().await; }
                }
                _ = tick.tick() => {
                    if let Err(error) = self.outbox.rewind_stalled(after_ms, crate::now_ms()).await {
                        tracing::warn!(%error, "Looking for stalled rows failed; retrying.");
                    }
                }
            }
        }
    }

    /// On (re)connect: whatever JetStream acked before may be gone with a restarted server.
    async fn rewind_all(&self) {
        if let Err(error) = self.outbox.rewind(1, u64::MAX, "reconnect").await {
            tracing::warn!(%error, "Rewinding after reconnect failed; the stall bound covers it.");
        }
    }

    async fn requested(&self, subject: &str, payload: &[u8]) {
        let req = match ResendRequest::decode(subject, payload) {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(%error, "Undecodable resend request ignored.");
                return;
            }
        };
        match self.outbox.rewind(req.from_seq, req.to_seq, "request").await {
            Ok(n) => tracing::info!(from = req.from_seq, to = req.to_seq, rows = n, "Broker asked for a resend."),
            Err(error) => tracing::warn!(%error, "Rewinding a requested range failed; the broker asks again."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_checks_are_frequent_but_bounded() {
        assert_eq!(check_every(Duration::from_secs(30)), Duration::from_secs(5));
        assert_eq!(check_every(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(check_every(Duration::from_millis(100)), Duration::from_millis(250));
    }
}
