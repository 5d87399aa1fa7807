//! Hands each applied configuration change set to the handler, as commands are handed, in
//! version order: `{"kind": "config_applied", "version": V, "snapshot": bool, "changes": [...]}`.
//! The record is written with the apply and marked handed only after the handler took it, so a
//! crash in between hands it again. A failing handler is retried with backoff and counted; the
//! sync never waits for it.

use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqlitePool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::handler::{self, HandlerResult, HandlerSpec};
use crate::metrics::Metrics;
use crate::store_config::cache;

/// How often the table is looked at without a wake-up (a missed one, or a failed SQLite read).
const RECHECK_EVERY: Duration = Duration::from_secs(30);

pub struct HandOff {
    pub pool: SqlitePool,
    pub handler: HandlerSpec,
    pub handler_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub cancel: CancellationToken,
    pub wake: Arc<Notify>,
    pub backoff: Backoff,
}

impl HandOff {
    pub async fn run(mut self) {
        loop {
            let wait = match cache::next_unhanded(&self.pool).await {
                Ok(Some((version, document))) => self.hand(version, &document).await,
                Ok(None) => Some(RECHECK_EVERY),
                Err(error) => {
                    tracing::warn!(%error, "Reading applied configuration failed.");
                    Some(self.backoff.next_delay())
                }
            };
            let Some(wait) = wait else { continue };
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// None: go on at once; Some: wait that long (or for the next applied version).
    async fn hand(&mut self, version: u64, document: &str) -> Option<Duration> {
        match handler::apply_json(&self.handler, document.as_bytes(), self.handler_timeout).await {
            HandlerResult::Applied => match cache::mark_handed(&self.pool, version).await {
                Ok(()) => {
                    self.backoff.reset();
                    self.metrics.config_handed.increment(1);
                    None
                }
                Err(error) => {
                    tracing::warn!(%error, version, "Recording the configuration hand-off failed.");
                    Some(self.backoff.next_delay())
                }
            },
            HandlerResult::Failed { code, detail } => {
                self.metrics.config_handler_failures.increment(1);
                tracing::warn!(version, %code, %detail, "Handler did not take the configuration; retrying.");
                Some(self.backoff.next_delay())
            }
        }
    }
}
