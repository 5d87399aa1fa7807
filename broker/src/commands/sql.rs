//! The command tables in Postgres: intake rows, inbox transitions, the audit log and acks.
//! Every transition updates `command_inbox` only from an unfinished state, and writes its
//! `command_log` row in the same transaction, so a transition happens once whoever races it.

use crate::partitions::Fence;
use sqlx::postgres::PgArguments;
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::{Arguments, PgConnection, PgPool};
use tillsync_actors::policy::PendingEntry;
use tillsync_schemas::{CommandEnvelope, CommandState, DeviceAddr};

use crate::ts;

/// Who made a transition, as recorded in `command_log.actor`.
pub const BY_PORTAL: &str = "portal";
pub const BY_BROKER: &str = "broker";
pub const BY_DEVICE: &str = "device";

/// One `command_log` row: a transition, and the status message the portal gets for it.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub id: i64,
    pub tenant_id: String,
    pub store_id: String,
    pub command_id: String,
    pub device_id: Option<String>,
    pub state: CommandState,
    pub attempt: u32,
    pub code: Option<String>,
    pub detail: String,
    pub at_ms: i64,
    /// On an `acked` row that corrects an earlier final state: that state.
    pub corrects: Option<CommandState>,
}

/// A transition to log (the id and time are assigned on insert).
pub struct NewLog<'a> {
    pub tenant_id: &'a str,
    pub store_id: &'a str,
    pub command_id: &'a str,
    pub device_id: Option<&'a str>,
    pub state: CommandState,
    pub attempt: u32,
    pub code: Option<&'a str>,
    pub detail: &'a str,
    pub actor: &'a str,
}

impl<'a> NewLog<'a> {
    /// A transition of one device's inbox entry made by the broker (delivery, failure, expiry).
    fn by_broker(a: &'a DeviceAddr, command_id: &'a str, state: CommandState, attempt: u32) -> Self {
        NewLog {
            tenant_id: &a.tenant_id,
            store_id: &a.store_id,
            command_id,
            device_id: Some(&a.device_id),
            state,
            attempt,
            code: None,
            detail: "",
            actor: BY_BROKER,
        }
    }
}

pub async fn insert_log(tx: &mut PgConnection, l: NewLog<'_>) -> Result<LogRow, sqlx::Error> {
    let at_ms = crate::now_ms();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO command_log (tenant_id, store_id, command_id, device_id, state, attempt, code, detail, actor, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(l.tenant_id)
    .bind(l.store_id)
    .bind(l.command_id)
    .bind(l.device_id)
    .bind(l.state.as_str())
    .bind(l.attempt as i32)
    .bind(l.code)
    .bind(l.detail)
    .bind(l.actor)
    .bind(ts(at_ms))
    .fetch_one(&mut *tx)
    .await?;
    Ok(LogRow {
        id,
        tenant_id: l.tenant_id.into(),
        store_id: l.store_id.into(),
        command_id: l.command_id.into(),
        device_id: l.device_id.map(Into::into),
        state: l.state,
        attempt: l.attempt,
        code: l.code.map(Into::into),
        detail: l.detail.into(),
        at_ms,
        corrects: None,
    })
}

/// The parts of a command row intake writes; `envelope` is what arrived.
pub struct CommandRow<'a> {
    pub tenant_id: &'a str,
    pub store_id: &'a str,
    pub command_id: &'a str,
    pub device_id: Option<&'a str>,
    pub kind: &'a str,
    pub envelope: &'a [u8],
    pub requested_by: &'a str,
    pub approvers: Vec<String>,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
}

impl<'a> CommandRow<'a> {
    pub fn of(cmd: &'a CommandEnvelope, envelope: &'a [u8]) -> Self {
        CommandRow {
            tenant_id: &cmd.tenant_id,
            store_id: &cmd.store_id,
            command_id: &cmd.command_id,
            device_id: cmd.device_id.as_deref(),
            kind: cmd.body.kind(),
            envelope,
            requested_by: &cmd.requested_by,
            approvers: cmd.approvals.iter().map(|a| a.approver.clone()).collect(),
            issued_at_ms: cmd.issued_at_ms,
            expires_at_ms: cmd.expires_at_ms,
        }
    }
}

