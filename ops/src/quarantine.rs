//! `tillsync quarantine list|show|redrive|dismiss`. A quarantined message is kept whole
//! (subject and payload); once its cause is fixed (a tenant provisioned, a bridge upgraded)
//! `redrive` publishes it again on its original subject and records who did it, when and why.
//! `dismiss` marks messages never to be redriven (with who and why). Both take one id or a
//! selection of pending messages ([`bulk`]).

mod bulk;

use std::process::ExitCode;

use anyhow::Context;
use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;
use tillsync_schemas::subject::{self, Family};
use tillsync_schemas::{codec, partition, streams as names};

use crate::global::Global;
use crate::output::{emit, hex, table, ts};

pub use bulk::Selection;

/// Header naming the quarantine row a redriven message came from.
pub const HEADER_REDRIVE: &str = "Tillsync-Redrive-Of";

#[derive(Debug, Args)]
pub struct QuarantineArgs {
    #[command(subcommand)]
    cmd: QuarantineCmd,
}

#[derive(Debug, Subcommand)]
enum QuarantineCmd {
    /// Quarantined messages, newest first.
    List {
        /// Only this reason code (e.g. unknown_tenant, undecodable).
        #[arg(long, value_parser = crate::known::reason)]
        reason: Option<String>,
        /// Only this tenant's messages.
        #[arg(long)]
        tenant: Option<String>,
        /// Only messages never redriven and not dismissed.
        #[arg(long)]
        pending: bool,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One message: every column, the payload as hex, an attempt to decode it, its redrives.
    Show {
        /// The quarantine id (`tillsync quarantine list`).
        id: i64,
    },
    /// Publish a message again on its original subject, once the cause is fixed: one by id, or
    /// every pending message (never redriven, not dismissed) the selectors match.
    Redrive {
        #[command(flatten)]
        select: Selection,
        /// Who redrives (recorded in the audit trail).
        #[arg(long, env = "TILLSYNC_OPERATOR")]
        operator: Option<String>,
        /// Why (recorded in the audit trail).
        #[arg(long, default_value = "")]
        note: String,
        /// Redrive even when the recorded cause (unknown_tenant) still holds, or the message
        /// was dismissed.
        #[arg(long)]
        force: bool,
        /// Print what would be redriven and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        nats: crate::global::NatsArgs,
    },
    /// Mark messages never to be redriven (e.g. a mistyped tenant's heartbeats): one by id, or
    /// every pending message the selectors match. The rows stay; `list --pending`, bulk
    /// redrive and `status` leave them out.
    Dismiss {
        #[command(flatten)]
        select: Selection,
        /// Who dismisses (recorded on each row).
        #[arg(long, env = "TILLSYNC_OPERATOR")]
        operator: Option<String>,
        /// Why (recorded on each row).
        #[arg(long)]
        note: String,
        /// Print what would be dismissed and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Serialize, sqlx::FromRow)]
struct Summary {
    id: i64,
    tenant_id: Option<String>,
    store_id: Option<String>,
    device_id: Option<String>,
    stream: String,
    stream_seq: i64,
    subject: String,
    reason: String,
    detail: String,
    received_at: DateTime<Utc>,
    redrive_count: i32,
    redriven_at: Option<DateTime<Utc>>,
    /// Refused heartbeats folded into this row (the payload is the latest one's).
    repeats: i32,
    last_received_at: Option<DateTime<Utc>>,
    dismissed_at: Option<DateTime<Utc>>,
    dismissed_by: Option<String>,
    dismiss_note: Option<String>,
}

impl Summary {
    /// The row with its subject as the publisher used it. Earlier brokers recorded a subject
    /// they refused (`bad_subject`) with the partition token their stream had appended; such
    /// rows are listed, shown and redriven without it, so no migration rewrites them.
    fn into_published(mut self) -> Summary {
        self.subject = partition::published_subject(&self.subject).to_string();
        self
    }
}

#[derive(Serialize, sqlx::FromRow)]
struct Redrive {
    id: i64,
    operator: String,
    note: String,
    new_stream_seq: Option<i64>,
    at: DateTime<Utc>,
}

#[derive(Serialize)]
struct Shown {
    #[serde(flatten)]
    row: Summary,
    payload_len: usize,
    payload_hex: String,
    /// The payload decoded and checked as the broker would, or why that fails.
    decoded: Option<serde_json::Value>,
    decode_error: Option<String>,
    /// The payload as plain MessagePack, when it is that at all.
    raw_msgpack: Option<serde_json::Value>,
    redrives: Vec<Redrive>,
}

#[derive(Serialize)]
struct Redriven {
    quarantine_id: i64,
    redrive_id: i64,
    subject: String,
    stream: String,
    new_stream_seq: u64,
    msg_id: String,
    operator: String,
    /// JetStream had already stored a message with this id (a repeated redrive attempt).
    duplicate: bool,
}

const SUMMARY_COLS: &str = "id, tenant_id, store_id, device_id, stream, stream_seq, subject, reason, detail, \
                            received_at, redrive_count, redriven_at, repeats, last_received_at, dismissed_at, dismissed_by, \
                            dismiss_note";

pub async fn run(args: QuarantineArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let pool = global.pool().await?;
    let code = match args.cmd {
        QuarantineCmd::List { reason, tenant, pending, limit } => {
            if let Some(t) = &tenant {
                crate::known::quarantined_tenant(&pool, t).await?;
            }
            let rows: Vec<Summary> = sqlx::query_as(&format!(
                "SELECT {SUMMARY_COLS} FROM quarantine
                 WHERE ($1::text IS NULL OR reason = $1) AND ($2::text IS NULL OR tenant_id = $2)
                   AND (NOT $3 OR (redrive_count = 0 AND dismissed_at IS NULL))
                 ORDER BY id DESC LIMIT $4"
            ))
            .bind(reason)
            .bind(tenant)
            .bind(pending)
            .bind(limit.max(0))
            .fetch_all(&pool)
            .await?;
            let rows: Vec<Summary> = rows.into_iter().map(Summary::into_published).collect();
            emit(global.json, &rows, |rows| {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            ts(Some(r.received_at)),
                            r.reason.clone(),
                            r.subject.clone(),
                            r.redrive_count.to_string(),
                            if r.dismissed_at.is_some() { "dismissed" } else { "-" }.into(),
                            r.detail.chars().take(60).collect(),
                        ]
                    })
                    .collect();
                table(&["ID", "RECEIVED", "REASON", "SUBJECT", "REDRIVES", "DISMISSED", "DETAIL"], &cells)
            })?;
            ExitCode::SUCCESS
        }
        QuarantineCmd::Show { id } => {
            let (row, payload) = load(&pool, id).await?;
            let redrives: Vec<Redrive> = sqlx::query_as(
                "SELECT id, operator, note, new_stream_seq, at FROM quarantine_redrives WHERE quarantine_id = $1 ORDER BY id",
            )
            .bind(id)
            .fetch_all(&pool)
            .await?;
            let (decoded, decode_error) = match decode(&row.subject, &payload) {
                Ok(v) => (Some(v), None),
                Err(e) => (None, Some(e)),
            };
            let raw_msgpack = codec::decode::<serde_json::Value>(&payload).ok();
            let shown = Shown {
                row,
                payload_len: payload.len(),
                payload_hex: hex(&payload),
                decoded,
                decode_error,
                raw_msgpack,
                redrives,
            };
            emit(global.json, &shown, human_show)?;
            ExitCode::SUCCESS
        }
        QuarantineCmd::Redrive { select: Selection { id: Some(id), .. }, operator, note, force, dry_run, nats } => {
            let operator = operator_name(operator);
            if dry_run {
                let plan = bulk::plan_one(&pool, id, force).await?;
                emit(global.json, &plan, bulk::human_plan)?;
                return Ok(ExitCode::SUCCESS);
            }
            let js = async_nats::jetstream::new(nats.connect().await?);
            let out = redrive(&pool, &js, id, &operator, &note, force).await?;
            emit(global.json, &out, human_redriven)?;
            ExitCode::SUCCESS
        }
        QuarantineCmd::Redrive { select, operator, note, force, dry_run, nats } => {
            let operator = operator_name(operator);
            bulk::redrive(&pool, global, &select, &nats, &operator, &note, force, dry_run).await?
        }
        QuarantineCmd::Dismiss { select, operator, note, dry_run } => {
            let operator = operator_name(operator);
            bulk::dismiss(&pool, global, &select, &operator, &note, dry_run).await?
        }
    };
    pool.close().await;
    Ok(code)
}

