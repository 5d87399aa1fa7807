//! The tillsync edge bridge: what a store installs next to its POS.
//!
//! The POS submits events ([`Bridge::submit`] or `POST /v1/events` on loopback); each is
//! validated, given the next device seq and committed to a SQLite outbox before it is
//! answered. A publisher drains the outbox to JetStream in order, with `Nats-Msg-Id`, marking
//! rows sent only after the publish ack; rows are pruned once the broker's watermark covers
//! them; rows sent but not covered are sent again on reconnect, on a stalled watermark and on
//! the broker's request ([`events`]). Commands come down without a consumer of the device's own
//! (`downlink`), are deduped by command_id in SQLite, applied through a handler with a
//! timeout and acked with their outcome ([`commands`]). Head office's configuration is kept in
//! SQLite, version by version ([`store_config`]), served to the POS and handed to the handler.
//! Heartbeats report health. Why the bridge is not connected (unreachable, unavailable,
//! revoked) is found out and told in its status and metrics ([`cutoff`]); a revoked device
//! takes no new events. Every background loop is a job of one registry ([`tasks`]), stopped
//! and joined by [`Bridge::shutdown`] before NATS is drained and SQLite closed. Only
//! outbound connections; `docs/edge-bridge.md` is the operator's guide.

pub mod api;
pub mod backoff;
pub mod commands;
pub mod cutoff;
pub mod db;
pub(crate) mod downlink;
pub mod error;
pub mod events;
pub mod handler;
pub mod heartbeat;
pub mod http_client;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod nats;
pub mod settings;
pub mod simulate;
pub mod status;
pub mod store_config;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tillsync_tasks::{Job, Tasks};
use tokio_util::sync::CancellationToken;

use crate::events::{outbox, publisher, resend, watermark};

pub use crate::error::{BridgeError, SubmitError};
pub use crate::events::draft::EventDraft;
pub use crate::events::outbox::Accepted;
pub use crate::settings::{Config, SettingsError};
pub use crate::status::Status;
pub use tillsync_schemas::now_ms;

/// How long [`Bridge::shutdown`] waits for its tasks before it aborts the rest: a publish
/// window's acks and a handler run (`--handler-timeout-ms`, 10 s by default) take seconds, and
/// NATS and SQLite must still be closed inside systemd's `TimeoutStopSec` (30 s).
const STOP_TASKS_WITHIN: Duration = Duration::from_secs(20);

/// What the HTTP API and the library API share.
pub struct Shared {
    pub outbox: Arc<outbox::Outbox>,
    pub source: Arc<status::StatusSource>,
    pub metrics: Arc<metrics::Metrics>,
    /// Why the bridge is cut off from NATS ([`cutoff`]); a revoked device takes no new events.
    pub cut_off: tokio::sync::watch::Receiver<Option<cutoff::CutOff>>,
    accepting: AtomicBool,
}

impl Shared {
    pub async fn submit(&self, draft: EventDraft) -> Result<Accepted, SubmitError> {
        if !self.accepting.load(Ordering::Acquire) {
            self.metrics.refused(error::SHUTTING_DOWN).increment(1);
            return Err(SubmitError::ShuttingDown);
        }
        let refuse_new = self.cut_off.borrow().as_ref().filter(|c| c.refuses_events).map(|c| {
            if c.reason == cutoff::Reason::Decommissioned.code() {
                SubmitError::Decommissioned(c.detail.clone())
            } else {
                SubmitError::Revoked(c.detail.clone())
            }
        });
        self.outbox.submit_unless(draft, refuse_new).await
    }
}

/// A running bridge. Stop it with [`Bridge::shutdown`].
pub struct Bridge {
    shared: Arc<Shared>,
    client: async_nats::Client,
    cancel: CancellationToken,
    tasks: Tasks,
    http_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").field("addr", self.shared.outbox.addr()).field("http_addr", &self.http_addr).finish()
    }
}

