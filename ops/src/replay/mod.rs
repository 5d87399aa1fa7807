//! `tillsync replay`: reads the events stream through the live broker's own decision and apply
//! code ([`tillsync_broker::admin::ingest::process`], with a private actor system) into a target: a
//! shadow schema of the live database, another database, or the live database itself (where
//! every event is a duplicate and nothing changes). Stores are split over concurrent lanes
//! ([`lanes`]). Progress is saved in the target after every committed batch, so `--resume`
//! continues and Ctrl-C loses nothing.

pub mod lanes;
pub mod source;
mod verify;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{ArgGroup, Args};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use sqlx::PgPool;
use tillsync_broker::admin::ingest::EventOutcome;
use tokio_util::sync::CancellationToken;

use self::source::{Filter, Source, Start};
use self::verify::Verification;
use crate::failure::Usage;
use crate::global::Global;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["target_database_url", "target_schema", "into_live"])))]
pub struct ReplayArgs {
    /// Replay into this database (migrated first).
    #[arg(long)]
    target_database_url: Option<String>,
    /// Replay into this schema of the live database (created and migrated first). One that
    /// already holds tillsync tables is refused unless --resume or --replace; one this run
    /// created is dropped again when the replay fails before committing any progress.
    #[arg(long, value_parser = crate::known::schema)]
    target_schema: Option<String>,
    /// With --target-schema: drop the schema (an earlier rebuild) and start afresh.
    #[arg(long, requires = "target_schema", conflicts_with = "resume")]
    replace: bool,
    /// Replay into the live database itself: every event is a duplicate, nothing changes.
    #[arg(long)]
    into_live: bool,
    /// Only this tenant's events (it must exist).
    #[arg(long, value_parser = crate::known::id)]
    tenant: Option<String>,
    /// Only this store's events (needs --tenant).
    #[arg(long, requires = "tenant", value_parser = crate::known::id)]
    store: Option<String>,
    /// Only this device's events (needs --tenant and --store).
    #[arg(long, requires = "store", value_parser = crate::known::id)]
    device: Option<String>,
    /// Start at this stream sequence.
    #[arg(long, conflicts_with = "from_time")]
    from_seq: Option<u64>,
    /// Start at this time (RFC 3339, or Unix milliseconds).
    #[arg(long)]
    from_time: Option<String>,
    /// Continue a replay of the same name where it stopped (its progress is kept in the target).
    #[arg(long)]
    resume: bool,
    /// Name under which progress is saved (default: the filter subject).
    #[arg(long)]
    name: Option<String>,
    /// Messages per committed batch (per lane). Larger than the live broker's 500: a replay
    /// has no one waiting on each event, and bigger transactions cost less per event.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    batch: u16,
    /// Batches committed concurrently (stores are split over the lanes; each device's events
    /// stay in order). 1 replays strictly in stream order.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    lanes: u16,
    /// Afterwards compare the target's read models with the live ones and print every difference.
    #[arg(long, conflicts_with = "into_live")]
    verify: bool,
}

#[derive(Debug, Default, Serialize)]
struct Tally {
    messages: u64,
    applied: u64,
    duplicates: u64,
    conflicts: u64,
    stale: u64,
    quarantined: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, o: &EventOutcome) {
        self.messages += 1;
        match o {
            EventOutcome::Applied => self.applied += 1,
            EventOutcome::Duplicate(_) => self.duplicates += 1,
            EventOutcome::Conflict => self.conflicts += 1,
            EventOutcome::Stale => self.stale += 1,
            EventOutcome::Quarantined(r) => *self.quarantined.entry(r.as_str().to_string()).or_default() += 1,
        }
    }

    fn quarantined_total(&self) -> u64 {
        self.quarantined.values().sum()
    }
}

#[derive(Serialize)]
struct Summary {
    name: String,
    target: String,
    filter_subject: String,
    /// First stream sequence asked for (after `--resume`, the one after the saved position).
    start: String,
    /// Matching messages when the replay started, from `start`.
    total: u64,
    /// This run.
    #[serde(flatten)]
    tally: Tally,
    last_stream_seq: Option<u64>,
    complete: bool,
    interrupted: bool,
    /// With `--into-live`: true when nothing was applied.
    unchanged: Option<bool>,
    elapsed_s: f64,
    rate_per_s: f64,
    verify: Option<Verification>,
}

/// Exit code when Ctrl-C stopped the replay (it resumes with `--resume`).
const INTERRUPTED: u8 = 130;

