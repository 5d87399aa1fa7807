//! Follows the broker's ack watermark for this device: the last one is read from the
//! TILLSYNC_WATERMARKS stream on every (re)connect, live ones arrive on a subscription, and
//! each newer value prunes the outbox. The stream only exists once a broker has started, so a
//! failed read is retried.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::DirectGetErrorKind;
use futures::StreamExt;
use tillsync_schemas::{codec, streams, subject, Watermark};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::events::outbox::Outbox;
use crate::metrics::WATERMARK_OTHER_DEVICE;

/// How often the stored watermark is re-read even without a reconnect (covers missed messages).
const REREAD_EVERY: Duration = Duration::from_secs(15);

pub struct Follower {
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub outbox: Arc<Outbox>,
    pub connected: watch::Receiver<bool>,
    pub cancel: CancellationToken,
}

impl Follower {
    pub async fn run(mut self) {
        let subject = subject::watermarks(self.outbox.addr());
        let mut live = loop {
            match self.client.subscribe(subject.clone()).await {
                Ok(s) => break s,
                Err(error) => {
                    tracing::warn!(%error, "Watermark subscription failed; retrying.");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let mut need_read = true;
        let mut reread = tokio::time::interval(REREAD_EVERY);
        loop {
            if need_read && *self.connected.borrow() {
                need_read = !self.read_last(&subject).await;
            }
            let retry = tokio::time::sleep(Duration::from_millis(if need_read { 500 } else { 3_600_000 }));
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                msg = live.next() => match msg {
                    Some(m) => self.take(&m.payload).await,
                    None => return,
                },
                changed = self.connected.changed() => {
                    if changed.is_err() { return; }
                    need_read = need_read || *self.connected.borrow();
                }
                _ = reread.tick() => need_read = true,
                _ = retry => {}
            }
        }
    }

    /// Reads the stored watermark; true when done (including "none yet").
    async fn read_last(&self, subject: &str) -> bool {
        let stream = match self.js.get_stream_no_info(streams::WATERMARKS).await {
            Ok(s) => s,
            Err(error) => {
                tracing::debug!(%error, "Watermark stream not available yet.");
                return false;
            }
        };
        match stream.direct_get_last_for_subject(subject).await {
            Ok(m) => {
                self.take(&m.payload).await;
                true
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => true,
            Err(error) => {
                tracing::debug!(%error, "Reading the last watermark failed.");
                false
            }
        }
    }

    async fn take(&self, payload: &[u8]) {
        let wm: Watermark = match codec::decode(payload) {
            Ok(w) => w,
            Err(error) => {
                tracing::warn!(%error, "Undecodable watermark ignored.");
                return;
            }
        };
        // Device ids repeat across tenants and stores: only the whole address is this device.
        let own = self.outbox.addr();
        if (&wm.tenant_id, &wm.store_id, &wm.device_id) != (&own.tenant_id, &own.store_id, &own.device_id) {
            tracing::warn!(
                tenant_id = %wm.tenant_id,
                store_id = %wm.store_id,
                device_id = %wm.device_id,
                seq = wm.seq,
                "Refused a watermark naming another device."
            );
            self.outbox.refuse_watermark(WATERMARK_OTHER_DEVICE);
            return;
        }
        if let Err(error) = self.outbox.apply_watermark(wm.seq).await {
            tracing::error!(%error, seq = wm.seq, "Applying the watermark failed; the next one retries.");
        }
    }
}
