//! The tillsync cloud broker.
//!
//! It ensures the JetStream streams, takes its share of the partitions ([`partitions`]), and for
//! each partition it owns consumes events, heartbeats, command intake and command acks
//! ([`spine`]), routes each to its device actor ([`tillsync_actors`]), commits the decided
//! effects to Postgres in group-commit batches under the partition's fence and only then acks
//! JetStream. `Broker::start` returns once everything is ready; `Broker::shutdown` hands its
//! partitions over, finishing in-flight work, then drains NATS and closes the pool.

pub mod auth;
pub mod commands;
pub mod config;
pub mod db;
pub mod error;
pub mod flood;
pub mod heartbeats;
pub mod http;
pub mod ingest;
mod instance;
pub mod keyfile;
pub mod lanes;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod nats;
pub mod partitions;
pub mod ports;
pub mod quarantine;
pub mod repair;
pub mod replies;
mod settled;
pub mod signing;
pub mod spine;
pub mod store_config;
pub mod streams;
pub mod tenants;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use backon::{ExponentialBuilder, Retryable};
use sqlx::PgPool;
use tillsync_actors::{ActorConfig, ActorSystem};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
pub use crate::error::BrokerError;

/// What every broker task shares.
pub struct Ctx {
    pub config: Config,
    pub pool: PgPool,
    /// The command path's batch statements ([`db::connect_keyed`]).
    pub keyed: PgPool,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub actors: ActorSystem,
    pub tenants: tenants::Tenants,
    /// Marks command statuses published (batched).
    pub marks: commands::publish::Marks,
    /// Signs every command delivery.
    pub signer: Arc<signing::Signer>,
    /// The partitions this instance owns, and their fences.
    pub partitions: partitions::Ownership,
    pub slots: Slots,
    /// Counts each device's events to cut off a flooding one; `None` when this instance
    /// answers no auth callouts (no authorization: no credentials to revoke).
    pub flood: Option<flood::Guard>,
    pub cancel: CancellationToken,
}

/// How many batches commit at once across the owned partitions: event batches
/// (`TILLSYNC_INGEST_LANES`), and intake, ack and heartbeat batches (`TILLSYNC_MESSAGE_LANES`).
pub struct Slots {
    pub events: Semaphore,
    pub messages: Semaphore,
}

pub struct Broker {
    pub ctx: Arc<Ctx>,
    pub http_addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl Broker {
    /// Connects, migrates, ensures streams, starts the actors and every consumer task.
    pub async fn start(config: Config) -> Result<Broker, BrokerError> {
        config.validate().map_err(BrokerError::Config)?;
        let signer = Arc::new(signing::Signer::load(&config)?);
        tracing::info!(signing_key = %signer.public_key(), trusted = ?signer.trusted_public_keys(), "Commands are signed.");
        let prometheus = metrics::install();
        let instance_id = config.instance_id();
        let pool = db::connect_broker(&config.database_url, config.db_pool, config.lease_ttl(), &instance_id).await?;
        db::migrate(&pool).await?;
        partitions::fence::check_count(&pool, config.partitions).await.map_err(BrokerError::Config)?;
        // Intake and ack lanes each hold one connection at most, plus the published marks.
        let keyed_options = db::broker_options(&config.database_url, config.lease_ttl(), &instance_id)?;
        let keyed = db::connect_keyed_with(keyed_options, 2 * config.message_lanes as u32 + 1).await?;
        let nats =
            nats::connect_watched(&config.nats_url, config.nats_creds.as_deref(), &config.nats_tls, &instance_id)
                .await?;
        let js = jetstream::new(nats.clone());
        // Instances starting together race to create the replicated streams, and a cluster
        // answers some of those requests with timeouts: retry those, not a refusal (Config).
        (|| streams::ensure(&js, &config))
            .retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(250)).with_max_times(8))
            .when(|e| matches!(e, BrokerError::Stream(..)))
            .notify(|error, after| tracing::warn!(%error, ?after, "Streams not ensured yet; retrying."))
            .await?;
        let actor_config = ActorConfig {
            recent_ids: config.recent_ids,
            idle_after: Duration::from_secs(config.idle_passivate_s),
            ..ActorConfig::default()
        };
        let marks = commands::publish::Marks::start(keyed.clone());
        let pg_ports = ports::PgPorts::new(pool.clone()).with_commands(js.clone(), marks.clone(), signer.clone());
        let actors = ActorSystem::start(actor_config, Arc::new(pg_ports))
            .await
            .map_err(|e| BrokerError::Config(e.to_string()))?;
        let (ownership, fenced) = partitions::Ownership::new(config.partitions, instance_id.clone());
        let slots =
            Slots { events: Semaphore::new(config.ingest_lanes), messages: Semaphore::new(config.message_lanes) };
        let flood = config.auth_callout_creds.is_some().then(|| {
            flood::Guard::new(flood::Limits {
                events_per_s: config.device_max_events_per_s,
                bytes_per_s: config.device_max_bytes_per_s,
            })
        });
        let ctx = Arc::new(Ctx {
            flood,
            tenants: tenants::Tenants::new(config.auto_tenants),
            partitions: ownership,
            slots,
            config,
            pool,
            keyed,
            nats,
            js,
            actors,
            marks,
            signer,
            cancel: CancellationToken::new(),
        });
        let listener = tokio::net::TcpListener::bind(ctx.config.http_addr)
            .await
            .map_err(|source| BrokerError::Http { addr: ctx.config.http_addr, source })?;
        let http_addr =
            listener.local_addr().map_err(|source| BrokerError::Http { addr: ctx.config.http_addr, source })?;

        let mut tasks = JoinSet::new();
        tasks.spawn(http::serve(listener, ctx.clone(), prometheus));
        tasks.spawn(partitions::run(ctx.clone(), fenced));
        tasks.spawn(heartbeats::sweep_offline(ctx.clone()));
        tasks.spawn(commands::sweep::run(ctx.clone()));
        tasks.spawn(commands::misnamed::run(ctx.clone()));
        tasks.spawn(instance::run(ctx.clone(), instance_id));
        tasks.spawn(monitor::run(ctx.clone()));
        tasks.spawn(repair::run(ctx.clone()));
        auth::start(&ctx, &mut tasks).await?;
        store_config::start(&ctx, &mut tasks).await?;
        metrics::broker_up(true);
        tracing::info!(%http_addr, "Broker started.");
        Ok(Broker { ctx, http_addr, tasks })
    }

    /// Stops pulling, lets in-flight batches commit and ack, hands the partitions over, then
    /// drains NATS and closes the pool.
    pub async fn shutdown(mut self) {
        self.ctx.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        metrics::broker_up(false);
        let _ = self.ctx.nats.flush().await;
        let _ = self.ctx.nats.drain().await;
        if let Ok(ctx) = Arc::try_unwrap(self.ctx) {
            ctx.actors.shutdown().await;
            ctx.pool.close().await;
            ctx.keyed.close().await;
        }
        tracing::info!("Broker stopped.");
    }

    /// Runs until `shutdown` resolves (Ctrl-C, SIGTERM, or a test's signal).
    pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), BrokerError> {
        let broker = Broker::start(config).await?;
        shutdown.await;
        tracing::info!("Shutting down.");
        broker.shutdown().await;
        Ok(())
    }
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Unix milliseconds to a Postgres-friendly timestamp.
pub fn ts(ms: i64) -> sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc> {
    sqlx::types::chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
