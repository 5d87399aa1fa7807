//! `bench scale`: the broker as separate processes sharing the partitions, on a private 3-node
//! NATS cluster whose streams are replicated three times, as docker-compose.yml runs it.
//!
//! Each round drains the same kind of load three times, each into a fresh database and an
//! empty events stream: with one broker process, with two, and with two of which the one
//! holding the most partitions is killed (SIGKILL) once a share of the events is in the
//! ledger. The brokers start first. Once every instance holds its share of the partitions the
//! events are published (as a fleet would, acks in flight) while the brokers' commits are held
//! back by a lock on the ledger; the clock starts when the lock is released and runs until
//! every partition's events consumer is settled. Measured: events per second, CPU per event of
//! the broker processes, the nats-servers and the database's Postgres backends, how long until
//! every partition had an owner after the processes started, and for the kill how long until
//! the survivor held every partition the dead one had (`partition_owners`) and until all was
//! settled. Every drain ends with each unique event in the ledger exactly once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use clap::Args;
use sqlx::PgPool;
use tillsync_broker::config::Config;
use tillsync_schemas::streams as names;
use tillsync_testkit::free_port;

use super::brokers::Brokers;
use super::cpu::{CpuWatch, Group, POSTGRES};
use super::env::{quiet_pool, Env};
use super::ingest::{fresh, verify, wait_left};
use super::report::{round3, Report};
use super::{data, median, owners};

use crate::chaos::procs::{sibling_bin, Proc};

/// Nodes of the private NATS cluster.
pub const NODES: usize = 3;

#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// Messages preloaded into the events stream (duplicates included).
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Devices the events come from (ten per store).
    #[arg(long, default_value_t = 200)]
    pub devices: usize,
    /// Share of the messages that are re-sent copies of earlier events.
    #[arg(long, default_value_t = 0.1)]
    pub dup_ratio: f64,
    /// Partitions the brokers run with (`TILLSYNC_PARTITIONS`).
    #[arg(long, default_value_t = tillsync_schemas::partition::DEFAULT_PARTITIONS)]
    pub partitions: u16,
    /// Lease TTL the brokers run with (`TILLSYNC_LEASE_TTL_S`), seconds; a takeover waits for it.
    #[arg(long, default_value_t = 5)]
    pub lease_ttl_s: u64,
    /// Share of the events settled when one of the two brokers is killed.
    #[arg(long, default_value_t = 0.5)]
    pub kill_at: f64,
    /// Rounds of (one broker, two, two with a kill); the medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Keep the brokers' logs (else they are kept only when something went wrong).
    #[arg(long)]
    pub keep_logs: bool,
}

/// One drain's figures.
struct Drain {
    /// From the release of the brokers' commits until every message is settled.
    seconds: f64,
    /// How long publishing took (while the commits were held).
    publish_s: f64,
    /// Microseconds of CPU per message, by process group.
    cpu: BTreeMap<&'static str, f64>,
    /// From the processes' start until every partition had an owner.
    owned_s: Option<f64>,
    /// Partitions each instance held at the end, the largest share first.
    split: Vec<usize>,
    /// Every instance held its share when publishing began (else it began after a minute).
    shared_out: bool,
    /// Brokers that exited by themselves and were started again.
    restarts: u32,
    takeover: Option<Takeover>,
}

/// The kill: how many partitions the dead instance held, how long until the survivor held
/// them, and until every message was settled (the dead instance's unacked messages are
/// redelivered once their ack wait, `TILLSYNC_ACK_WAIT_S`, runs out).
#[derive(Clone, Copy)]
struct Takeover {
    partitions: usize,
    seconds: f64,
    drained_s: f64,
}