pub async fn run(args: ReplayArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let filter = Filter { tenant: args.tenant.clone(), store: args.store.clone(), device: args.device.clone() };
    let filter_subject = filter.subject().map_err(|e| Usage(format!("{e:#}")))?;
    let name = args.name.clone().unwrap_or_else(|| filter_subject.clone());
    let start = match (args.from_seq, &args.from_time) {
        (Some(n), _) => Start::Seq(n),
        (None, Some(t)) => Start::Time(source::parse_time(t).map_err(|e| Usage(format!("{e:#}")))?),
        (None, None) => Start::All,
    };

    let live = crate::db::pool(&global.database_url, None, 4).await?;
    crate::known::filters(&live, args.tenant.as_deref(), args.store.as_deref(), args.device.as_deref()).await?;
    let (target, target_label, created) = match open_target(&args, global).await {
        Ok(t) => t,
        Err(e) if e.is::<SchemaInUse>() => return Err(Usage(e.to_string()).into()),
        Err(e) => return Err(e),
    };
    let result = rebuild(&args, global, live, target.clone(), target_label, filter, filter_subject, name, start).await;
    if let Some(schema) = created {
        if !matches!(&result, Ok(code) if *code != ExitCode::from(INTERRUPTED)) {
            target.close().await;
            drop_if_no_progress(&global.database_url, &schema).await?;
        }
    }
    result
}

