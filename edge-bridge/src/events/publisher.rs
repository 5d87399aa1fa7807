//! Publishes the outbox to JetStream in seq order. Up to `publish_window` publishes are in
//! flight; a row is marked sent only after its PubAck, and only as part of a contiguous acked
//! prefix. On any failure the rest of the window is abandoned and the bridge retries from the
//! first unacked row after a jittered backoff: the `Nats-Msg-Id` makes every retry a no-op in
//! JetStream (and the broker's ledger dedupes past the duplicate window). A row rewound for a
//! resend ([`crate::events::resend`]) is published again under `<device>:<event_id>:r<n>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::HeaderMap;
use tillsync_schemas::{streams, subject};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::events::outbox::{Outbox, Pending};
use crate::metrics::Metrics;

/// Highest seq JetStream acked, for status.
#[derive(Debug, Default)]
pub struct SentMark(pub AtomicU64);

/// Why a batch was not all published. The acked prefix is marked sent either way; the rest is
/// published again after the backoff. The message is the cause's own.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A row was not sent; the rows after it were not tried.
    #[error(transparent)]
    NotSent(PublishError),
    /// JetStream refused a row or did not store it.
    #[error(transparent)]
    NotStored(PublishError),
    #[error("no publish ack within {0:?}")]
    TimedOut(Duration),
    /// The acked rows were not marked sent in SQLite.
    #[error("marking sent: {0}")]
    MarkSent(#[source] sqlx::Error),
}

pub struct Publisher {
    pub js: async_nats::jetstream::Context,
    pub outbox: Arc<Outbox>,
    pub metrics: Arc<Metrics>,
    pub connected: watch::Receiver<bool>,
    pub cancel: CancellationToken,
    pub window: usize,
    pub backoff: Backoff,
    pub ack_timeout: Duration,
    pub sent: Arc<SentMark>,
    pub published: Arc<AtomicU64>,
}

impl Publisher {
    pub async fn run(mut self) {
        let subject = subject::events(self.outbox.addr());
        let outbox = self.outbox.clone();
        loop {
            if !crate::nats::wait_connected(&mut self.connected, &self.cancel).await {
                return;
            }
            // Registered before reading, so a submit racing the read still wakes us.
            let woken = outbox.new_rows.notified();
            let batch = match self.outbox.unsent(self.window).await {
                Ok(b) => b,
                Err(error) => {
                    tracing::error!(%error, "Reading the outbox failed; retrying.");
                    self.pause().await;
                    continue;
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = woken => {}
                    // The watermark may have skipped rows, or a row been marked by a restart.
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
            match self.publish_batch(&subject, &batch).await {
                Ok(()) => self.backoff.reset(),
                Err(error) => {
                    self.metrics.publish_failures.increment(1);
                    tracing::warn!(%error, first_seq = batch[0].seq, "Publish failed; retrying with backoff.");
                    self.pause().await;
                }
            }
        }
    }

    async fn pause(&mut self) {
        let delay = self.backoff.next_delay();
        tokio::select! {
            _ = self.cancel.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }

    /// Sends the batch pipelined, then awaits the acks in order, marking the acked prefix sent.
    async fn publish_batch(&self, subject: &str, batch: &[Pending]) -> Result<(), BatchError> {
        let mut in_flight: Vec<(u64, PublishAckFuture)> = Vec::with_capacity(batch.len());
        let mut send_error = None;
        for row in batch {
            let mut headers = HeaderMap::new();
            headers.insert(
                streams::HEADER_MSG_ID,
                streams::event_resend_msg_id(self.outbox.msg_id_prefix(), &row.event_id, row.resends).as_str(),
            );
            headers.insert(streams::HEADER_CONTENT_TYPE, streams::CONTENT_TYPE);
            headers.insert(streams::HEADER_SCHEMA_VERSION, tillsync_schemas::SCHEMA_VERSION.to_string().as_str());
            match self.js.publish_with_headers(subject.to_string(), headers, row.envelope.clone().into()).await {
                Ok(fut) => in_flight.push((row.seq, fut)),
                Err(e) => {
                    send_error = Some(BatchError::NotSent(e));
                    break;
                }
            }
        }
        let mut acked = Vec::with_capacity(in_flight.len());
        let mut ack_error = None;
        for (seq, fut) in in_flight {
            match tokio::time::timeout(self.ack_timeout, fut).await {
                Ok(Ok(ack)) => {
                    if ack.duplicate {
                        self.metrics.publish_duplicates.increment(1);
                    }
                    acked.push(seq);
                }
                Ok(Err(e)) => {
                    ack_error = Some(BatchError::NotStored(e));
                    break;
                }
                Err(_) => {
                    ack_error = Some(BatchError::TimedOut(self.ack_timeout));
                    break;
                }
            }
        }
        if let Some(&to) = acked.last() {
            self.outbox.mark_sent(&acked).await.map_err(BatchError::MarkSent)?;
            let n = acked.len() as u64;
            self.metrics.published.increment(n);
            self.published.fetch_add(n, Ordering::Relaxed);
            self.sent.0.fetch_max(to, Ordering::Relaxed);
        }
        match ack_error.or(send_error) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