pub async fn run(args: ScaleArgs, env: &mut Env) -> anyhow::Result<Report> {
    if args.events == 0 || args.devices == 0 || args.runs == 0 || args.partitions == 0 {
        bail!("--events, --devices, --runs and --partitions must be positive");
    }
    if !(0.0..1.0).contains(&args.kill_at) {
        bail!("--kill-at is a share of the events, in [0, 1)");
    }
    let bin = sibling_bin("tillsync-broker")?;
    let js = data::js(env.nats().await?);
    env.ensure_empty(&js, &config(env, &args, "postgres://unused/unused")).await?;
    // Each drain's broker logs in a directory of their own, kept when something went wrong.
    let logs = std::env::temp_dir().join(format!("tillsync-bench-scale-{}", std::process::id()));
    let mut kept = args.keep_logs;
    let (mut one, mut two, mut killed) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.runs {
        for (brokers, kill, runs) in [(1, false, &mut one), (2, false, &mut two), (2, true, &mut killed)] {
            let what = match (brokers, kill) {
                (1, _) => "1 broker",
                (_, false) => "2 brokers",
                _ => "2 brokers, one killed",
            };
            let dir = logs.join(format!("round-{round}-{brokers}{}", if kill { "-kill" } else { "" }));
            std::fs::create_dir_all(&dir)?;
            let d = drain(env, &js, &bin, &args, brokers, kill, &dir)
                .await
                .with_context(|| format!("{what} (broker logs in {})", dir.display()))?;
            kept |= !d.shared_out;
            eprintln!(
                "round {round}: {what}: {:.0} events/s (published in {:.2} s), all partitions owned after {}, split {:?}{}",
                args.events as f64 / d.seconds,
                d.publish_s,
                d.owned_s.map_or_else(|| "-".into(), |s| format!("{s:.2} s")),
                d.split,
                d.takeover
                    .map(|t| format!(
                        ", {} partitions taken over in {:.2} s, all settled {:.2} s after the kill",
                        t.partitions, t.seconds, t.drained_s
                    ))
                    .unwrap_or_default()
            );
            runs.push(d);
        }
    }
    if kept {
        eprintln!("broker logs kept in {}", logs.display());
    } else {
        let _ = std::fs::remove_dir_all(&logs);
    }
    Ok(report(&args, &one, &two, &killed))
}

/// One drain: a fresh database and an empty events stream, `brokers` processes started and
/// the partitions shared out among them, then the events published and drained (and one
/// broker killed on the way, when `kill`).
async fn drain(
    env: &mut Env,
    js: &jetstream::Context,
    bin: &Path,
    args: &ScaleArgs,
    brokers: usize,
    kill: bool,
    logs: &Path,
) -> anyhow::Result<Drain> {
    let url = fresh(env).await?;
    reset(js).await?;
    // New event ids each time, so JetStream's duplicate window lets every one in.
    let msgs = data::generate(args.events, args.devices, args.dup_ratio, args.seed);
    let unique = data::unique_count(&msgs);
    // One connection holds the ledger lock while the others look.
    let pool = quiet_pool(&url, 3).await?;
    let spawned = Instant::now();
    let procs = (0..brokers).map(|i| broker(env, bin, args, &url, i, logs)).collect::<anyhow::Result<_>>()?;
    let procs = Brokers::start(procs)?;
    let outcome = measure(env, js, &pool, &url, args, &procs, kill, spawned, msgs).await;
    // Read before the brokers stop: a broker that stops hands its partitions back.
    let split = owners::split(&pool).await;
    let restarts = procs.restarts();
    procs.stop();
    pool.close().await;
    if outcome.is_err() {
        eprintln!("{}", tails(logs, brokers));
    }
    let mut d = outcome?;
    verify(&url, unique).await?;
    (d.split, d.restarts) = (split?, restarts);
    Ok(d)
}

/// An empty events stream with no broker consumers, and no lease left from the last drain.
/// The stream denies purges (docs/security.md), so it is deleted, consumers with it; the
/// brokers started next create it again.
async fn reset(js: &jetstream::Context) -> anyhow::Result<()> {
    if js.get_stream(names::EVENTS).await.is_ok() {
        js.delete_stream(names::EVENTS).await.map_err(|e| anyhow::anyhow!("deleting {}: {e}", names::EVENTS))?;
    }
    let _ = js.delete_key_value(names::PARTITIONS_BUCKET).await;
    Ok(())
}