/// The replay proper, into an open target.
#[allow(clippy::too_many_arguments)]
async fn rebuild(
    args: &ReplayArgs,
    global: &Global,
    live: PgPool,
    target: PgPool,
    target_label: String,
    filter: Filter,
    filter_subject: String,
    name: String,
    mut start: Start,
) -> anyhow::Result<ExitCode> {
    crate::db::migrate(&target).await.context("migrating the target")?;
    if !args.into_live {
        copy_provisioning(&live, &target).await?;
    }

    if args.resume {
        if let Some((subject, last)) = saved_progress(&target, &name).await? {
            if subject != filter_subject {
                let other = format!(
                    "replay {name} was for {subject}, not {filter_subject}: pass the same filters or another --name"
                );
                return Err(Usage(other).into());
            }
            start = Start::Seq(last + 1);
        }
    }

    let js = async_nats::jetstream::new(global.nats.connect().await?);
    let src = Source::open(&js, &filter_subject, start).await?;
    let total = src.total;
    let pb = progress_bar(total, global.json);

    let cancel = CancellationToken::new();
    let on_signal = tokio::spawn(interrupt(cancel.clone()));

    let shared = lanes::Shared::start(target.clone()).await?;

    let started = Instant::now();
    let mut tally = Tally::default();
    let mut last_seq = None;
    // Stops the reader on Ctrl-C (the parent) or when a lane fails (this token alone).
    let stop = cancel.child_token();
    let (mut done, reader) = lanes::start(shared.clone(), src, args.lanes as usize, args.batch as usize, stop.clone());
    let mut failure = None;
    while let Some(d) = done.recv().await {
        let d = match d {
            Ok(d) => d,
            Err(e) => {
                stop.cancel();
                failure.get_or_insert(e);
                continue;
            }
        };
        for o in &d.report.outcomes {
            tally.add(o);
        }
        let safe = last_seq.unwrap_or(0).max(d.safe_seq);
        if let Err(e) = save_progress(&target, &name, &filter_subject, safe, &d.report.outcomes).await {
            stop.cancel();
            failure.get_or_insert(e);
            continue;
        }
        last_seq = Some(safe);
        pb.inc(d.report.outcomes.len() as u64);
    }
    if let Err(e) = reader.await.map_err(anyhow::Error::from).and_then(|r| r) {
        failure.get_or_insert(e);
    }
    on_signal.abort();
    pb.finish_and_clear();
    shared.stop().await;
    if let Some(e) = failure {
        return Err(e.context(format!(
            "replay stopped; progress is saved up to stream seq {}: fix the cause and run again with --resume",
            last_seq.map_or("(none)".to_string(), |s| s.to_string())
        )));
    }

    let interrupted = cancel.is_cancelled();
    let verify = if args.verify && !interrupted { Some(verify::verify(&live, &target, &filter).await?) } else { None };
    let elapsed = started.elapsed().as_secs_f64();
    let unchanged = args.into_live.then_some(tally.applied == 0 && tally.stale == 0);
    let summary = Summary {
        name,
        target: target_label,
        filter_subject,
        start: match start {
            Start::All => "all".into(),
            Start::Seq(n) => format!("seq {n}"),
            Start::Time(ms) => format!("time {ms}"),
        },
        total,
        rate_per_s: if elapsed > 0.0 { tally.messages as f64 / elapsed } else { 0.0 },
        tally,
        last_stream_seq: last_seq,
        complete: !interrupted,
        interrupted,
        unchanged,
        elapsed_s: elapsed,
        verify,
    };
    live.close().await;
    target.close().await;
    crate::output::emit(global.json, &summary, human)?;
    Ok(if interrupted {
        ExitCode::from(INTERRUPTED)
    } else if summary.verify.as_ref().is_some_and(|v| !v.differences.is_empty()) || unchanged == Some(false) {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// A target schema that holds tables already, without `--resume` or `--replace` (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SchemaInUse(String);

/// The target's pool, a label for it, and the schema this run created (none when it reuses
/// one, or the target is a database).
async fn open_target(args: &ReplayArgs, global: &Global) -> anyhow::Result<(PgPool, String, Option<String>)> {
    // One connection per lane, one for progress and the actors' state loads.
    let size = args.lanes as u32 + 2;
    if let Some(url) = &args.target_database_url {
        anyhow::ensure!(url != &global.database_url, "the target database is the live one: use --into-live");
        let pool = crate::db::rebuild_pool(url, None, size).await?;
        return Ok((pool, format!("database {}", crate::db::redact(url)), None));
    }
    if let Some(schema) = &args.target_schema {
        let created = prepare_schema(&global.database_url, schema, args.resume, args.replace).await?;
        let pool = crate::db::rebuild_pool(&global.database_url, Some(schema), size).await?;
        return Ok((pool, format!("schema {schema}"), created.then(|| schema.clone())));
    }
    Ok((crate::db::pool(&global.database_url, None, size).await?, "live".into(), None))
}

/// Makes `schema` ready for a replay: kept for `--resume`, dropped and made anew for
/// `--replace`, created when missing. An earlier rebuild is never reused by accident (its
/// rows would mix with this one's), and a schema that is not a tillsync rebuild is never
/// dropped. True when this run created it.
async fn prepare_schema(url: &str, schema: &str, resume: bool, replace: bool) -> anyhow::Result<bool> {
    crate::db::check_schema(schema)?;
    let admin = crate::db::pool(url, None, 1).await?;
    let (exists, tables, ours): (bool, i64, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
                (SELECT count(*) FROM pg_tables WHERE schemaname = $1),
                to_regclass(quote_ident($1) || '.replay_progress') IS NOT NULL",
    )
    .bind(schema)
    .fetch_one(&admin)
    .await?;
    let created = match (exists, tables > 0) {
        (false, _) => true,
        (true, false) => false,
        (true, true) if resume && ours => false,
        (true, true) if replace && ours => {
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await?;
            true
        }
        (true, true) if !ours => {
            admin.close().await;
            return Err(SchemaInUse(format!(
                "schema {schema} holds {tables} table(s) that are not a tillsync rebuild: pick another --target-schema"
            ))
            .into());
        }
        (true, true) => {
            admin.close().await;
            return Err(SchemaInUse(format!(
                "schema {schema} already holds a tillsync rebuild: pass --resume to continue it, --replace to \
                 drop it and start afresh, or pick another --target-schema"
            ))
            .into());
        }
    };
    if created {
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await?;
    }
    admin.close().await;
    Ok(created)
}

/// After a failed or interrupted replay into a schema it created: drops the schema when no
/// batch was committed (nothing to resume), else keeps it for `--resume`.
async fn drop_if_no_progress(url: &str, schema: &str) -> anyhow::Result<()> {
    let admin = crate::db::pool(url, None, 1).await?;
    let table: bool = sqlx::query_scalar("SELECT to_regclass(quote_ident($1) || '.replay_progress') IS NOT NULL")
        .bind(schema)
        .fetch_one(&admin)
        .await?;
    let progress = table
        && sqlx::query_scalar::<_, bool>(&format!(
            "SELECT EXISTS (SELECT 1 FROM {schema}.replay_progress WHERE last_stream_seq > 0)"
        ))
        .fetch_one(&admin)
        .await?;
    if progress {
        eprintln!("Schema {schema} is kept: it holds committed progress; run again with --resume to continue.");
    } else {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&admin).await?;
        eprintln!("Schema {schema} dropped: the replay created it and committed nothing into it.");
    }
    admin.close().await;
    Ok(())
}

/// Tenants (and provisioned devices) come from live: without them every event would be
/// quarantined as `unknown_tenant` in the target.
async fn copy_provisioning(live: &PgPool, target: &PgPool) -> anyhow::Result<()> {
    let tenants: Vec<(String, String)> = sqlx::query_as("SELECT tenant_id, name FROM tenants").fetch_all(live).await?;
    let (ids, names): (Vec<String>, Vec<String>) = tenants.into_iter().unzip();
    sqlx::query(
        "INSERT INTO tenants (tenant_id, name) SELECT * FROM UNNEST($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(ids)
    .bind(names)
    .execute(target)
    .await?;
    let devices: Vec<(String, String, String)> =
        sqlx::query_as("SELECT tenant_id, store_id, device_id FROM devices WHERE provisioned").fetch_all(live).await?;
    let mut cols = (Vec::new(), Vec::new(), Vec::new());
    for (t, s, d) in devices {
        cols.0.push(t);
        cols.1.push(s);
        cols.2.push(d);
    }
    sqlx::query(
        "INSERT INTO devices (tenant_id, store_id, device_id, provisioned)
         SELECT t, s, d, true FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(t, s, d)
         ON CONFLICT (tenant_id, store_id, device_id) DO UPDATE SET provisioned = true",
    )
    .bind(cols.0)
    .bind(cols.1)
    .bind(cols.2)
    .execute(target)
    .await?;
    Ok(())
}

async fn saved_progress(target: &PgPool, name: &str) -> anyhow::Result<Option<(String, u64)>> {
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT filter_subject, last_stream_seq FROM replay_progress WHERE name = $1")
            .bind(name)
            .fetch_optional(target)
            .await?;
    Ok(row.map(|(s, n)| (s, n as u64)))
}

/// Saved after a batch committed, with `last` the position below which everything committed
/// (lanes finish out of order). A crash in between replays the batches after `last` again,
/// harmlessly: their events are duplicates by then.
async fn save_progress(
    target: &PgPool,
    name: &str,
    filter_subject: &str,
    last: u64,
    outcomes: &[EventOutcome],
) -> anyhow::Result<()> {
    let applied = outcomes.iter().filter(|o| **o == EventOutcome::Applied).count() as i64;
    sqlx::query(
        "INSERT INTO replay_progress (name, filter_subject, last_stream_seq, applied, messages, updated_at)
         VALUES ($1, $2, $3, $4, $5, now())
         ON CONFLICT (name) DO UPDATE SET filter_subject = $2, last_stream_seq = $3,
           applied = replay_progress.applied + $4, messages = replay_progress.messages + $5, updated_at = now()",
    )
    .bind(name)
    .bind(filter_subject)
    .bind(last as i64)
    .bind(applied)
    .bind(outcomes.len() as i64)
    .execute(target)
    .await?;
    Ok(())
}

/// First Ctrl-C: stop reading; the batches in flight commit. Second: leave at once (safe too:
/// an uncommitted batch leaves no trace, and progress only counts committed ones).
async fn interrupt(cancel: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!("Interrupted: finishing the batches in flight (Ctrl-C again to quit now).");
        cancel.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(INTERRUPTED as i32);
        }
    }
}

fn progress_bar(total: u64, json: bool) -> ProgressBar {
    let pb = ProgressBar::new(total);
    if json || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        pb.set_draw_target(ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:32}] {human_pos}/{human_len} events  {rate}  ETA {eta}",
        ) {
            let rate = |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", s.per_sec());
            };
            pb.set_style(style.with_key("rate", rate).progress_chars("=> "));
        }
    }
    pb
}

