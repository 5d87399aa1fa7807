//! `bench scale`: the broker as separate processes sharing the partitions, on a private 3-node
//! NATS cluster whose streams are replicated three times, as docker-compose.yml runs it.
//!
//! One stream of events is preloaded once. Each round then drains it from its first message
//! into a fresh database three times: with one broker process, with two, and with two of which
//! one is killed (SIGKILL) once a share of the events is settled. Measured: events per second
//! from the processes' start until every partition's events consumer is settled; CPU per event
//! of the broker processes, the nats-servers and the database's Postgres backends; how long
//! until every partition had an owner; and for the kill, how long until the survivor held every
//! partition the dead one had (`partition_owners`). Every drain ends with each unique event in
//! the ledger exactly once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use clap::Args;
use sqlx::PgPool;
use tillsync_schemas::streams as names;

use super::cpu::{CpuWatch, Group, POSTGRES};
use super::env::{quiet_pool, Env};
use super::ingest::{fresh, verify, wait_left};
use super::report::{round3, Report};
use super::{data, median};
use crate::chaos::procs::{free_port, sibling_bin, Proc};
use crate::partitions;

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
}

/// One drain's figures.
struct Drain {
    seconds: f64,
    /// Microseconds of CPU per message, by process group.
    cpu: BTreeMap<&'static str, f64>,
    /// From the processes' start until every partition had an owner.
    owned_s: Option<f64>,
    /// Partitions each instance held at the end, the largest share first.
    split: Vec<usize>,
    takeover: Option<Takeover>,
}

/// The kill: how many partitions the dead instance held and how long until the survivor held them.
#[derive(Clone, Copy)]
struct Takeover {
    partitions: usize,
    seconds: f64,
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
    env.ensure_empty_streams(&js).await?;
    let msgs = data::generate(args.events, args.devices, args.dup_ratio, args.seed);
    let unique = data::unique_count(&msgs);
    let t = Instant::now();
    data::preload(&js, &msgs).await?;
    eprintln!("preloaded {} messages ({unique} unique) in {:.1} s", msgs.len(), t.elapsed().as_secs_f64());
    drop(msgs);
    let logs = tempfile::TempDir::new()?;
    let (mut one, mut two, mut killed) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.runs {
        for (brokers, kill, runs) in [(1, false, &mut one), (2, false, &mut two), (2, true, &mut killed)] {
            let what = if kill {
                "2 brokers, one killed"
            } else if brokers == 1 {
                "1 broker"
            } else {
                "2 brokers"
            };
            eprintln!("round {round}: {what} draining...");
            let d = drain(env, &js, &bin, &args, brokers, kill, unique, logs.path()).await.context(what)?;
            eprintln!(
                "round {round}: {what}: {:.0} events/s, all partitions owned after {}, split {:?}{}",
                args.events as f64 / d.seconds,
                d.owned_s.map_or_else(|| "-".into(), |s| format!("{s:.2} s")),
                d.split,
                d.takeover
                    .map(|t| format!(", {} partitions taken over in {:.2} s", t.partitions, t.seconds))
                    .unwrap_or_default()
            );
            runs.push(d);
        }
    }
    Ok(report(&args, unique, &one, &two, &killed))
}

#[allow(clippy::too_many_arguments)]
async fn drain(
    env: &mut Env,
    js: &jetstream::Context,
    bin: &Path,
    args: &ScaleArgs,
    brokers: usize,
    kill: bool,
    unique: usize,
    logs: &Path,
) -> anyhow::Result<Drain> {
    let url = fresh(env).await?;
    // Every partition starts again from the first message, with no lease left from before.
    partitions::delete(js, names::EVENTS, names::BROKER_EVENTS_CONSUMER).await?;
    let _ = js.delete_key_value(names::PARTITIONS_BUCKET).await;
    let pool = quiet_pool(&url, 2).await?;
    let started = Instant::now();
    let mut procs = Vec::new();
    for i in 0..brokers {
        let mut p = broker(env, bin, args, &url, i, logs)?;
        p.start()?;
        procs.push(p);
    }
    let groups = vec![
        Group {
            name: "broker",
            pids: procs.iter().filter_map(|p| p.pid()).map(|p| p as u32).collect(),
            started_now: true,
        },
        Group { name: "nats", pids: env.nats_pids(), started_now: false },
    ];
    let backends = if env.postgres_is_local() { Some(quiet_pool(&url, 1).await?) } else { None };
    let watch = CpuWatch::start(groups, backends);
    let outcome = measure(js, &pool, args, &mut procs, kill, started).await;
    let cpu = watch.stop(args.events as f64).await;
    // Read before the brokers stop: a broker that stops hands its partitions back.
    let split = split(&pool).await;
    for p in &mut procs {
        p.terminate(Duration::from_secs(10));
    }
    pool.close().await;
    if outcome.is_err() {
        eprintln!("{}", tails(logs, brokers));
    }
    let (seconds, owned_s, takeover) = outcome?;
    verify(&url, unique).await?;
    Ok(Drain { seconds, cpu, owned_s, split: split?, takeover })
}

/// Waits for all partitions owned, kills one broker when asked, then waits for the drain.
async fn measure(
    js: &jetstream::Context,
    pool: &PgPool,
    args: &ScaleArgs,
    procs: &mut [Proc],
    kill: bool,
    started: Instant,
) -> anyhow::Result<(f64, Option<f64>, Option<Takeover>)> {
    let owned_s = all_owned(pool, args.partitions, started).await?;
    let mut takeover = None;
    if kill {
        let left = ((1.0 - args.kill_at) * args.events as f64) as u64;
        wait_left(js, pool, left).await?;
        takeover = Some(kill_one(pool, procs).await?);
    }
    wait_left(js, pool, 0).await?;
    Ok((started.elapsed().as_secs_f64(), owned_s, takeover))
}

