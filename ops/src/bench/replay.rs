//! `bench replay`: rebuilding a fresh database from the events stream.
//!
//! This drives `tillsync_broker::ingest::process` (the code path `tillsync replay` uses)
//! over an ordered consumer, with no acks and no watermarks. Devices are split over `--lanes`
//! independent lanes, each committing its own batches, so one lane's commit overlaps another's
//! decoding and deciding; a device always stays in one lane, so its events keep their order.
//! `--compare` also times the live broker on the same data in the same invocation.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use clap::Args;
use futures::StreamExt;
use tillsync_actors::{ActorConfig, ActorSystem};
use tillsync_broker::ingest::{self as broker_ingest, Engine, Outcome, Raw};
use tillsync_broker::ports::PgPorts;
use tillsync_broker::tenants::Tenants;
use tillsync_schemas::streams as names;
use tillsync_schemas::subject::Family;
use tokio::sync::mpsc;

use super::env::Env;
use super::report::Report;
use super::{data, ingest, Measured};

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Messages in the stream to replay (duplicates included).
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    #[arg(long, default_value_t = 1_000)]
    pub devices: usize,
    #[arg(long, default_value_t = 0.1)]
    pub dup_ratio: f64,
    /// Independent lanes of devices committing concurrently (1: one batch at a time, as
    /// `tillsync replay` runs today).
    #[arg(long, default_value_t = 8)]
    pub lanes: usize,
    /// Events per replay transaction.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Also time the live broker on the same data and report the ratio.
    #[arg(long)]
    pub compare: bool,
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
        let live = ingest::broker_drain(env, &js, args.events, unique).await?;
        eprintln!("live   {:.0} events/s", live.rate());
        r.number("live_events_per_s", live.rate()).number("ratio_vs_live", replay.rate() / live.rate());
    }
    Ok(r)
}

fn lane_of(subject: &str, lanes: usize) -> usize {
    let mut h = DefaultHasher::new();
    subject.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

struct Shared {
    pool: sqlx::PgPool,
    actors: ActorSystem,
    tenants: Tenants,
}

/// Replays the first `total` messages of the stream into the database at `url`.
pub async fn rebuild(
    js: &async_nats::jetstream::Context,
    url: &str,
    total: usize,
    lanes: usize,
    batch: usize,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let pool = tillsync_broker::db::connect(url, (lanes as u32 + 2).max(4)).await?;
    let actors = ActorSystem::start(ActorConfig::default(), Arc::new(PgPorts::new(pool.clone())))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let shared = Arc::new(Shared { pool, actors, tenants: Tenants::new(false) });
    let stream = js.get_stream(names::EVENTS).await?;
    let mut messages = stream
        .create_consumer(OrderedConfig {
            filter_subject: Family::Events.all_subjects(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;

    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..lanes {
        let (tx, rx) = mpsc::channel::<Raw>(batch * 4);
        senders.push(tx);
        workers.push(tokio::spawn(lane(shared.clone(), rx, batch)));
    }
    for _ in 0..total {
        let m = messages.next().await.context("ordered consumer ended")??;
        let raw = Raw {
            stream_seq: m.info().map(|i| i.stream_sequence).unwrap_or(0),
            subject: m.subject.to_string(),
            payload: m.payload.clone(),
        };
        let lane = lane_of(&raw.subject, lanes);
        senders[lane].send(raw).await.map_err(|_| anyhow::anyhow!("replay lane stopped"))?;
    }
    drop(senders);
    let mut quarantined = 0;
    for w in workers {
        quarantined += w.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    if quarantined > 0 {
        bail!("{quarantined} messages quarantined during replay");
    }
    if let Ok(s) = Arc::try_unwrap(shared) {
        s.actors.shutdown().await;
        s.pool.close().await;
    }
    Ok(Measured { messages: total, seconds })
}

/// One lane: batches what arrives (waiting at most 2 ms for more) and processes it.
async fn lane(shared: Arc<Shared>, mut rx: mpsc::Receiver<Raw>, batch: usize) -> anyhow::Result<usize> {
    let engine = Engine { pool: &shared.pool, actors: &shared.actors, tenants: &shared.tenants };
    let mut quarantined = 0;
    while let Some(first) = rx.recv().await {
        let mut raws = vec![first];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(2);
        while raws.len() < batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => raws.push(r),
                Ok(None) | Err(_) => break,
            }
        }
        let report = broker_ingest::process(&engine, &raws).await?;
        quarantined += report.outcomes.iter().filter(|o| matches!(o, Outcome::Quarantined(_))).count();
    }
    Ok(quarantined)
}
