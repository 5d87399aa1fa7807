//! Many quarantined messages at once: every pending one (never redriven, not dismissed) that a
//! reason, a tenant and a time select, oldest first, up to a limit. A device with a mistyped
//! tenant quarantines a heartbeat every 30 s: thousands of rows a day to redrive once the
//! tenant exists, or to dismiss. Each row is redriven (audited) or dismissed on its own, so a
//! run stopped half-way leaves the rest pending for the next run.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args};
use serde::Serialize;

use super::{held_back, load, publish, Summary, SUMMARY_COLS};
use crate::global::Global;
use crate::output::{emit, table, ts};

/// One message by id, or the pending messages a bulk redrive or dismissal takes. An id or at
/// least one selector is required (clap's usage error, exit 2), so a bare `redrive` never
/// sweeps the whole quarantine.
#[derive(Debug, Args)]
#[group(skip)]
#[command(group(ArgGroup::new("which").required(true).multiple(true).args(["id", "reason", "tenant", "since"])))]
pub struct Selection {
    /// One message, by id.
    #[arg(conflicts_with_all = ["reason", "tenant", "since"])]
    pub id: Option<i64>,
    /// Only this reason code (e.g. unknown_tenant).
    #[arg(long, value_parser = crate::known::reason)]
    reason: Option<String>,
    /// Only this tenant (as named by the message's subject; one no quarantined message names
    /// and not provisioned is refused, exit 4).
    #[arg(long)]
    tenant: Option<String>,
    /// Only messages received at or after this time (RFC 3339, or Unix milliseconds; a row of
    /// repeated heartbeats counts by its latest).
    #[arg(long, value_parser = crate::known::since)]
    since: Option<String>,
    /// At most this many messages, oldest first.
    #[arg(long, default_value_t = 1000)]
    limit: i64,
}

impl Selection {
    fn since(&self) -> anyhow::Result<Option<DateTime<Utc>>> {
        let Some(s) = &self.since else { return Ok(None) };
        let ms = crate::replay::source::parse_time(s)
            .map_err(|_| anyhow::anyhow!("--since {s:?} is neither RFC 3339 nor Unix milliseconds"))?;
        DateTime::from_timestamp_millis(ms).map(Some).ok_or_else(|| anyhow::anyhow!("--since {s:?} is out of range"))
    }

    /// The pending messages selected, oldest first.
    async fn rows(&self, pool: &sqlx::PgPool) -> anyhow::Result<Vec<Summary>> {
        if let Some(tenant) = &self.tenant {
            crate::known::quarantined_tenant(pool, tenant).await?;
        }
        let rows: Vec<Summary> = sqlx::query_as(&format!(
            "SELECT {SUMMARY_COLS} FROM quarantine_pending
             WHERE ($1::text IS NULL OR reason = $1) AND ($2::text IS NULL OR tenant_id = $2)
               AND ($3::timestamptz IS NULL OR coalesce(last_received_at, received_at) >= $3)
             ORDER BY id LIMIT $4"
        ))
        .bind(&self.reason)
        .bind(&self.tenant)
        .bind(self.since()?)
        .bind(self.limit.max(0))
        .fetch_all(pool)
        .await?;
        Ok(rows.into_iter().map(Summary::into_published).collect())
    }
}

/// What happened (or, with `--dry-run`, would happen) to one message.
#[derive(Serialize)]
pub struct Item {
    id: i64,
    subject: String,
    reason: String,
    tenant_id: Option<String>,
    received_at: DateTime<Utc>,
    /// redriven, duplicate, skipped, failed; with --dry-run: would_redrive, would_skip.
    outcome: &'static str,
    /// Why it was skipped or failed, or where it went.
    detail: String,
    new_stream_seq: Option<u64>,
}

#[derive(Serialize, Default)]
pub struct Redrives {
    dry_run: bool,
    selected: usize,
    redriven: usize,
    /// Redriven, and JetStream had already stored it (an earlier attempt's publish).
    duplicate: usize,
    /// Skipped, by cause (`unknown_tenant`: the tenant is still unknown; `dismissed`).
    skipped: BTreeMap<&'static str, usize>,
    failed: usize,
    items: Vec<Item>,
}