impl Bridge {
    /// Opens the outbox, starts the HTTP API and the background tasks. Returns at once even
    /// when NATS is unreachable: events are accepted from the first moment.
    pub async fn start(mut config: Config) -> Result<Bridge, BridgeError> {
        config.resolve_identity().map_err(BridgeError::Config)?;
        config.validate().map_err(BridgeError::Config)?;
        for warning in config.plaintext().unwrap_or_default() {
            tracing::warn!(%warning, "Plain text allowed by --allow-plaintext.");
        }
        let addr = config.addr();
        let handler = config.handler_spec().map_err(BridgeError::Config)?;
        let trusted_keys: commands::keys::TrustedKeys = Arc::new(std::sync::RwLock::new(config.trusted_command_keys()));
        if trusted_keys.read().expect("trusted keys lock").is_empty() {
            // Started anyway: events still flow up; only commands are refused.
            tracing::error!(
                "No command keys: every command will be refused bad_signature. Set --command-keys \
                 (TILLSYNC_EDGE_COMMAND_KEYS) to the broker's public signing key."
            );
        }
        let metrics = Arc::new(metrics::Metrics::new());
        let pool = db::open(&config.db, config.sqlite_sync == "full").await?;
        db::bind_identity(&pool, &addr).await?;
        let limits = outbox::Limits {
            max_rows: config.outbox_max_rows,
            max_bytes: config.outbox_max_bytes,
            retention_ms: (config.retention_s as i64).saturating_mul(1000),
            event_id_retention_ms: (config.event_id_retention_s as i64).saturating_mul(1000),
        };
        let outbox = Arc::new(outbox::Outbox::open(pool.clone(), addr.clone(), limits, metrics.clone()).await?);
        let (observed, observations) = tokio::sync::mpsc::unbounded_channel();
        let (verdict, cut_off) = tokio::sync::watch::channel(None);
        let slow_retries = Arc::new(AtomicBool::new(false));
        let (client, connected) = nats::connect(&config, metrics.clone(), observed, slow_retries.clone()).await?;
        let js = async_nats::jetstream::ContextBuilder::new().timeout(config.ack_timeout()).build(client.clone());
        let cancel = CancellationToken::new();
        let sent = Arc::new(publisher::SentMark::default());
        let published = Arc::new(AtomicU64::new(0));
        let source = Arc::new(status::StatusSource {
            outbox: outbox.clone(),
            connected: connected.clone(),
            cut_off: cut_off.clone(),
            sent: sent.clone(),
            published: published.clone(),
            started: Instant::now(),
        });
        let shared = Arc::new(Shared {
            outbox: outbox.clone(),
            source: source.clone(),
            metrics: metrics.clone(),
            cut_off,
            accepting: AtomicBool::new(true),
        });
        let backoff = backoff::Backoff::new(
            Duration::from_millis(config.backoff_min_ms),
            Duration::from_millis(config.backoff_max_ms),
        );

        // Bound before any task starts: a port taken is refused with nothing to stop.
        let listener = if config.no_http {
            None
        } else {
            let listener = tokio::net::TcpListener::bind(config.http_addr).await.map_err(BridgeError::Http)?;
            Some((listener.local_addr().map_err(BridgeError::Http)?, listener))
        };

        let beat_now = Arc::new(tokio::sync::Notify::new());
        let config_applied = Arc::new(tokio::sync::Notify::new());
        let servers = nats::servers(&config.nats_url)?;
        let gauges = metrics.clone();
        let mut tasks = Tasks::new(cancel.clone(), move |job: &Job, running| gauges.task(job.name, running));
        tasks.spawn(Job::on("cutoff", "NATS connection events"), |_| {
            cutoff::Watcher {
                tracker: cutoff::Tracker::new(cutoff::Rules {
                    probe_every_ms: config.cutoff_probe_every_ms as i64,
                    confirmations: config.cutoff_confirmations,
                    activated: config.identity_path().exists(),
                }),
                events: observations,
                verdict,
                slow_retries,
                servers,
                tls: config.nats_tls.clone(),
                metrics: metrics.clone(),
                cancel: cancel.clone(),
                device: addr.device_id.clone(),
                seed: identity::Identity::load(&config.identity_path()).ok().flatten().map(|i| i.seed),
            }
            .run()
        });
        tasks.spawn(Job::on("config_sync", "the store's configuration deltas"), |_| {
            store_config::sync::Syncer {
                addr: addr.clone(),
                client: client.clone(),
                js: js.clone(),
                pool: pool.clone(),
                db_path: config.db.clone(),
                metrics: metrics.clone(),
                connected: connected.clone(),
                cancel: cancel.clone(),
                backoff: backoff.clone(),
                snapshot_after: config.config_snapshot_after,
                recheck_every: Duration::from_millis(config.config_recheck_ms),
                applied: vec![beat_now.clone(), config_applied.clone()],
            }
            .run()
        });
        tasks.spawn(Job::on("config_handoff", "applied configuration versions"), |_| {
            store_config::handoff::HandOff {
                pool: pool.clone(),
                handler: handler.clone(),
                handler_timeout: config.handler_timeout(),
                metrics: metrics.clone(),
                cancel: cancel.clone(),
                wake: config_applied,
                backoff: backoff.clone(),
            }
            .run()
        });
        tasks.spawn(Job::on("publisher", "new outbox rows"), |_| {
            publisher::Publisher {
                js: js.clone(),
                outbox: outbox.clone(),
                metrics: metrics.clone(),
                connected: connected.clone(),
                cancel: cancel.clone(),
                window: config.publish_window,
                backoff: backoff.clone(),
                ack_timeout: config.ack_timeout(),
                sent,
                published,
            }
            .run()
        });
        tasks.spawn(Job::on("watermark", "the broker's watermarks"), |_| {
            watermark::Follower {
                client: client.clone(),
                js: js.clone(),
                outbox: outbox.clone(),
                connected: connected.clone(),
                cancel: cancel.clone(),
            }
            .run()
        });
        tasks.spawn(Job::on("resend", "resend requests, reconnects and stalled rows"), |_| {
            resend::Resender {
                client: client.clone(),
                outbox: outbox.clone(),
                connected: connected.clone(),
                cancel: cancel.clone(),
                resend_after: config.resend_after(),
            }
            .run()
        });
        if config.command_keys_refresh_s > 0 {
            tasks.spawn(Job::every("command_keys", Duration::from_secs(config.command_keys_refresh_s)), |_| {
                commands::keys::Refresher {
                    addr: addr.clone(),
                    client: client.clone(),
                    trusted: trusted_keys.clone(),
                    identity: Some(config.identity_path()),
                    every: Duration::from_secs(config.command_keys_refresh_s),
                    metrics: metrics.clone(),
                    connected: connected.clone(),
                    cancel: cancel.clone(),
                }
                .run()
            });
        }
        tasks.spawn(Job::on("commands", "this device's commands"), |_| {
            commands::executor::Executor {
                addr: addr.clone(),
                client: client.clone(),
                old_consumer_dropped: false,
                msg_id_prefix: outbox.msg_id_prefix().to_string(),
                js: js.clone(),
                pool,
                handler,
                trusted_keys: trusted_keys.clone(),
                handler_timeout: config.handler_timeout(),
                ack_timeout: config.ack_timeout(),
                metrics: metrics.clone(),
                connected: connected.clone(),
                cancel: cancel.clone(),
                backoff,
            }
            .run()
        });
        tasks.spawn(Job::every("heartbeat", config.heartbeat_every()), |_| {
            heartbeat::Beater {
                js,
                source,
                metrics,
                connected,
                cancel: cancel.clone(),
                every: config.heartbeat_every(),
                ack_timeout: config.ack_timeout(),
                beat_now,
            }
            .run()
        });
        let http_addr = listener.map(|(bound, listener)| {
            tasks.spawn(Job::on("http", "HTTP requests"), |_| api::serve(listener, shared.clone(), cancel.clone()));
            tracing::info!(%bound, "Local API listening.");
            bound
        });
        tasks.log_started();
        tracing::info!(tenant = %addr.tenant_id, store = %addr.store_id, device = %addr.device_id, "Edge bridge started.");
        Ok(Bridge { shared, client, cancel, tasks, http_addr })
    }

    /// Validates, assigns the seq and commits the event; returns only once it is durable.
    pub async fn submit(&self, draft: EventDraft) -> Result<Accepted, SubmitError> {
        self.shared.submit(draft).await
    }

    pub async fn status(&self) -> Result<Status, sqlx::Error> {
        self.shared.source.status().await
    }

    /// Where the local API listens (None with `no_http`).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The Prometheus text of this bridge's metrics.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render()
    }

    /// A token cancelled when the bridge stops.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops taking events, stops every task and joins them within [`STOP_TASKS_WITHIN`] (a
    /// publish window in flight is acked and marked first), then drains NATS and closes SQLite.
    /// A task that did not stop in time is named and aborted.
    pub async fn shutdown(self) {
        self.shared.accepting.store(false, Ordering::Release);
        let late = self.tasks.stop(STOP_TASKS_WITHIN).await;
        // A flush waits for the connection, which may never come back; nothing depends on it
        // (every event is still in the outbox), so it and the drain get a bounded moment.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.drain()).await;
        drop(self.client);
        db::close(self.shared.outbox.pool()).await;
        tracing::info!(tasks_not_stopped = late.len(), "Edge bridge stopped.");
    }
}
