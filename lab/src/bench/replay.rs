//! `bench replay`: rebuilding a fresh database from the events stream.
//!
//! This drives the lanes of `tillsync replay` (`tillsync_ops::replay::lanes`, over
//! `tillsync_broker::admin::ingest::process`) from an ordered consumer, with no acks and no
//! watermarks. Stores are split over `--lanes` lanes, each committing its own batches, so one
//! lane's commit overlaps another's decoding and deciding; a store always stays in one lane,
//! so each device's events keep their order.
//! `--compare` also times the live broker on the same data in the same invocation.

use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::Args;
use tillsync_broker::admin::ingest::EventOutcome;
use tillsync_schemas::subject::Family;
use tokio_util::sync::CancellationToken;

use super::env::Env;
use super::report::Report;
use super::{data, ingest, Measured};
use tillsync_ops::replay::lanes::{self, Shared};
use tillsync_ops::replay::source::{Source, Start};

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Messages in the stream to replay (duplicates included).
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Devices the events come from.
    #[arg(long, default_value_t = 1_000)]
    pub devices: usize,
    /// Share of the messages that are re-sent copies of earlier events.
    #[arg(long, default_value_t = 0.1)]
    pub dup_ratio: f64,
    /// Lanes of stores committing concurrently (as `tillsync replay --lanes`; 1: one batch at
    /// a time).
    #[arg(long, default_value_t = 4)]
    pub lanes: usize,
    /// Events per replay transaction (as `tillsync replay --batch`).
    #[arg(long, default_value_t = 2_000)]
    pub batch: usize,
    /// Also time the live broker on the same data and report the ratio.
    #[arg(long)]
    pub compare: bool,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

pub async fn run(args: ReplayArgs, env: &mut Env) -> anyhow::Result<Report> {
    if args.events == 0 || args.devices == 0 || args.lanes == 0 || args.batch == 0 {
        bail!("--events, --devices, --lanes and --batch must be positive");
    }
    let client = env.nats().await?;
    let js = data::js(client.clone());
    env.ensure_empty_streams(&js).await?;
    let msgs = data::generate(args.events, args.devices, args.dup_ratio, args.seed);
    let unique = data::unique_count(&msgs);
    data::preload(&js, &msgs).await?;
    drop(msgs);

    let url = ingest::fresh(env).await?;
    let replay = rebuild(&js, &url, args.events, args.lanes, args.batch).await?;
    ingest::verify(&url, unique).await.context("replay")?;
    eprintln!("replay {:.0} events/s", replay.rate());

    let mut r = Report::new("replay");
    r.param("events", args.events)
        .param("devices", args.devices)
        .param("dup_ratio", args.dup_ratio)
        .param("unique_events", unique)
        .param("lanes", args.lanes)
        .param("batch", args.batch)
        .number("events_per_s", replay.rate())
        .number("seconds", replay.seconds);
    if args.compare {
        let (live, _) = ingest::broker_drain(env, &js, args.events, unique).await?;
        eprintln!("live   {:.0} events/s", live.rate());
        r.number("live_events_per_s", live.rate()).number("ratio_vs_live", replay.rate() / live.rate());
    }
    Ok(r)
}

/// Replays the first `total` messages of the stream into the database at `url`, through the
/// lanes and connection settings of `tillsync replay` (without its per-batch progress row).
pub async fn rebuild(
    js: &async_nats::jetstream::Context,
    url: &str,
    total: usize,
    lanes: usize,
    batch: usize,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let pool = tillsync_ops::db::rebuild_pool(url, None, lanes as u32 + 2).await?;
    let shared = Shared::start(pool.clone()).await?;
    let src = Source::open(js, &Family::Events.all_subjects(), Start::All).await?;
    let (mut done, reader) = lanes::start(shared.clone(), src, lanes, batch, CancellationToken::new());
    let (mut messages, mut quarantined) = (0, 0);
    while let Some(d) = done.recv().await {
        let d = d?;
        messages += d.report.outcomes.len();
        quarantined += d.report.outcomes.iter().filter(|o| matches!(o, EventOutcome::Quarantined(_))).count();
    }
    reader.await??;
    let seconds = started.elapsed().as_secs_f64();
    if messages != total {
        bail!("replayed {messages} messages, expected {total}");
    }
    if quarantined > 0 {
        bail!("{quarantined} messages quarantined during replay");
    }
    shared.stop().await;
    pool.close().await;
    Ok(Measured { messages, seconds })
}