/// Waits for the partitions to be owned and shared out, then publishes and times the drain.
#[allow(clippy::too_many_arguments)]
async fn measure(
    env: &Env,
    js: &jetstream::Context,
    pool: &PgPool,
    url: &str,
    args: &ScaleArgs,
    procs: &Brokers,
    kill: bool,
    spawned: Instant,
    msgs: Vec<data::Msg>,
) -> anyhow::Result<Drain> {
    let owned_s = owners::all_owned(pool, args.partitions, spawned).await?;
    // Events flow only once every instance holds its share, so two instances drain as two.
    let shared_out = owners::shared_out(pool, procs.names().len(), args.partitions).await?;
    if !shared_out {
        eprintln!("the partitions were not shared out within 60 s; publishing anyway");
    }
    let unique = data::unique_count(&msgs) as i64;
    // The drain starts with every event in the stream, as `bench ingest`'s does: while they
    // are published the brokers' commits wait on a lock on the ledger, so neither the
    // publisher's pace nor its CPU is in the figures.
    let mut held = pool.begin().await?;
    sqlx::query("LOCK TABLE processed_events IN EXCLUSIVE MODE").execute(&mut *held).await?;
    let published = Instant::now();
    data::preload(js, &msgs).await?;
    let publish_s = published.elapsed().as_secs_f64();
    let groups = vec![
        Group { name: "broker", pids: procs.pids(), started_now: false },
        Group { name: "nats", pids: env.nats_pids(), started_now: false },
    ];
    let backends = if env.postgres_is_local() { Some(quiet_pool(url, 1).await?) } else { None };
    let watch = CpuWatch::start(groups, backends);
    let started = Instant::now();
    held.rollback().await?;
    let mut takeover = None;
    if kill {
        wait_ledger(pool, (args.kill_at * unique as f64) as i64).await?;
        takeover = Some(kill_one(pool, procs).await?);
    }
    // Every unique event in the ledger, then every consumer settled: a consumer recreated at
    // its ack floor can report nothing pending for a moment while its new leader counts, and
    // the consumers alone would then call the drain done early.
    wait_ledger(pool, unique).await?;
    wait_left(js, pool, 0).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = watch.stop(args.events as f64).await;
    let takeover =
        takeover.map(|(killed, t): (Instant, Takeover)| Takeover { drained_s: killed.elapsed().as_secs_f64(), ..t });
    Ok(Drain { seconds, publish_s, cpu, owned_s, split: Vec::new(), shared_out, restarts: 0, takeover })
}

