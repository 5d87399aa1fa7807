//! Cancelling a command, on the portal's request: a [`CommandCancel`] on
//! `tillsync.intake.<tenant>.<store>._cancel`. It travels on the intake stream, so it is
//! durable and the intake consumer of the store's partition takes it after every command
//! published before it: a cancel always finds the command it names.
//!
//! Every copy not yet final ends `cancelled` (final), its copies are deleted from the device's
//! stream before the portal hears of it, so a device that has not taken it never applies it.
//! A copy already final is left alone and answered with a status repeating its state with
//! code `cancel_refused` (for `acked`: the device applied it). A device that had already taken
//! the command may still apply it: its `applied` ack then corrects the `cancelled` (see
//! [`super::ack_sql`]).

use crate::error::Chain;
use crate::partitions::Fence;
use async_nats::jetstream::Message;
use sqlx::PgPool;
use tillsync_schemas::command::{CANCELLED, CANCEL_REFUSED};
use tillsync_schemas::subject::{self, Family};
use tillsync_schemas::{codec, streams as names, CommandCancel, CommandState, DeviceAddr, Reason, WireError};

use super::sql::{insert_log, Copies, LogRow, NewLog, BY_BROKER, BY_PORTAL};
use super::{copies, publish, CommandError};
use crate::spine::Verdict;
use crate::{metrics, Ctx};

/// Is this intake message a cancel?
pub fn is_cancel(subject: &str) -> bool {
    subject::parse(subject).is_ok_and(|p| p.family == Family::Intake && p.last == subject::CANCEL)
}

/// Cancels what the (admitted) cancel names and tells the portal; a cancel of a command not
/// known in its store is to be quarantined.
pub async fn handle(ctx: &Ctx, fence: Fence, req: &CommandCancel) -> Result<Verdict, CommandError> {
    let Some(done) = cancel(&ctx.pool, Some(fence), req).await? else {
        metrics::command_cancel_refused("unknown");
        let e = WireError::new(
            Reason::UnknownCommand,
            format!("cancel of command {} not known in store {}", req.command_id, req.store_id),
        );
        return Ok(Verdict::Quarantine(e));
    };
    let to_delete: Vec<Copies> = done
        .iter()
        .filter(|(_, c)| !c.is_empty())
        .map(|(_, c)| Copies {
            tenant_id: req.tenant_id.clone(),
            command_id: req.command_id.clone(),
            copies: c.clone(),
        })
        .collect();
    // Deleted before the portal hears `cancelled`; one left (NATS unavailable) stays listed
    // and the sweeper deletes it within a second of NATS answering again.
    if let Err(error) = copies::purge(&ctx.js, &ctx.pool, &to_delete).await {
        tracing::warn!(error = %Chain(&error), command_id = %req.command_id, "Cancelled command's copies not deleted; the sweeper retries.");
    }
    for (row, _) in &done {
        match row.state {
            CommandState::Cancelled => metrics::command_cancelled(),
            _ => metrics::command_cancel_refused("final"),
        }
        tracing::info!(command_id = %row.command_id, device_id = ?row.device_id, state = row.state.as_str(), requested_by = %req.requested_by, "Command cancel.");
    }
    let rows: Vec<LogRow> = done.into_iter().map(|(r, _)| r).collect();
    if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &rows).await {
        tracing::warn!(error = %Chain(&error), "Cancel status not published; the sweeper retries it.");
    }
    Ok(Verdict::Done)
}

/// Decodes a cancel and checks it names its subject's store.
pub(super) fn decode(subj: &str, payload: &[u8]) -> Result<CommandCancel, WireError> {
    let req: CommandCancel = codec::decode(payload)?;
    req.validate()?;
    check_store_subject(subj, &req.tenant_id, &req.store_id, "cancel")?;
    Ok(req)
}

/// A store-level intake message (cancel, decision) names the tenant and store of its subject.
pub(super) fn check_store_subject(subj: &str, tenant: &str, store: &str, what: &str) -> Result<(), WireError> {
    let parsed = subject::parse(subj)?;
    if parsed.tenant_id != tenant || parsed.store_id != store {
        return Err(WireError::new(
            Reason::SubjectMismatch,
            format!("subject names {}/{} but the {what} names {tenant}/{store}", parsed.tenant_id, parsed.store_id),
        ));
    }
    Ok(())
}

/// Quarantines a decision message the approvals refused for good; `Ok(true)`: terminate it.
pub(super) async fn quarantine(ctx: &Ctx, fence: Fence, msg: &Message, e: &WireError) -> Result<bool, CommandError> {
    crate::quarantine::record(&ctx.pool, fence, names::INTAKE, msg, e).await?;
    metrics::command_rejected(e.reason.as_str());
    Ok(true)
}

/// One inbox entry, locked: device, state, attempts, copies.
type Entry = (String, String, i32, Vec<i64>);