/// $1..$12 of the rejected-command insert: the `commands` columns, in table order.
fn command_args(
    c: &CommandRow<'_>,
    received_at_ms: i64,
    rejected_code: Option<&str>,
) -> Result<PgArguments, sqlx::Error> {
    let mut a = PgArguments::default();
    let mut add = || -> Result<(), sqlx::error::BoxDynError> {
        a.add(c.tenant_id.to_string())?;
        a.add(c.store_id.to_string())?;
        a.add(c.command_id.to_string())?;
        a.add(c.device_id.map(str::to_string))?;
        a.add(c.kind.to_string())?;
        a.add(c.envelope.to_vec())?;
        a.add(c.requested_by.to_string())?;
        a.add(c.approvers.clone())?;
        a.add(ts(c.issued_at_ms))?;
        a.add(ts(c.expires_at_ms))?;
        a.add(ts(received_at_ms))?;
        a.add(rejected_code.map(str::to_string))
    };
    add().map_err(sqlx::Error::Encode)?;
    Ok(a)
}

pub const COMMAND_COLUMNS: &str = "commands (tenant_id, store_id, command_id, device_id, kind, envelope, requested_by,
    approvers, issued_at, expires_at, received_at, rejected_code)";

/// Inserts the command row; `false` when the command id was seen before (idempotent intake).
async fn insert_command(
    tx: &mut PgConnection,
    c: &CommandRow<'_>,
    rejected_code: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "INSERT INTO {COMMAND_COLUMNS} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (tenant_id, command_id) DO NOTHING"
    );
    let inserted = sqlx::query_with(&sql, command_args(c, crate::now_ms(), rejected_code)?)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    Ok(inserted == 1)
}

/// Ends a command waiting for approval with `code` (rejected by an approver, expired, no
/// device left at release); `false` when it no longer waits (released, ended before).
pub async fn end_pending(
    tx: &mut PgConnection,
    tenant: &str,
    command_id: &str,
    code: &str,
) -> Result<bool, sqlx::Error> {
    let ended = sqlx::query(
        "UPDATE commands SET pending_approval = false, rejected_code = $3
         WHERE tenant_id = $1 AND command_id = $2 AND pending_approval",
    )
    .bind(tenant)
    .bind(command_id)
    .bind(code)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(ended == 1)
}

/// Whether a refusal may end a command of the same id that waits for approval: only one about
/// that very command (its release found no device), never a new message reusing its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverPending {
    Leave,
    End,
}

/// Records a command refused at intake. `None` for a duplicate.
pub async fn reject(
    pool: &PgPool,
    fence: Fence,
    c: &CommandRow<'_>,
    code: &str,
    detail: &str,
    over: OverPending,
) -> Result<Option<LogRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    crate::partitions::fence::check(&mut tx, fence).await?;
    let recorded = insert_command(&mut tx, c, Some(code)).await?
        || (over == OverPending::End && end_pending(&mut tx, c.tenant_id, c.command_id, code).await?);
    if !recorded {
        return Ok(None);
    }
    let log = NewLog {
        tenant_id: c.tenant_id,
        store_id: c.store_id,
        command_id: c.command_id,
        device_id: c.device_id,
        state: CommandState::Rejected,
        attempt: 0,
        code: Some(code),
        detail,
        actor: BY_BROKER,
    };
    let row = insert_log(&mut tx, log).await?;
    tx.commit().await?;
    Ok(Some(row))
}

