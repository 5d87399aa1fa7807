//! `bench ingest`: how fast the broker drains a preloaded stream into Postgres, next to a
//! minimal pipeline and a naive one on the same data, in the same invocation.
//!
//! Each pipeline gets a fresh database and its own consumer from the first message of the
//! stream, and starts after a `CHECKPOINT` so none inherits another's dirty pages. Timing
//! starts before the pipeline connects and ends when every message is acked (the broker:
//! its partition consumers have nothing pending or unacked; the others: the last ack is
//! flushed).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use clap::Args;
use sqlx::PgPool;
use tillsync_broker::Broker;
use tillsync_schemas::streams as names;

use super::env::Env;
use super::report::Report;
use super::{baseline, data, diag, median, naive, Measured};
use tillsync_ops::partitions;

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// Messages preloaded into the events stream (duplicates included).
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Devices the events come from.
    #[arg(long, default_value_t = 1_000)]
    pub devices: usize,
    /// Share of the messages that are re-sent copies of earlier events.
    #[arg(long, default_value_t = 0.1)]
    pub dup_ratio: f64,
    /// Events the naive pipeline processes (capped at --events).
    #[arg(long, default_value_t = 5_000)]
    pub naive_sample: usize,
    /// Rounds of (pipeline, broker, naive); the medians are reported.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Run only these pipelines (for profiling one at a time); ratios need both sides.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "pipeline,broker,naive")]
    pub only: Vec<Which>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Pipeline,
    Broker,
    Naive,
}

pub async fn run(args: IngestArgs, env: &mut Env) -> anyhow::Result<Report> {
    if args.events == 0 || args.devices == 0 || args.runs == 0 {
        bail!("--events, --devices and --runs must be positive");
    }
    let client = env.nats().await?;
    let js = data::js(client.clone());
    env.ensure_empty_streams(&js).await?;
    let msgs = data::generate(args.events, args.devices, args.dup_ratio, args.seed);
    let unique = data::unique_count(&msgs);
    let t = Instant::now();
    data::preload(&js, &msgs).await?;
    eprintln!("preloaded {} messages ({unique} unique) in {:.1} s", msgs.len(), t.elapsed().as_secs_f64());
    drop(msgs);
    let batch = env.broker_config("postgres://unused/unused").batch_size;
    let sample = args.naive_sample.min(args.events);

    let (mut broker, mut pipeline, mut naive_runs) = (Vec::new(), Vec::new(), Vec::new());
    let mut broker_cpu = Vec::new();
    for round in 1..=args.runs {
        if args.only.contains(&Which::Pipeline) {
            let url = fresh(env).await?;
            eprintln!("round {round}: pipeline draining...");
            let p = baseline::run(&client, &js, &url, args.events, batch).await.context("baseline pipeline")?;
            verify(&url, unique).await.context("baseline pipeline")?;
            eprintln!("round {round}: pipeline {:.0} events/s", p.rate());
            pipeline.push(p.rate());
        }
        if args.only.contains(&Which::Broker) {
            let (b, cpu) = broker_drain(env, &js, args.events, unique).await?;
            eprintln!("round {round}: broker   {:.0} events/s", b.rate());
            broker.push(b.rate());
            broker_cpu.extend(cpu);
        }
        if args.only.contains(&Which::Naive) {
            let url = fresh(env).await?;
            eprintln!("round {round}: naive draining...");
            let n = naive::run(&client, &js, &url, sample).await.context("naive pipeline")?;
            eprintln!("round {round}: naive    {:.0} events/s", n.rate());
            naive_runs.push(n.rate());
        }
    }
    let mut r = Report::new("ingest");
    r.param("events", args.events)
        .param("devices", args.devices)
        .param("dup_ratio", args.dup_ratio)
        .param("unique_events", unique)
        .param("batch_size", batch)
        .param("naive_sample", sample)
        .param("runs", args.runs);
    let (b, p, n) = (median(&broker), median(&pipeline), median(&naive_runs));
    for (key, runs, value) in [
        ("events_per_s", &broker, b),
        ("baseline_pipeline_events_per_s", &pipeline, p),
        ("naive_events_per_s", &naive_runs, n),
    ] {
        if !runs.is_empty() {
            r.number(key, value);
        }
    }
    if !broker.is_empty() && !pipeline.is_empty() {
        r.number("ratio_vs_pipeline", b / p);
    }
    if !broker.is_empty() && !naive_runs.is_empty() {
        r.number("ratio_vs_naive", b / n);
    }
    if args.runs > 1 {
        for (key, runs) in [
            ("broker_runs_events_per_s", &broker),
            ("pipeline_runs_events_per_s", &pipeline),
            ("naive_runs_events_per_s", &naive_runs),
        ] {
            if !runs.is_empty() {
                r.result(key, runs.iter().map(|v| super::report::round3(*v)).collect::<Vec<_>>());
            }
        }
    }
    // The CPU split of the broker's drains (the median round's), to set against a live run's.
    if let Some(cpu) = median_by(&broker_cpu, |c| c.bench + c.rest + c.nats.unwrap_or(0.0)) {
        cpu.report(&mut r);
    }
    if sample < 5_000 && !naive_runs.is_empty() {
        r.note(format!("naive sample is {sample} events (all there are); use --events >= 5000 for a real figure"));
    }
    Ok(r)
}