/// Waits until the ledger holds at least `events` events; fails when it stops growing for a minute.
async fn wait_ledger(pool: &PgPool, events: i64) -> anyhow::Result<()> {
    let mut last = (-1, Instant::now());
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events").fetch_one(pool).await?;
        if n >= events {
            return Ok(());
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!("the ledger stayed at {n} events for a minute (waiting for {events})");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The bench's broker configuration with the partitions and lease TTL asked for.
fn config(env: &Env, args: &ScaleArgs, database_url: &str) -> Config {
    let mut c = env.broker_config(database_url);
    (c.partitions, c.lease_ttl_s) = (args.partitions, args.lease_ttl_s);
    c
}

/// Broker process `i` (`broker-<i+1>`), connected to node `i % 3` of the cluster.
fn broker(env: &Env, bin: &Path, args: &ScaleArgs, url: &str, i: usize, logs: &Path) -> anyhow::Result<Proc> {
    let mut c = config(env, args, url);
    c.nats_url = env.nats_urls[i % env.nats_urls.len()].clone();
    c.http_addr = format!("127.0.0.1:{}", free_port()?).parse()?;
    c.instance_id = Some(format!("broker-{}", i + 1));
    Ok(Proc::new(&format!("broker-{}", i + 1), bin, Vec::new(), c.to_env(), logs))
}

/// Kills (SIGKILL) the broker holding the most partitions, and times until the other holds
/// every one of them. Returns when it killed, too.
async fn kill_one(pool: &PgPool, procs: &Brokers) -> anyhow::Result<(Instant, Takeover)> {
    let owners = owners::owners(pool).await?;
    let (victim, held) = owners
        .iter()
        .max_by_key(|(_, ps)| ps.len())
        .map(|(v, ps)| (v.clone(), ps.clone()))
        .context("no partition has an owner to kill")?;
    let survivor = procs.names().into_iter().find(|n| *n != victim).context("no other broker")?;
    let killed = Instant::now();
    anyhow::ensure!(procs.kill9(&victim), "the owner {victim} is not a broker of this run");
    eprintln!("killed {victim} holding {} partitions", held.len());
    let deadline = killed + Duration::from_secs(120);
    loop {
        let now = owners::owners_of(pool, &held).await?;
        if now.iter().all(|o| o.as_deref() == Some(survivor.as_str())) {
            let seconds = killed.elapsed().as_secs_f64();
            return Ok((killed, Takeover { partitions: held.len(), seconds, drained_s: 0.0 }));
        }
        if Instant::now() > deadline {
            bail!("{survivor} did not take over {victim}'s partitions within 120 s (owners now {now:?})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last lines of each broker's log, to show with an error.
fn tails(logs: &Path, brokers: usize) -> String {
    let mut out = String::from("broker logs end:");
    for i in 1..=brokers {
        let text = std::fs::read_to_string(logs.join(format!("broker-{i}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out += &format!("\n--- broker-{i}\n{}", lines[lines.len().saturating_sub(15)..].join("\n"));
    }
    out
}

fn report(args: &ScaleArgs, one: &[Drain], two: &[Drain], killed: &[Drain]) -> Report {
    let rate = |ds: &[Drain]| median(&ds.iter().map(|d| args.events as f64 / d.seconds).collect::<Vec<_>>());
    let cpu = |ds: &[Drain], group: &str| {
        median(&ds.iter().map(|d| d.cpu.get(group).copied().unwrap_or(0.0)).collect::<Vec<_>>())
    };
    let owned = |ds: &[Drain]| median(&ds.iter().filter_map(|d| d.owned_s).collect::<Vec<_>>());
    let takeovers: Vec<Takeover> = killed.iter().filter_map(|d| d.takeover).collect();
    let mut r = Report::new("scale");
    r.param("events", args.events)
        .param("devices", args.devices)
        .param("dup_ratio", args.dup_ratio)
        .param("partitions", args.partitions)
        .param("lease_ttl_s", args.lease_ttl_s)
        .param("nats_nodes", NODES)
        .param("runs", args.runs);
    let (r1, r2) = (rate(one), rate(two));
    let publish = median(&one.iter().chain(two).map(|d| d.publish_s).collect::<Vec<_>>());
    r.number("events_per_s_1_broker", r1)
        .number("events_per_s_2_brokers", r2)
        .number("speedup_2_vs_1", r2 / r1.max(1e-9))
        .number("publish_s", publish);
    for (key, ds, group) in [
        ("cpu_us_per_event_broker_1", one, "broker"),
        ("cpu_us_per_event_nats_1", one, "nats"),
        ("cpu_us_per_event_postgres_1", one, POSTGRES),
        ("cpu_us_per_event_broker_2", two, "broker"),
        ("cpu_us_per_event_nats_2", two, "nats"),
        ("cpu_us_per_event_postgres_2", two, POSTGRES),
    ] {
        r.number(key, cpu(ds, group));
    }
    r.number("all_owned_s_1_broker", owned(one)).number("all_owned_s_2_brokers", owned(two));
    if let Some(d) = two.last() {
        r.result("split_2_brokers", d.split.iter().map(usize::to_string).collect::<Vec<_>>().join("/"));
    }
    let of = |f: fn(&Takeover) -> f64| median(&takeovers.iter().map(f).collect::<Vec<_>>());
    r.number("takeover_s", of(|t| t.seconds))
        .number("taken_over_partitions", of(|t| t.partitions as f64))
        .number("settled_after_kill_s", of(|t| t.drained_s))
        .number("events_per_s_2_brokers_one_killed", rate(killed));
    let all: Vec<&Drain> = one.iter().chain(two).chain(killed).collect();
    r.result("broker_restarts", all.iter().map(|d| d.restarts).sum::<u32>());
    if all.iter().any(|d| !d.shared_out) {
        r.note("some drains began before every instance held its share of the partitions (see stderr)");
    }
    if args.runs > 1 {
        r.result("takeover_runs_s", takeovers.iter().map(|t| round3(t.seconds)).collect::<Vec<_>>());
    }
    r.note(format!(
        "{NODES}-node NATS cluster, streams R3; brokers are separate processes; one killed at {:.0} % settled",
        args.kill_at * 100.0
    ))
    .note("events/s and CPU from the release of the brokers' commits, held while the events were published")
    .note("CPU: utime+stime of the broker processes, the nats-servers and the bench database's Postgres backends (not Postgres' background writers), per message");
    r
}