/// Records a command that waits for approvals: the command row marked `pending_approval`,
/// no inbox entry, and a `pending_approval` log row. `None` for a command id seen before.
pub async fn hold(
    pool: &PgPool,
    fence: Fence,
    c: &CommandRow<'_>,
    detail: &str,
) -> Result<Option<LogRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    crate::partitions::fence::check(&mut tx, fence).await?;
    if !insert_command(&mut tx, c, None).await? {
        return Ok(None);
    }
    sqlx::query("UPDATE commands SET pending_approval = true WHERE tenant_id = $1 AND command_id = $2")
        .bind(c.tenant_id)
        .bind(c.command_id)
        .execute(&mut *tx)
        .await?;
    let log = NewLog {
        tenant_id: c.tenant_id,
        store_id: c.store_id,
        command_id: c.command_id,
        device_id: None,
        state: CommandState::PendingApproval,
        attempt: 0,
        code: None,
        detail,
        actor: BY_PORTAL,
    };
    let row = insert_log(&mut tx, log).await?;
    tx.commit().await?;
    Ok(Some(row))
}

/// Online, then an unfinished entry's columns (all NULL when the device has none).
type InboxTuple = (
    Option<bool>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i32>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<DateTime<Utc>>,
);

/// A device's unfinished commands in issue order, and whether the device is online.
pub async fn load_inbox(pool: &PgPool, a: &DeviceAddr) -> Result<(Vec<PendingEntry>, bool), sqlx::Error> {
    // One query: the device row (is it online?) with its unfinished entries, if any.
    let rows: Vec<InboxTuple> = sqlx::query_as(
        "SELECT d.online, i.command_id, i.inbox_seq, i.state, i.attempts, i.next_attempt_at, i.expires_at,
                i.stream_seq, i.published_at
         FROM (SELECT bool_or(online) AS online FROM devices
               WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3) d
         LEFT JOIN command_inbox i
           ON i.tenant_id = $1 AND i.store_id = $2 AND i.device_id = $3 AND i.state IN ('queued', 'delivered')
         ORDER BY i.inbox_seq",
    )
    .bind(&a.tenant_id)
    .bind(&a.store_id)
    .bind(&a.device_id)
    .fetch_all(pool)
    .await?;
    let online = rows.first().is_some_and(|r| r.0 == Some(true));
    let pending = rows
        .into_iter()
        .filter_map(|(_, id, seq, state, attempts, next, expires, stream_seq, published)| {
            Some((id?, seq?, state?, attempts?, next, expires?, stream_seq, published))
        })
        .map(|(command_id, inbox_seq, state, attempts, next, expires, stream_seq, published)| PendingEntry {
            command_id,
            inbox_seq,
            state: CommandState::parse(&state).unwrap_or(CommandState::Queued),
            attempts: attempts.max(0) as u32,
            next_attempt_at_ms: next.map_or(0, |t| t.timestamp_millis()),
            expires_at_ms: expires.timestamp_millis(),
            stream_seq: stream_seq.map(|s| s.max(0) as u64),
            published_at_ms: published.map_or(0, |t| t.timestamp_millis()),
        })
        .collect();
    Ok((pending, online))
}

