//! Heartbeats: every `heartbeat_s`, at each connect and right after a configuration version is
//! applied (so the broker learns the applied version at once), the bridge publishes its health to
//! JetStream. Skipped while offline: a stale heartbeat has no value, the outbox does.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishError;
use async_nats::HeaderMap;
use tillsync_schemas::{codec, streams, subject, Heartbeat};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::status::{StatusSource, SOFTWARE_VERSION};

/// Why a heartbeat was not published; the next one is tried at the next tick. The message is
/// the cause's own.
#[derive(Debug, thiserror::Error)]
pub enum BeatError {
    /// The status (the outbox's counts, the applied revision) was not read from SQLite.
    #[error(transparent)]
    Status(sqlx::Error),
    #[error(transparent)]
    NotSent(PublishError),
    #[error(transparent)]
    NotStored(PublishError),
    #[error("no publish ack in time")]
    TimedOut,
}

pub struct Beater {
    pub js: async_nats::jetstream::Context,
    pub source: Arc<StatusSource>,
    pub metrics: Arc<Metrics>,
    pub connected: watch::Receiver<bool>,
    pub cancel: CancellationToken,
    pub every: Duration,
    pub ack_timeout: Duration,
    /// Notified to beat at once.
    pub beat_now: Arc<tokio::sync::Notify>,
}

impl Beater {
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.beat_now.notified() => {}
                changed = self.connected.changed() => {
                    if changed.is_err() { return; }
                    if !*self.connected.borrow() { continue; }
                }
            }
            if !*self.connected.borrow() {
                continue;
            }
            match self.beat().await {
                Ok(()) => self.metrics.heartbeats.increment(1),
                Err(error) => {
                    self.metrics.heartbeat_failures.increment(1);
                    tracing::debug!(%error, "Heartbeat not published.");
                }
            }
        }
    }

    async fn beat(&self) -> Result<(), BeatError> {
        let s = self.source.status().await.map_err(BeatError::Status)?;
        let addr = self.source.addr();
        let hb = Heartbeat {
            schema_version: tillsync_schemas::SCHEMA_VERSION,
            tenant_id: addr.tenant_id.clone(),
            store_id: addr.store_id.clone(),
            device_id: addr.device_id.clone(),
            at_ms: crate::now_ms(),
            software_version: SOFTWARE_VERSION.to_string(),
            outbox_depth: s.outbox.unacked,
            oldest_unsent_age_s: s.outbox.oldest_unsent_age_s,
            last_acked_seq: s.outbox.watermark,
            config_revision: s.config_revision,
            uptime_s: s.uptime_s,
            watermarks_refused: s.outbox.watermarks_refused,
        };
        let mut headers = HeaderMap::new();
        headers.insert(streams::HEADER_CONTENT_TYPE, streams::CONTENT_TYPE);
        headers.insert(streams::HEADER_SCHEMA_VERSION, tillsync_schemas::SCHEMA_VERSION.to_string().as_str());
        let fut = self
            .js
            .publish_with_headers(subject::heartbeats(addr), headers, codec::encode(&hb).into())
            .await
            .map_err(BeatError::NotSent)?;
        match tokio::time::timeout(self.ack_timeout, fut).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(BeatError::NotStored(e)),
            Err(_) => Err(BeatError::TimedOut),
        }
    }
}