/// The operator named on the command line or in the environment, else `$USER`.
fn operator_name(given: Option<String>) -> String {
    given.or_else(|| std::env::var("USER").ok()).filter(|o| !o.is_empty()).unwrap_or_else(|| "unknown".into())
}

fn human_redriven(r: &Redriven) -> String {
    format!(
        "Quarantine #{} redriven on {} as {} seq {}{} (audit #{}, by {}).",
        r.quarantine_id,
        r.subject,
        r.stream,
        r.new_stream_seq,
        if r.duplicate { ", already published by an earlier attempt" } else { "" },
        r.redrive_id,
        r.operator
    )
}

async fn load(pool: &sqlx::PgPool, id: i64) -> anyhow::Result<(Summary, Vec<u8>)> {
    let row: Option<Summary> = sqlx::query_as(&format!("SELECT {SUMMARY_COLS} FROM quarantine WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    let row = row.ok_or_else(|| crate::failure::NotFound(format!("no quarantined message #{id}")))?.into_published();
    let payload: Vec<u8> =
        sqlx::query_scalar("SELECT payload FROM quarantine WHERE id = $1").bind(id).fetch_one(pool).await?;
    Ok((row, payload))
}

/// Decodes and checks the payload as the broker would for its subject's family.
fn decode(subj: &str, payload: &[u8]) -> Result<serde_json::Value, String> {
    let family = subject::parse(subj).map_err(|e| e.to_string())?.family;
    let value = match family {
        Family::Events => codec::decode_event(subj, payload).map(serde_json::to_value),
        Family::Heartbeats => codec::decode_heartbeat(subj, payload).map(serde_json::to_value),
        Family::Intake | Family::Commands => codec::decode_command(subj, payload).map(serde_json::to_value),
        Family::CommandAcks => codec::decode_command_ack(subj, payload).map(serde_json::to_value),
        Family::Watermarks
        | Family::Status
        | Family::Resend
        | Family::Config
        | Family::ConfigSnapshot
        | Family::ConfigPublish
        | Family::CommandSync
        | Family::CommandCopies => return Err(format!("{family:?} messages are never quarantined")),
    };
    value.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
}

/// The `Nats-Msg-Id` of a redrive. It differs from the original's (which JetStream would
/// drop as a duplicate inside its window) and from earlier redrives', but a retried attempt of
/// the same redrive reuses it, so JetStream stores it once.
fn redrive_msg_id(subj: &str, payload: &[u8], id: i64, attempt: i32) -> String {
    match codec::decode_event(subj, payload) {
        Ok(ev) => format!(
            "{}:redrive-{id}-{attempt}",
            names::event_msg_id(&names::msg_id_prefix(&ev.addr(), "redrive"), &ev.event_id)
        ),
        Err(_) => format!("redrive:{id}:{attempt}"),
    }
}

/// Why a message would be quarantined again (or was dismissed), so it is not redriven
/// without `--force`: a code (`dismissed`, `unknown_tenant`) and a sentence; `None` when
/// nothing holds it back. `known` caches tenant look-ups over a bulk run.
async fn held_back(
    pool: &sqlx::PgPool,
    row: &Summary,
    known: &mut std::collections::HashMap<String, bool>,
) -> anyhow::Result<Option<(&'static str, String)>> {
    if row.dismissed_at.is_some() {
        return Ok(Some(("dismissed", format!("dismissed by {}", row.dismissed_by.as_deref().unwrap_or("?")))));
    }
    if row.reason != tillsync_schemas::Reason::UnknownTenant.as_str() {
        return Ok(None);
    }
    let tenant = row.tenant_id.clone().unwrap_or_default();
    let exists = match known.get(&tenant) {
        Some(k) => *k,
        None => {
            let k: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)")
                .bind(&tenant)
                .fetch_one(pool)
                .await?;
            *known.entry(tenant.clone()).or_insert(k)
        }
    };
    Ok((!exists).then(|| ("unknown_tenant", format!("tenant {tenant:?} is still unknown"))))
}

async fn redrive(
    pool: &sqlx::PgPool,
    js: &async_nats::jetstream::Context,
    id: i64,
    operator: &str,
    note: &str,
    force: bool,
) -> anyhow::Result<Redriven> {
    let (row, payload) = load(pool, id).await?;
    if !force {
        if let Some((_, why)) = held_back(pool, &row, &mut Default::default()).await? {
            let hint = match &row.tenant_id {
                Some(t) if row.dismissed_at.is_none() => format!("run `tillsync tenants add {t}` first"),
                _ => "it was dismissed on purpose".into(),
            };
            anyhow::bail!("quarantine #{id}: {why}, so it would not be redriven: {hint} (or pass --force)");
        }
    }
    publish(pool, js, row, payload, operator, note).await
}

/// Publishes a loaded message again and records the redrive (audit row, count).
async fn publish(
    pool: &sqlx::PgPool,
    js: &async_nats::jetstream::Context,
    row: Summary,
    payload: Vec<u8>,
    operator: &str,
    note: &str,
) -> anyhow::Result<Redriven> {
    let id = row.id;
    let msg_id = redrive_msg_id(&row.subject, &payload, id, row.redrive_count + 1);
    let mut headers = HeaderMap::new();
    headers.insert(names::HEADER_MSG_ID, msg_id.as_str());
    headers.insert(names::HEADER_CONTENT_TYPE, names::CONTENT_TYPE);
    headers.insert(HEADER_REDRIVE, id.to_string().as_str());
    let ack = js
        .publish_with_headers(row.subject.clone(), headers, payload.into())
        .await
        .context("publishing the redrive")?
        .await
        .context("JetStream did not store the redrive")?;
    let mut tx = pool.begin().await?;
    let redrive_id: i64 = sqlx::query_scalar(
        "INSERT INTO quarantine_redrives (quarantine_id, operator, note, new_stream_seq) VALUES ($1, $2, $3, $4)
         RETURNING id",
    )
    .bind(id)
    .bind(operator)
    .bind(note)
    .bind(ack.sequence as i64)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("UPDATE quarantine SET redrive_count = redrive_count + 1, redriven_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await.with_context(|| {
        format!("redrive published as {} seq {} but not recorded; run it again to record it", ack.stream, ack.sequence)
    })?;
    Ok(Redriven {
        quarantine_id: id,
        redrive_id,
        subject: row.subject,
        stream: ack.stream,
        new_stream_seq: ack.sequence,
        msg_id,
        operator: operator.to_string(),
        duplicate: ack.duplicate,
    })
}