/// Records delivery `attempt` if the entry is still unfinished, unexpired and at `attempt - 1`;
/// returns the envelope to publish and the log row.
pub async fn deliver(
    pool: &PgPool,
    a: &DeviceAddr,
    command_id: &str,
    attempt: u32,
    next_attempt_at_ms: i64,
    now_ms: i64,
) -> Result<Option<(Vec<u8>, LogRow)>, sqlx::Error> {
    let at_ms = crate::now_ms();
    // The transition and its log row in one statement (one round trip, one transaction),
    // committed without waiting for the WAL flush: a delivery acks no JetStream message, and
    // losing it in a crash only rolls the entry back to the attempt before, whose redelivery
    // reuses this attempt's `Nats-Msg-Id` (dropped by the stream as a duplicate). Any later
    // transition of the entry (an ack) waits for a flush that includes this commit.
    let found: Option<(Vec<u8>, i64)> = sqlx::query_as(
        "WITH async AS (SELECT set_config('synchronous_commit', 'off', true)),
         upd AS (
           UPDATE command_inbox i SET state = $9, attempts = $5, next_attempt_at = $6, updated_at = now(),
                                      stream_seq = NULL, published_at = $8
           FROM commands c, async
           WHERE i.tenant_id = $1 AND i.store_id = $2 AND i.device_id = $3 AND i.command_id = $4
             AND i.state IN ('queued', 'delivered') AND i.attempts = $5 - 1 AND i.expires_at > $7
             AND c.tenant_id = i.tenant_id AND c.command_id = i.command_id
           RETURNING c.envelope
         ), log AS (
           INSERT INTO command_log (tenant_id, store_id, command_id, device_id, state, attempt, code, detail, actor, at)
           SELECT $1, $2, $4, $3, $9, $5, NULL, '', $10, $8 FROM upd
           RETURNING id
         )
         SELECT upd.envelope, log.id FROM upd, log",
    )
    .bind(&a.tenant_id)
    .bind(&a.store_id)
    .bind(&a.device_id)
    .bind(command_id)
    .bind(attempt as i32)
    .bind(ts(next_attempt_at_ms))
    .bind(ts(now_ms))
    .bind(ts(at_ms))
    .bind(CommandState::Delivered.as_str())
    .bind(BY_BROKER)
    .fetch_optional(pool)
    .await?;
    Ok(found.map(|(envelope, id)| {
        let row = LogRow {
            id,
            tenant_id: a.tenant_id.clone(),
            store_id: a.store_id.clone(),
            command_id: command_id.into(),
            device_id: Some(a.device_id.clone()),
            state: CommandState::Delivered,
            attempt,
            code: None,
            detail: String::new(),
            at_ms,
            corrects: None,
        };
        (envelope, row)
    }))
}

/// The envelope of copy `attempt` again, for a publish whose PubAck was never recorded (the
/// same `Nats-Msg-Id`, so the stream drops it if the first one got through): only if the
/// entry is unfinished, still at `attempt` and without a stream sequence. No log row: it is
/// the same delivery.
pub async fn unconfirmed(
    pool: &PgPool,
    a: &DeviceAddr,
    command_id: &str,
    attempt: u32,
    next_attempt_at_ms: i64,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE command_inbox i SET next_attempt_at = $6, updated_at = now()
         FROM commands c
         WHERE i.tenant_id = $1 AND i.store_id = $2 AND i.device_id = $3 AND i.command_id = $4
           AND i.state = 'delivered' AND i.attempts = $5 AND i.stream_seq IS NULL
           AND c.tenant_id = i.tenant_id AND c.command_id = i.command_id
         RETURNING c.envelope",
    )
    .bind(&a.tenant_id)
    .bind(&a.store_id)
    .bind(&a.device_id)
    .bind(command_id)
    .bind(attempt as i32)
    .bind(ts(next_attempt_at_ms))
    .fetch_optional(pool)
    .await
}

/// Moves an unfinished entry's next check.
pub async fn reschedule(
    pool: &PgPool,
    a: &DeviceAddr,
    command_id: &str,
    next_attempt_at_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE command_inbox SET next_attempt_at = $5
         WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3 AND command_id = $4
           AND state IN ('queued', 'delivered')",
    )
    .bind(&a.tenant_id)
    .bind(&a.store_id)
    .bind(&a.device_id)
    .bind(command_id)
    .bind(ts(next_attempt_at_ms))
    .execute(pool)
    .await?;
    Ok(())
}

