//! `bench actors`: what a resident device actor costs in memory, and how fast they activate.
//!
//! An actor system like the broker's (Postgres ports on a fresh database, passivation far in
//! the future) activates D device actors, each deciding and committing one event: the
//! activation loads the device's state from Postgres as in production. Resident-set growth
//! from before the first activation to after the last, divided by D, is the per-actor cost; it
//! includes everything that grows with D (the store actors, one per ten devices, the address
//! map, allocator slack), so it is an upper bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use tillsync_actors::{ActorConfig, ActorSystem, Incoming};
use tillsync_broker::admin::ports::PgPorts;

use super::env::Env;
use super::report::Report;
use super::{data, ingest};

#[derive(Debug, Clone, Args)]
pub struct ActorsArgs {
    /// Device actors to activate.
    #[arg(long, default_value_t = 100_000)]
    pub devices: usize,
    /// Activations in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Spawn bare ractor actors (no state, no Postgres) instead: the framework's own cost.
    #[arg(long)]
    pub bare: bool,
}

/// An actor with no state and no messages, to measure what ractor itself costs per actor.
struct Bare;

impl ractor::Actor for Bare {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _me: ractor::ActorRef<()>, _args: ()) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
}

async fn bare(args: &ActorsArgs) -> anyhow::Result<Report> {
    let before = rss_bytes()?;
    let started = Instant::now();
    let mut actors = Vec::with_capacity(args.devices);
    for _ in 0..args.devices {
        actors.push(ractor::Actor::spawn(None, Bare, ()).await.map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = rss_bytes()?;
    for (actor, _) in &actors {
        actor.stop(None);
    }
    for (_, join) in actors {
        let _ = join.await;
    }
    let per_actor = after.saturating_sub(before) as f64 / args.devices as f64;
    let mut r = Report::new("actors");
    r.param("devices", args.devices)
        .param("bare", true)
        .number("rss_bytes_per_actor", per_actor)
        .number("activations_per_s", args.devices as f64 / seconds);
    Ok(r)
}

/// Resident set size of this process, from /proc (Linux).
pub fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kb * 1024)
}

pub async fn run(args: ActorsArgs, env: &mut Env) -> anyhow::Result<Report> {
    if args.devices == 0 || args.concurrency == 0 {
        bail!("--devices and --concurrency must be positive");
    }
    if args.bare {
        return bare(&args).await;
    }
    let url = ingest::fresh(env).await?;
    let pool = tillsync_broker::admin::db::connect(&url, 8).await?;
    sqlx::query("SELECT 1").execute(&pool).await?;
    let config = ActorConfig { idle_after: Duration::from_secs(86_400), ..ActorConfig::default() };
    let system =
        ActorSystem::start(config, Arc::new(PgPorts::new(pool.clone()))).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    // Warm the pool and the runtime before the baseline is taken.
    activate(&system, usize::MAX).await?;
    let before = rss_bytes()?;
    let started = Instant::now();
    futures::stream::iter(0..args.devices)
        .map(|i| activate(&system, i))
        .buffer_unordered(args.concurrency)
        .try_collect::<()>()
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let resident = system.resident().saturating_sub(1);
    let after = rss_bytes()?;
    system.shutdown().await;
    pool.close().await;
    if resident != args.devices {
        bail!("{resident} device actors resident after activating {}", args.devices);
    }
    let per_actor = after.saturating_sub(before) as f64 / args.devices as f64;
    let mut r = Report::new("actors");
    r.param("devices", args.devices)
        .param("concurrency", args.concurrency)
        .number("rss_bytes_per_actor", per_actor)
        .number("activations_per_s", args.devices as f64 / seconds)
        .result("rss_before_bytes", before)
        .result("rss_after_bytes", after)
        .number("projected_100k_actors_mib", per_actor * 100_000.0 / (1024.0 * 1024.0));
    Ok(r)
}

/// Activates device `i` (the warm-up device for `usize::MAX`) with one decided event.
async fn activate(system: &ActorSystem, i: usize) -> anyhow::Result<()> {
    let addr = if i == usize::MAX {
        tillsync_schemas::DeviceAddr::new(data::TENANT, "warm", "warm-up")
    } else {
        data::device(i)
    };
    let event_id = uuid::Uuid::now_v7().to_string();
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
    // The actor holds what it decides as committed.
    system.decide(&addr, vec![Incoming { event_id, seq: 1, hash }]).await?;
    Ok(())
}