fn human_show(s: &Shown) -> String {
    let r = &s.row;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = format!(
        "id:            {}\nstream:        {} seq {}\nsubject:       {}\ntenant/store/device: {}/{}/{}\n\
         reason:        {}\ndetail:        {}\nreceived_at:   {}\nredrives:      {} (last {})\npayload:       {} bytes\n",
        r.id,
        r.stream,
        r.stream_seq,
        r.subject,
        opt(&r.tenant_id),
        opt(&r.store_id),
        opt(&r.device_id),
        r.reason,
        r.detail,
        ts(Some(r.received_at)),
        r.redrive_count,
        ts(r.redriven_at),
        s.payload_len
    );
    if r.repeats > 0 {
        out += &format!("repeats:       {} more, the last at {}\n", r.repeats, ts(r.last_received_at));
    }
    if let Some(at) = r.dismissed_at {
        out += &format!(
            "dismissed:     {} by {}: {}\n",
            ts(Some(at)),
            opt(&r.dismissed_by),
            r.dismiss_note.as_deref().unwrap_or("")
        );
    }
    for chunk in s.payload_hex.as_bytes().chunks(64) {
        out += &format!("  {}\n", String::from_utf8_lossy(chunk));
    }
    match (&s.decoded, &s.decode_error) {
        (Some(v), _) => out += &format!("decoded:\n{}\n", serde_json::to_string_pretty(v).unwrap_or_default()),
        (None, Some(e)) => {
            out += &format!("decode fails: {e}\n");
            if let Some(raw) = &s.raw_msgpack {
                out += &format!("as plain MessagePack:\n{}\n", serde_json::to_string_pretty(raw).unwrap_or_default());
            }
        }
        (None, None) => {}
    }
    for d in &s.redrives {
        out += &format!(
            "redrive #{} at {} by {}: new seq {} {}\n",
            d.id,
            ts(Some(d.at)),
            d.operator,
            d.new_stream_seq.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            d.note
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(subject: &str) -> Summary {
        Summary {
            id: 1,
            tenant_id: None,
            store_id: None,
            device_id: None,
            stream: names::EVENTS.into(),
            stream_seq: 1,
            subject: subject.into(),
            reason: "bad_subject".into(),
            detail: String::new(),
            received_at: Utc::now(),
            redrive_count: 0,
            redriven_at: None,
            repeats: 0,
            last_received_at: None,
            dismissed_at: None,
            dismissed_by: None,
            dismiss_note: None,
        }
    }

    #[test]
    fn a_row_recorded_with_the_partition_token_is_shown_and_redriven_without_it() {
        assert_eq!(summary("tillsync.ev.acme.s1.till~1.4").into_published().subject, "tillsync.ev.acme.s1.till~1");
        assert_eq!(summary("tillsync.ev.acme.s1.till-1").into_published().subject, "tillsync.ev.acme.s1.till-1");
    }

    #[test]
    fn redrive_ids_differ_per_attempt_and_from_undecodable() {
        let a = redrive_msg_id("tillsync.ev.a.s.d", b"\xc1", 7, 1);
        let b = redrive_msg_id("tillsync.ev.a.s.d", b"\xc1", 7, 2);
        assert_eq!(a, "redrive:7:1");
        assert_ne!(a, b);
    }
}
