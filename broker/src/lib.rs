//! The tillsync cloud broker.
//!
//! It ensures the JetStream streams, takes its share of the partitions (`partitions`), and for
//! each partition it owns consumes events, heartbeats, command intake and command acks
//! (`spine`), routes each to its device actor ([`tillsync_actors`]), commits the decided
//! effects to Postgres in group-commit batches under the partition's fence and only then acks
//! JetStream. Every background loop is a job of one registry (`tasks`), and the short-lived
//! work the broker does not await is that registry's too. `Broker::start` returns once
//! everything is ready; `Broker::shutdown` stops and joins every task (handing the partitions
//! over, finishing in-flight work) and then that work, then drains NATS, stops the actors and
//! closes the pools.

pub mod admin;
pub(crate) mod auth;
pub(crate) mod commands;
pub mod config;
pub(crate) mod db;
pub(crate) mod error;
pub(crate) mod flood;
pub(crate) mod heartbeats;
pub(crate) mod http;
pub(crate) mod ingest;
mod instance;
pub(crate) mod keyfile;
pub(crate) mod lanes;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod monitor;
pub(crate) mod nats;
pub(crate) mod partitions;
pub(crate) mod ports;
pub(crate) mod quarantine;
pub(crate) mod repair;
pub(crate) mod replies;
mod settled;
pub(crate) mod signing;
pub(crate) mod spine;
pub(crate) mod store_config;
pub(crate) mod streams;
pub(crate) mod tasks;
pub(crate) mod tenants;
pub(crate) mod tls;
mod work;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use backon::{ExponentialBuilder, Retryable};
use sqlx::PgPool;
use tillsync_actors::{ActorConfig, ActorSystem};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
pub use crate::error::BrokerError;
use crate::tasks::{Job, Scope, Tasks};
pub use tillsync_schemas::now_ms;

/// How long `Broker::shutdown` waits for its tasks before it aborts the rest: the partitions'
/// handover and in-flight batches take seconds, and the actors and pools must still be closed
/// inside an orchestrator's usual grace period (30 s).
const STOP_TASKS_WITHIN: Duration = Duration::from_secs(20);

/// How long each closing step of `Broker::shutdown` after the tasks may take (draining NATS,
/// stopping the actors, closing the pools), so a stop always ends inside the grace period.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);

/// Runs a closing step of the shutdown, logging `done` when it finished, or that it was left
/// after `bound` (the process exits anyway; Postgres and NATS drop its connections).
async fn within(bound: Duration, done: &'static str, step: impl std::future::Future<Output = ()>) {
    match tokio::time::timeout(bound, step).await {
        Ok(()) => tracing::info!("{done}"),
        Err(_) => tracing::warn!(step = done, ?bound, "Shutdown step did not finish in time; going on."),
    }
}

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
    /// Where short-lived work is spawned, joined by the shutdown (`Tasks::spawned`).
    pub spawned: tokio_util::task::TaskTracker,
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
    tasks: Tasks,
}