/// The element whose `key` is the median (the lower middle one for an even count).
fn median_by<T: Copy>(xs: &[T], key: impl Fn(&T) -> f64) -> Option<T> {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// A fresh database with the bench tenant, after a checkpoint.
pub async fn fresh(env: &mut Env) -> anyhow::Result<String> {
    let url = env.fresh_database().await?;
    let pool = super::env::quiet_pool(&url, 1).await?;
    data::add_tenant(&pool).await?;
    checkpoint(&pool).await;
    pool.close().await;
    Ok(url)
}

/// Best effort (needs superuser): flushes dirty pages now rather than during a measurement.
pub async fn checkpoint(pool: &PgPool) {
    if let Err(error) = sqlx::query("CHECKPOINT").execute(pool).await {
        tracing::debug!(%error, "CHECKPOINT refused; measuring without it.");
    }
}

/// Every unique event is in the ledger exactly once and nothing was quarantined.
pub async fn verify(database_url: &str, unique: usize) -> anyhow::Result<()> {
    let pool = super::env::quiet_pool(database_url, 1).await?;
    let ledger: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events").fetch_one(&pool).await?;
    let quarantined: i64 = sqlx::query_scalar("SELECT count(*) FROM quarantine").fetch_one(&pool).await?;
    pool.close().await;
    if ledger != unique as i64 || quarantined != 0 {
        bail!("after draining: {ledger} ledger rows (want {unique}), {quarantined} quarantined (want 0)");
    }
    Ok(())
}

/// Starts an in-process broker on a fresh database and times it draining the whole stream;
/// also returns where the CPU went meanwhile, per message.
pub async fn broker_drain(
    env: &mut Env,
    js: &jetstream::Context,
    total: usize,
    unique: usize,
) -> anyhow::Result<(Measured, Option<diag::PerEvent>)> {
    let url = fresh(env).await?;
    let config = env.broker_config(&url);
    // New broker consumers, so this broker starts from the first message like the others.
    partitions::delete(js, names::EVENTS, names::BROKER_EVENTS_CONSUMER).await?;
    tillsync_broker::admin::streams::ensure(js, &config).await?;
    let pool = super::env::quiet_pool(&url, 1).await?;
    let before = diag::Batches::now();
    let cpu_before = diag::CpuSplit::now(env.nats_pid());
    let started = Instant::now();
    let broker = Broker::start(config).await.context("broker start")?;
    eprintln!("broker started in {:.0} ms (counted in its drain time)", started.elapsed().as_secs_f64() * 1e3);
    let drained = wait_left(js, &pool, 0).await;
    pool.close().await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_before.zip(diag::CpuSplit::now(env.nats_pid())).map(|(b, a)| a.per_event_since(&b, total as f64));
    let (mean_batch, mean_apply_ms) = diag::Batches::now().since(&before);
    eprintln!("broker: {mean_batch:.0} events per batch, {mean_apply_ms:.1} ms from batch taken to message acked");
    super::stop_broker(broker).await;
    drained?;
    verify(&url, unique).await.context("broker")?;
    Ok((Measured { messages: total, seconds }, cpu))
}

/// Waits until the broker's events consumers (every partition's, on the database at `pool`)
/// hold at most `at_most` messages pending or unacked; fails when that stops moving for a
/// minute (a broker that never starts included).
pub async fn wait_left(js: &jetstream::Context, pool: &PgPool, at_most: u64) -> anyhow::Result<()> {
    let stall = Duration::from_secs(60);
    let mut last = (None, Instant::now());
    let mut count = None;
    loop {
        // The broker records its partition count at start.
        if count.is_none() {
            count = partitions::count(pool).await?;
        }
        let left = match count {
            Some(p) => partitions::events_backlog(js, p).await?.map(|b| b.lag()),
            None => None,
        };
        if left.is_some_and(|l| l <= at_most) {
            return Ok(());
        }
        if left != last.0 {
            last = (left, Instant::now());
        } else if last.1.elapsed() > stall {
            match left {
                Some(l) => bail!("no progress for {stall:?}: {l} messages still pending or unacked"),
                None => bail!("for {stall:?} the broker has not created a consumer for every partition"),
            }
        }
        // Each look lists every partition's consumer: often enough for a drain of seconds,
        // rarely enough not to load nats-server.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