/// A broker process on node `i % 3` of the cluster, configured as the bench's broker is.
fn broker(env: &Env, bin: &Path, args: &ScaleArgs, url: &str, i: usize, logs: &Path) -> anyhow::Result<Proc> {
    let mut c = env.broker_config(url);
    c.nats_url = env.nats_urls[i % env.nats_urls.len()].clone();
    c.http_addr = format!("127.0.0.1:{}", free_port()?).parse()?;
    c.instance_id = Some(format!("broker-{}", i + 1));
    let mut vars = c.to_env();
    vars.push(("TILLSYNC_PARTITIONS".into(), args.partitions.to_string()));
    vars.push(("TILLSYNC_LEASE_TTL_S".into(), args.lease_ttl_s.to_string()));
    Ok(Proc::new(&format!("broker-{}", i + 1), bin, Vec::new(), vars, logs))
}

/// Seconds from `started` until every partition has an owner; `None` if that never happens
/// within a minute while the drain goes on (a figure missing, not a failure).
async fn all_owned(pool: &PgPool, partitions: u16, started: Instant) -> anyhow::Result<Option<f64>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let owned: i64 = sqlx::query_scalar("SELECT count(*) FROM partition_owners WHERE released_at IS NULL")
            .fetch_one(pool)
            .await?;
        if owned >= i64::from(partitions) {
            return Ok(Some(started.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

/// Kills (SIGKILL) the broker holding the most partitions, and times until the other holds
/// every one of them.
async fn kill_one(pool: &PgPool, procs: &mut [Proc]) -> anyhow::Result<Takeover> {
    let owners = owners(pool).await?;
    let (victim, held) = owners
        .iter()
        .max_by_key(|(_, ps)| ps.len())
        .map(|(v, ps)| (v.clone(), ps.clone()))
        .context("no partition has an owner to kill")?;
    let survivor = procs.iter().map(|p| p.name.clone()).find(|n| *n != victim).context("no other broker")?;
    let proc_ = procs.iter_mut().find(|p| p.name == victim).context("the owner is not a broker of this run")?;
    let killed = Instant::now();
    proc_.kill9();
    eprintln!("killed {victim} holding {} partitions", held.len());
    let deadline = killed + Duration::from_secs(120);
    loop {
        let now = owners_of(pool, &held).await?;
        if now.iter().all(|o| o.as_deref() == Some(survivor.as_str())) {
            return Ok(Takeover { partitions: held.len(), seconds: killed.elapsed().as_secs_f64() });
        }
        if Instant::now() > deadline {
            bail!("{survivor} did not take over {victim}'s partitions within 120 s (owners now {now:?})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Current owners and the partitions each holds.
async fn owners(pool: &PgPool) -> anyhow::Result<BTreeMap<String, Vec<i32>>> {
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT instance_id, partition FROM partition_owners WHERE released_at IS NULL")
            .fetch_all(pool)
            .await?;
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (owner, p) in rows {
        out.entry(owner).or_default().push(p);
    }
    Ok(out)
}

/// The current owner of each of `partitions` (`None`: nobody).
async fn owners_of(pool: &PgPool, partitions: &[i32]) -> anyhow::Result<Vec<Option<String>>> {
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT partition, instance_id FROM partition_owners WHERE released_at IS NULL AND partition = ANY($1)",
    )
    .bind(partitions)
    .fetch_all(pool)
    .await?;
    let by: BTreeMap<i32, String> = rows.into_iter().collect();
    Ok(partitions.iter().map(|p| by.get(p).cloned()).collect())
}

/// Partitions per owner at the end, largest first.
async fn split(pool: &PgPool) -> anyhow::Result<Vec<usize>> {
    let mut v: Vec<usize> = owners(pool).await?.values().map(Vec::len).collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    Ok(v)
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

fn report(args: &ScaleArgs, unique: usize, one: &[Drain], two: &[Drain], killed: &[Drain]) -> Report {
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
        .param("unique_events", unique)
        .param("partitions", args.partitions)
        .param("lease_ttl_s", args.lease_ttl_s)
        .param("nats_nodes", NODES)
        .param("runs", args.runs);
    let (r1, r2) = (rate(one), rate(two));
    r.number("events_per_s_1_broker", r1)
        .number("events_per_s_2_brokers", r2)
        .number("speedup_2_vs_1", r2 / r1.max(1e-9));
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
    r.number("takeover_s", median(&takeovers.iter().map(|t| t.seconds).collect::<Vec<_>>()))
        .number("taken_over_partitions", median(&takeovers.iter().map(|t| t.partitions as f64).collect::<Vec<_>>()))
        .number("events_per_s_2_brokers_one_killed", rate(killed));
    if args.runs > 1 {
        r.result("takeover_runs_s", takeovers.iter().map(|t| round3(t.seconds)).collect::<Vec<_>>());
    }
    r.note(format!(
        "{NODES}-node NATS cluster, streams R3; brokers are separate processes; one killed at {:.0} % settled",
        args.kill_at * 100.0
    ))
    .note("CPU: utime+stime of the broker processes, the nats-servers and the bench database's Postgres backends (not Postgres' background writers), per message");
    r
}