/// Records the stream sequences the PubAcks of published copies gave: (device, command id,
/// sequence). Whatever the entry's state: a copy of a command that ended meanwhile is listed
/// so that it gets deleted.
pub async fn record_copies(pool: &PgPool, published: &[(DeviceAddr, String, u64)]) -> Result<(), sqlx::Error> {
    if published.is_empty() {
        return Ok(());
    }
    let col = |f: &dyn Fn(&(DeviceAddr, String, u64)) -> String| published.iter().map(f).collect::<Vec<String>>();
    sqlx::query(
        "UPDATE command_inbox i SET stream_seq = u.seq, copies = array_append(i.copies, u.seq)
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(tenant_id, command_id, device_id, seq)
         WHERE i.tenant_id = u.tenant_id AND i.command_id = u.command_id AND i.device_id = u.device_id
           AND NOT (u.seq = ANY(i.copies))",
    )
    .bind(col(&|p| p.0.tenant_id.clone()))
    .bind(col(&|p| p.1.clone()))
    .bind(col(&|p| p.0.device_id.clone()))
    .bind(published.iter().map(|p| p.2 as i64).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}

/// Copies of one command (in one tenant) that may still be in TILLSYNC_COMMANDS.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Copies {
    pub tenant_id: String,
    pub command_id: String,
    pub copies: Vec<i64>,
}

/// Entries that ended and may still have copies in TILLSYNC_COMMANDS.
pub async fn final_with_copies(pool: &PgPool, limit: i64) -> Result<Vec<Copies>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id, command_id, copies FROM command_inbox
         WHERE state NOT IN ('queued', 'delivered') AND copies <> '{}' ORDER BY updated_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Forgets copies deleted from the stream (stream sequences are unique, so one list serves
/// every entry).
pub async fn clear_copies(pool: &PgPool, entries: &[Copies], deleted: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE command_inbox i SET copies = array(SELECT x FROM unnest(i.copies) x WHERE x <> ALL($3))
         FROM UNNEST($1::text[], $2::text[]) AS u(tenant_id, command_id)
         WHERE i.tenant_id = u.tenant_id AND i.command_id = u.command_id AND i.copies && $3",
    )
    .bind(entries.iter().map(|e| e.tenant_id.clone()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.command_id.clone()).collect::<Vec<_>>())
    .bind(deleted)
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends an unfinished entry as `failed` or `expired`; `None` if it had already finished.
/// Returns the log row and the copies to delete from the stream.
pub async fn finish(
    pool: &PgPool,
    a: &DeviceAddr,
    command_id: &str,
    state: CommandState,
    code: &str,
    detail: &str,
) -> Result<Option<(LogRow, Vec<i64>)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found: Option<(i32, Vec<i64>)> = sqlx::query_as(
        "UPDATE command_inbox SET state = $5, last_code = $6, next_attempt_at = NULL, updated_at = now()
         WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3 AND command_id = $4
           AND state IN ('queued', 'delivered')
         RETURNING attempts, copies",
    )
    .bind(&a.tenant_id)
    .bind(&a.store_id)
    .bind(&a.device_id)
    .bind(command_id)
    .bind(state.as_str())
    .bind(code)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((attempts, copies)) = found else { return Ok(None) };
    let log = NewLog { code: Some(code), detail, ..NewLog::by_broker(a, command_id, state, attempts.max(0) as u32) };
    let row = insert_log(&mut tx, log).await?;
    tx.commit().await?;
    Ok(Some((row, copies)))
}

type LogTuple =
    (i64, String, String, String, Option<String>, String, i32, Option<String>, String, DateTime<Utc>, Option<String>);