impl Redrives {
    fn push(&mut self, row: &Summary, outcome: &'static str, detail: String, seq: Option<u64>) {
        self.items.push(Item {
            id: row.id,
            subject: row.subject.clone(),
            reason: row.reason.clone(),
            tenant_id: row.tenant_id.clone(),
            received_at: row.received_at,
            outcome,
            detail,
            new_stream_seq: seq,
        });
    }
}

/// `redrive ID --dry-run`: what a redrive of one message would do.
pub async fn plan_one(pool: &sqlx::PgPool, id: i64, force: bool) -> anyhow::Result<Redrives> {
    let (row, _) = load(pool, id).await?;
    let mut out = Redrives { dry_run: true, selected: 1, ..Default::default() };
    plan(pool, &mut out, &row, force, &mut HashMap::new()).await?;
    Ok(out)
}

/// Records what would happen to `row`; true when it would be redriven.
async fn plan(
    pool: &sqlx::PgPool,
    out: &mut Redrives,
    row: &Summary,
    force: bool,
    known: &mut HashMap<String, bool>,
) -> anyhow::Result<bool> {
    match held_back(pool, row, known).await? {
        Some((code, why)) if !force => {
            *out.skipped.entry(code).or_default() += 1;
            let outcome = if out.dry_run { "would_skip" } else { "skipped" };
            out.push(row, outcome, why, None);
            Ok(false)
        }
        _ => {
            if out.dry_run {
                out.push(row, "would_redrive", format!("to {}", row.subject), None);
            }
            Ok(true)
        }
    }
}