impl Broker {
    /// Connects, migrates, ensures streams, starts the actors and every consumer task.
    pub async fn start(config: Config) -> Result<Broker, BrokerError> {
        config.validate().map_err(BrokerError::Settings)?;
        let signer = Arc::new(signing::Signer::load(
            config.signing_key_file.as_deref(),
            config.signing_key_next_file.as_deref(),
        )?);
        tracing::info!(signing_key = %signer.public_key(), trusted = ?signer.trusted_public_keys(), "Commands are signed.");
        let prometheus = metrics::install();
        let instance_id = config.instance_id();
        let cancel = CancellationToken::new();
        let tasks = Tasks::new(cancel.clone(), tasks::gauge);
        let pool = db::connect_broker(&config.database_url, config.db_pool, config.lease_ttl(), &instance_id).await?;
        db::migrate(&pool).await?;
        partitions::fence::check_count(&pool, config.partitions).await?;
        // At most `message_lanes` intake, ack and heartbeat batches run at once (`Slots`), and
        // an intake or ack batch holds one connection of this pool; one more serves the status
        // marks. The 2x is from when intake and acks had that many lanes each: headroom, and
        // the count docs/operations.md gives for `max_connections`.
        let keyed_options = db::broker_options(&config.database_url, config.lease_ttl(), &instance_id)?;
        let keyed = db::connect_keyed_with(keyed_options, 2 * config.message_lanes as u32 + 1).await?;
        let nats = nats::connect_watched(
            &config.nats_url,
            config.nats_creds.as_deref(),
            &config.nats_tls,
            &instance_id,
            tasks.spawned(),
        )
        .await?;
        let js = jetstream::new(nats.clone());
        // Instances starting together race to create the replicated streams, and a cluster
        // answers some of those requests with timeouts: retry those, not a refusal (changed partitions).
        (|| streams::ensure(&js, &config))
            .retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(250)).with_max_times(8))
            .when(|e| matches!(e, BrokerError::Stream { .. }))
            .notify(|error, after| tracing::warn!(%error, ?after, "Streams not ensured yet; retrying."))
            .await?;
        let actor_config = ActorConfig {
            recent_ids: config.recent_ids,
            idle_after: Duration::from_secs(config.idle_passivate_s),
            ..ActorConfig::default()
        };
        let marks = commands::publish::Marks::new(keyed.clone(), tasks.spawned());
        let pg_ports = ports::PgPorts::new(pool.clone()).with_commands(js.clone(), marks.clone(), signer.clone());
        // Idle actors are passivated by a job of the task registry (`passivate`).
        let actors = ActorSystem::start_unswept(actor_config, Arc::new(pg_ports)).await?;
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
            spawned: tasks.spawned(),
            signer,
            cancel,
        });
        let listener = tokio::net::TcpListener::bind(ctx.config.http_addr)
            .await
            .map_err(|source| BrokerError::Http { addr: ctx.config.http_addr, source })?;
        let http_addr =
            listener.local_addr().map_err(|source| BrokerError::Http { addr: ctx.config.http_addr, source })?;

        let tasks = start_tasks(&ctx, tasks, listener, prometheus, fenced, instance_id).await?;
        metrics::broker_up(true);
        tracing::info!(%http_addr, "Broker started.");
        Ok(Broker { ctx, http_addr, tasks })
    }

    /// Stops every task (pulling stops, in-flight batches commit and ack, the partitions are
    /// handed over) and joins them and the work they spawned within `STOP_TASKS_WITHIN`, then
    /// drains NATS, stops the actors and closes the pools. Whatever still holds the context (a task that did not stop
    /// in time) finds them closed.
    pub async fn shutdown(self) {
        let late = self.tasks.stop(STOP_TASKS_WITHIN).await;
        metrics::broker_up(false);
        let ctx = self.ctx;
        // Each step is bounded: NATS may be gone (stopped with the broker, or cut off), and then
        // a flush waits for a reconnect, an actor for its publish, a pool for that actor.
        let drained = async {
            let _ = ctx.nats.flush().await;
            let _ = ctx.nats.drain().await;
        };
        within(CLOSE_WITHIN, "NATS drained.", drained).await;
        within(CLOSE_WITHIN, "Actors stopped.", ctx.actors.shutdown()).await;
        let closed = async {
            ctx.pool.close().await;
            ctx.keyed.close().await;
        };
        within(CLOSE_WITHIN, "Pools closed.", closed).await;
        tracing::info!(tasks_not_stopped = late.len(), "Broker stopped.");
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

/// Registers and starts every background task of the broker in `tasks`: here, and the
/// identity and configuration tasks ([`auth::start`], [`store_config::start`]), which subscribe
/// first.
async fn start_tasks(
    ctx: &Arc<Ctx>,
    mut tasks: Tasks,
    listener: tokio::net::TcpListener,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    fenced: tokio::sync::mpsc::UnboundedReceiver<partitions::Fence>,
    instance_id: String,
) -> Result<Tasks, BrokerError> {
    use Scope::{Instance, Lead};
    let c = &ctx.config;
    tasks.spawn(Job::on("http", Instance, "HTTP requests"), |_| http::serve(listener, ctx.clone(), prometheus));
    let leases = Job::on("partitions", Instance, "lease ticks, lease changes and fence refusals");
    tasks.spawn(leases, |_| partitions::run(ctx.clone(), fenced, work::start));
    let offline = Job::every("offline_sweep", Lead, heartbeats::offline_sweep_every(c.offline_after_s));
    tasks.spawn(offline, |job| heartbeats::sweep_offline(ctx.clone(), job));
    let wake = Job::every("command_wake", Instance, commands::sweep::interval(c.command_retry_ms));
    tasks.spawn(wake, |job| commands::sweep::wake(ctx.clone(), job));
    let outbox = Job::every("command_outbox", Lead, commands::sweep::OUTBOX_EVERY);
    tasks.spawn(outbox, |job| commands::sweep::outbox(ctx.clone(), job));
    let misnamed = Job::every("misnamed_consumers", Lead, commands::misnamed::EVERY);
    tasks.spawn(misnamed, |job| commands::misnamed::run(ctx.clone(), job));
    let report = Job::every("instance_report", Instance, instance::EVERY);
    tasks.spawn(report, |job| instance::run(ctx.clone(), job, instance_id));
    let refresh = Job::every("monitor", Instance, Duration::from_millis(c.monitor_interval_ms));
    tasks.spawn(refresh, |job| monitor::run(ctx.clone(), job));
    let gaps = Job::every("gap_repair", Lead, repair::interval(Duration::from_secs(c.gap_repair_after_s)));
    tasks.spawn(gaps, |job| repair::run(ctx.clone(), job));
    let idle = Job::every("passivate", Instance, ctx.actors.passivate_every());
    tasks.spawn(idle, |job| passivate_idle(ctx.clone(), job));
    let catch_up = commands::sync::subscribe(&ctx.nats).await?;
    let sync = Job::on("command_catch_up", Instance, "tillsync.csync.*.*.*");
    tasks.spawn(sync, |_| commands::sync::run(ctx.clone(), catch_up));
    auth::start(ctx, &mut tasks).await?;
    store_config::start(ctx, &mut tasks).await?;
    tasks.log_started();
    Ok(tasks)
}

/// Passivates idle device actors every period (the actors' sweep, run as a task of the broker).
async fn passivate_idle(ctx: Arc<Ctx>, job: Job) {
    job.run(&ctx, || async {
        ctx.actors.passivate_idle();
    })
    .await
}

/// Unix milliseconds to a Postgres-friendly timestamp.
pub fn ts(ms: i64) -> sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc> {
    sqlx::types::chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