/// Ends commands that expired still waiting for approval: `rejected` with code `expired`
/// (never delivered), a log row each, left for the caller to publish. At most `limit`.
pub async fn expire_pending(pool: &PgPool, limit: i64) -> Result<Vec<LogRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ended: Vec<(String, String, String)> = sqlx::query_as(
        "UPDATE commands SET pending_approval = false, rejected_code = 'expired'
         WHERE (tenant_id, command_id) IN (
           SELECT tenant_id, command_id FROM commands WHERE pending_approval AND expires_at <= now()
           ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING tenant_id, store_id, command_id",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut rows = Vec::with_capacity(ended.len());
    for (tenant_id, store_id, command_id) in &ended {
        let log = NewLog {
            tenant_id,
            store_id,
            command_id,
            device_id: None,
            state: CommandState::Rejected,
            attempt: 0,
            code: Some(tillsync_actors::policy::EXPIRED_CODE),
            detail: "expired waiting for approval",
            actor: BY_BROKER,
        };
        rows.push(insert_log(&mut tx, log).await?);
    }
    tx.commit().await?;
    Ok(rows)
}

/// Log rows whose status never went out (the broker stopped in between), oldest first.
pub async fn unpublished(pool: &PgPool, older_than_ms: i64, limit: i64) -> Result<Vec<LogRow>, sqlx::Error> {
    let rows: Vec<LogTuple> = sqlx::query_as(
        "SELECT id, tenant_id, store_id, command_id, device_id, state, attempt, code, detail, at, corrects
         FROM command_log WHERE NOT published AND at < $1 ORDER BY id LIMIT $2",
    )
    .bind(ts(crate::now_ms() - older_than_ms))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, tenant_id, store_id, command_id, device_id, state, attempt, code, detail, at, corrects)| {
            Some(LogRow {
                id,
                tenant_id,
                store_id,
                command_id,
                device_id,
                state: CommandState::parse(&state)?,
                attempt: attempt.max(0) as u32,
                code,
                detail,
                at_ms: at.timestamp_millis(),
                corrects: corrects.as_deref().and_then(CommandState::parse),
            })
        })
        .collect())
}

/// Marks status rows published.
///
/// Committed without waiting for the WAL flush (`synchronous_commit` off for this statement's
/// transaction only): the flag only spares the sweeper a republish, so losing it in a crash
/// costs one repeated status message, which the stream's duplicate window drops anyway.
pub async fn mark_published(pool: &PgPool, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH async AS (SELECT set_config('synchronous_commit', 'off', true))
         UPDATE command_log SET published = true FROM async WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(())
}

/// Devices with something due at `now`: an expiry, a first delivery the device can take
/// (online), or the check of a published copy (online or not: the stream is asked, not the
/// device).
pub async fn due_devices(pool: &PgPool, now_ms: i64, limit: i64) -> Result<Vec<DeviceAddr>, sqlx::Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT DISTINCT i.tenant_id, i.store_id, i.device_id FROM command_inbox i
         LEFT JOIN devices d ON d.tenant_id = i.tenant_id AND d.store_id = i.store_id AND d.device_id = i.device_id
         WHERE i.state IN ('queued', 'delivered')
           AND (i.expires_at <= $1
                OR (i.next_attempt_at <= $1 AND (i.state = 'delivered' OR coalesce(d.online, false))))
         LIMIT $2",
    )
    .bind(ts(now_ms))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(t, s, d)| DeviceAddr::new(t, s, d)).collect())
}

/// Inbox depth (queued plus delivered-not-acked) and oldest pending age, seconds, for every
/// tenant (zero when its inbox is empty, so a gauge never keeps a stale value).
/// Per tenant: commands queued or delivered and the age of the oldest, and commands waiting
/// for approvals and the age of the oldest (seconds, 0 when none).
pub async fn depth_by_tenant(pool: &PgPool) -> Result<Vec<(String, i64, f64, i64, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.tenant_id, i.depth, i.oldest, a.waiting, a.oldest
         FROM tenants t
         CROSS JOIN LATERAL (
           SELECT count(*) AS depth, coalesce(EXTRACT(EPOCH FROM (now() - min(created_at)))::float8, 0) AS oldest
           FROM command_inbox WHERE tenant_id = t.tenant_id AND state IN ('queued', 'delivered')) i
         CROSS JOIN LATERAL (
           SELECT count(*) AS waiting, coalesce(EXTRACT(EPOCH FROM (now() - min(received_at)))::float8, 0) AS oldest
           FROM commands WHERE tenant_id = t.tenant_id AND pending_approval) a",
    )
    .fetch_all(pool)
    .await
}