/// `redrive --reason/--tenant/--since`: redrives every selected pending message whose cause is
/// gone (or all with `--force`). Exit 1 when any publish failed; the rest are still done.
#[allow(clippy::too_many_arguments)]
pub async fn redrive(
    pool: &sqlx::PgPool,
    global: &Global,
    select: &Selection,
    nats: &crate::global::NatsArgs,
    operator: &str,
    note: &str,
    force: bool,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let rows = select.rows(pool).await?;
    let mut out = Redrives { dry_run, selected: rows.len(), ..Default::default() };
    let js = if dry_run || rows.is_empty() { None } else { Some(async_nats::jetstream::new(nats.connect().await?)) };
    let mut known = HashMap::new();
    let progress = Progress::new(global.json, rows.len());
    for (n, row) in rows.into_iter().enumerate() {
        progress.tick(n);
        if !plan(pool, &mut out, &row, force, &mut known).await? {
            continue;
        }
        let Some(js) = &js else { continue };
        let (fresh, payload) = load(pool, row.id).await?;
        match publish(pool, js, fresh, payload, operator, note).await {
            Ok(r) => {
                out.redriven += 1;
                out.duplicate += usize::from(r.duplicate);
                let outcome = if r.duplicate { "duplicate" } else { "redriven" };
                let detail = format!("{} seq {} (audit #{})", r.stream, r.new_stream_seq, r.redrive_id);
                out.push(&row, outcome, detail, Some(r.new_stream_seq));
            }
            Err(e) => {
                out.failed += 1;
                out.push(&row, "failed", format!("{e:#}"), None);
            }
        }
    }
    progress.done();
    emit(global.json, &out, human_plan)?;
    Ok(if out.failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

pub fn human_plan(r: &Redrives) -> String {
    let cells: Vec<Vec<String>> = r
        .items
        .iter()
        .map(|i| {
            vec![
                i.id.to_string(),
                ts(Some(i.received_at)),
                i.reason.clone(),
                i.subject.clone(),
                i.outcome.into(),
                i.detail.chars().take(80).collect(),
            ]
        })
        .collect();
    let mut out = table(&["ID", "RECEIVED", "REASON", "SUBJECT", "OUTCOME", "DETAIL"], &cells);
    let skipped: Vec<String> = r.skipped.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let skipped = if skipped.is_empty() { "0".into() } else { skipped.join(", ") };
    if r.dry_run {
        out += &format!(
            "Dry run: {} selected, {} would be redriven, skipped: {skipped}. Nothing changed.\n",
            r.selected,
            r.selected - r.skipped.values().sum::<usize>()
        );
    } else {
        out += &format!(
            "{} selected, {} redriven ({} already published), skipped: {skipped}, {} failed.\n",
            r.selected, r.redriven, r.duplicate, r.failed
        );
    }
    out
}

#[derive(Serialize)]
pub struct Dismissed {
    dry_run: bool,
    selected: usize,
    dismissed: usize,
    /// Named by id but dismissed before: nothing changed.
    already: usize,
    operator: String,
    note: String,
    ids: Vec<i64>,
}

/// `dismiss ID` or `dismiss --reason/--tenant/--since`: marks the messages dismissed, each
/// with who and why. A message dismissed before keeps its first dismissal.
pub async fn dismiss(
    pool: &sqlx::PgPool,
    global: &Global,
    select: &Selection,
    operator: &str,
    note: &str,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!note.trim().is_empty(), "--note must say why the messages are dismissed");
    let (ids, already) = match select.id {
        Some(id) => {
            let (row, _) = load(pool, id).await?;
            if row.dismissed_at.is_some() {
                (vec![], 1)
            } else {
                (vec![id], 0)
            }
        }
        None => (select.rows(pool).await?.iter().map(|r| r.id).collect(), 0),
    };
    let mut out = Dismissed {
        dry_run,
        selected: ids.len() + already,
        dismissed: 0,
        already,
        operator: operator.into(),
        note: note.into(),
        ids,
    };
    if !dry_run && !out.ids.is_empty() {
        out.ids = sqlx::query_scalar(
            "UPDATE quarantine SET dismissed_at = now(), dismissed_by = $2, dismiss_note = $3
             WHERE id = ANY($1) AND dismissed_at IS NULL RETURNING id",
        )
        .bind(&out.ids)
        .bind(operator)
        .bind(note)
        .fetch_all(pool)
        .await?;
        out.ids.sort_unstable();
        out.dismissed = out.ids.len();
    }
    emit(global.json, &out, |d| {
        if d.dry_run {
            let ids: Vec<String> = d.ids.iter().map(|id| format!("#{id}")).collect();
            match ids.len() {
                0 => "Dry run: no message would be dismissed. Nothing changed.".to_string(),
                n => format!("Dry run: {n} message(s) would be dismissed: {}. Nothing changed.", ids.join(", ")),
            }
        } else if d.already > 0 {
            "Already dismissed; nothing changed.".to_string()
        } else {
            format!("Dismissed {} message(s) by {}: {}.", d.dismissed, d.operator, d.note)
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// "redriven N/M" on stderr every few hundred messages, for a person watching a long run.
struct Progress {
    total: usize,
    on: bool,
}

impl Progress {
    fn new(json: bool, total: usize) -> Self {
        Progress { total, on: !json && total >= 500 && std::io::stderr().is_terminal() }
    }

    fn tick(&self, n: usize) {
        if self.on && n > 0 && n.is_multiple_of(250) {
            eprint!("\rredriving {n}/{}", self.total);
        }
    }

    fn done(&self) {
        if self.on {
            eprintln!("\rredriving {}/{} done", self.total, self.total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since(s: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        Selection { id: None, reason: None, tenant: None, since: Some(s.into()), limit: 1 }.since()
    }

    #[test]
    fn since_takes_rfc3339_or_unix_ms() {
        let t = since("2026-12-01T10:00:00Z").unwrap().unwrap();
        assert_eq!(since(&t.timestamp_millis().to_string()).unwrap(), Some(t));
        assert_eq!(since("2026-12-01T11:00:00+01:00").unwrap(), Some(t));
        let e = since("2h").unwrap_err().to_string();
        assert!(e.contains("--since"), "{e}");
    }

    #[test]
    fn a_dry_run_summary_counts_what_would_be_skipped() {
        let mut r = Redrives { dry_run: true, selected: 3, ..Default::default() };
        r.skipped.insert("unknown_tenant", 2);
        let text = human_plan(&r);
        assert!(
            text.contains("3 selected, 1 would be redriven, skipped: 2 unknown_tenant. Nothing changed."),
            "{text}"
        );
    }
}