/// Cancels every unfinished copy of a command in one transaction. `None`: no such command in
/// that store. Otherwise a log row per copy (`cancelled`, or its final state with code
/// `cancel_refused`; none for one already cancelled, so a repeated cancel changes nothing)
/// with the copies to delete from the stream.
pub async fn cancel(
    pool: &PgPool,
    fence: Option<Fence>,
    req: &CommandCancel,
) -> Result<Option<Vec<(LogRow, Vec<i64>)>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(f) = fence {
        crate::partitions::fence::check(&mut tx, f).await?;
    }
    let known: Option<bool> = sqlx::query_scalar(
        "SELECT pending_approval FROM commands WHERE tenant_id = $1 AND store_id = $2 AND command_id = $3",
    )
    .bind(&req.tenant_id)
    .bind(&req.store_id)
    .bind(&req.command_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(pending) = known else { return Ok(None) };
    let by = format!("cancel requested by {}", req.requested_by);
    if pending && super::sql::end_pending(&mut tx, &req.tenant_id, &req.command_id, CANCELLED).await? {
        // Waiting for approval: never delivered, so cancelled outright.
        let row = insert_log(&mut tx, log(req, None, CommandState::Cancelled, 0, CANCELLED, &by)).await?;
        tx.commit().await?;
        return Ok(Some(vec![(row, vec![])]));
    }
    let entries: Vec<Entry> = sqlx::query_as(
        "SELECT device_id, state, attempts, copies FROM command_inbox
         WHERE tenant_id = $1 AND command_id = $2 ORDER BY device_id FOR UPDATE",
    )
    .bind(&req.tenant_id)
    .bind(&req.command_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Vec::new();
    if entries.is_empty() {
        // Rejected at intake (or by an approver): never delivered, nothing to cancel.
        let detail = format!("{by}: the command was rejected");
        let row = insert_log(&mut tx, log(req, None, CommandState::Rejected, 0, CANCEL_REFUSED, &detail)).await?;
        out.push((row, vec![]));
    }
    for (device, state, attempts, copies) in &entries {
        let state = CommandState::parse(state).unwrap_or(CommandState::Queued);
        let attempt = (*attempts).max(0) as u32;
        if state == CommandState::Cancelled {
            continue;
        }
        if state.is_final() {
            let detail = format!("{by}: too late, the copy already ended {}", state.as_str());
            let row =
                insert_log(&mut tx, log(req, Some(device.as_str()), state, attempt, CANCEL_REFUSED, &detail)).await?;
            out.push((row, vec![]));
            continue;
        }
        sqlx::query(
            "UPDATE command_inbox SET state = $4, last_code = $5, next_attempt_at = NULL, updated_at = now()
             WHERE tenant_id = $1 AND command_id = $2 AND device_id = $3",
        )
        .bind(&req.tenant_id)
        .bind(&req.command_id)
        .bind(device)
        .bind(CommandState::Cancelled.as_str())
        .bind(CANCELLED)
        .execute(&mut *tx)
        .await?;
        let row =
            insert_log(&mut tx, log(req, Some(device.as_str()), CommandState::Cancelled, attempt, CANCELLED, &by))
                .await?;
        out.push((row, copies.clone()));
    }
    tx.commit().await?;
    Ok(Some(out))
}

/// The log row of a cancel's answer about one copy (or, `device_id` nil, the whole command).
fn log<'a>(
    req: &'a CommandCancel,
    device_id: Option<&'a str>,
    state: CommandState,
    attempt: u32,
    code: &'a str,
    detail: &'a str,
) -> NewLog<'a> {
    NewLog {
        tenant_id: &req.tenant_id,
        store_id: &req.store_id,
        command_id: &req.command_id,
        device_id,
        state,
        attempt,
        code: Some(code),
        detail,
        actor: BY_PORTAL,
    }
}

/// Cancels every unfinished inbox entry of one device that is being decommissioned, in the
/// caller's transaction; returns how many. Each gets a `cancelled` log row, left unpublished
/// for the sweeper to tell the portal, and its copies are left listed for the sweeper to
/// delete: the CLI that calls this holds no broker state. The broker's own transitions only
/// move entries still `queued` or `delivered`, so none undoes this.
pub async fn withdraw_device(tx: &mut sqlx::PgConnection, a: &DeviceAddr, detail: &str) -> Result<u64, sqlx::Error> {
    let entries: Vec<(String, i32)> = sqlx::query_as(
        "UPDATE command_inbox SET state = $4, last_code = $5, next_attempt_at = NULL, updated_at = now()
         WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3 AND state IN ('queued', 'delivered')
         RETURNING command_id, attempts",
    )
    .bind(&a.tenant_id)
    .bind(&a.store_id)
    .bind(&a.device_id)
    .bind(CommandState::Cancelled.as_str())
    .bind(CANCELLED)
    .fetch_all(&mut *tx)
    .await?;
    for (command_id, attempts) in &entries {
        let row = NewLog {
            tenant_id: &a.tenant_id,
            store_id: &a.store_id,
            command_id,
            device_id: Some(&a.device_id),
            state: CommandState::Cancelled,
            attempt: (*attempts).max(0) as u32,
            code: Some(CANCELLED),
            detail,
            actor: BY_BROKER,
        };
        insert_log(&mut *tx, row).await?;
    }
    Ok(entries.len() as u64)
}