/// `reason n, reason n` for a person.
fn per_reason(counts: &BTreeMap<String, u64>) -> String {
    counts.iter().map(|(r, n)| format!("{r} {n}")).collect::<Vec<_>>().join(", ")
}

fn human(s: &Summary) -> String {
    let t = &s.tally;
    let mut out = format!(
        "Replayed {} of {} message(s) on {} ({}) into {} in {:.1} s ({:.0}/s): {} applied, {} duplicates, {} conflicts, {} stale, {} quarantined{}.\n",
        t.messages,
        s.total,
        s.filter_subject,
        s.start,
        s.target,
        s.elapsed_s,
        s.rate_per_s,
        t.applied,
        t.duplicates,
        t.conflicts,
        t.stale,
        t.quarantined_total(),
        if t.quarantined.is_empty() { String::new() } else { format!(" ({})", per_reason(&t.quarantined)) },
    );
    match s.unchanged {
        Some(true) => out += &format!("{} duplicates, nothing changed.\n", t.duplicates),
        Some(false) => out += &format!("Live was missing {} event(s): they are applied now.\n", t.applied + t.stale),
        None => {}
    }
    if s.interrupted {
        out += &format!(
            "Interrupted after stream seq {}: run again with --resume{} to continue.\n",
            s.last_stream_seq.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            if s.name == s.filter_subject { String::new() } else { format!(" --name {}", s.name) }
        );
    }
    if let Some(v) = &s.verify {
        let rows: usize = v.rows.values().sum();
        if v.differences.is_empty() {
            out += &format!("Verified: {rows} live row(s) in {} tables, no differences.\n", v.rows.len());
        } else {
            out += &format!("{} difference(s) against live:\n", v.differences.len());
            for d in &v.differences {
                out += &format!("  {} {}: {}\n", d.table, d.key, d.kind);
                for c in &d.columns {
                    out += &format!("    {}: live {} / target {}\n", c.column, c.live, c.target);
                }
            }
        }
    }
    out
}
