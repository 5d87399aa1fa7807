//! Approvals of commands that wait for them: an approver's [`CommandDecision`] on
//! `tillsync.intake.<tenant>.<store>._approve`. It travels on the intake stream, so the intake
//! consumer of the store's partition takes it after the command it decides.
//!
//! A decision counts only as a signature over the recorded command by the key registered for
//! that approver in the tenant (`approvers`), from someone other than the requester, once per
//! approver; anything else is recorded with its code and answered with a `pending_approval`
//! status carrying that code. A counted `reject` ends the command `rejected`
//! (`approval_rejected`). Once the approvals reach what the kind needs, the command is
//! *released*: its envelope with every signed approval attached is published on its intake
//! subject, and intake checks it again like any command and delivers it. A release is
//! idempotent (its `Nats-Msg-Id`, and intake only releases a command still waiting), so a
//! decision whose release was not confirmed is redelivered and releases again.

use std::collections::HashMap;

use async_nats::jetstream::Message;
use async_nats::HeaderMap;
use sqlx::PgPool;
use tillsync_actors::policy;
use tillsync_schemas::subject::{self, Family};
use tillsync_schemas::{
    codec, streams as names, Approval, CommandDecision, CommandEnvelope, CommandState, Decision, Reason, WireError,
};

use super::cancel::quarantine;
use super::sql::{self, insert_log, LogRow, NewLog, BY_PORTAL};
use super::{publish, CommandError};
use crate::error::Chain;
use crate::partitions::Fence;
use crate::{metrics, Ctx};

/// Is this intake message an approver's decision?
pub fn is_decision(subject: &str) -> bool {
    subject::parse(subject).is_ok_and(|p| p.family == Family::Intake && p.last == subject::APPROVE)
}

/// The registered, unrevoked public keys of these approvers of `tenant`.
pub async fn keys(pool: &PgPool, tenant: &str, names: &[&str]) -> Result<HashMap<String, String>, sqlx::Error> {
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT approver_id, public_key FROM approvers
         WHERE tenant_id = $1 AND approver_id = ANY($2) AND revoked_at IS NULL",
    )
    .bind(tenant)
    .bind(names)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Approver keys by (tenant, approver) for every pair named, in one query (an intake batch's).
pub async fn keys_of(
    pool: &PgPool,
    pairs: &[(String, String)],
) -> Result<HashMap<(String, String), String>, sqlx::Error> {
    if pairs.is_empty() {
        return Ok(HashMap::new());
    }
    let (tenants, names): (Vec<&str>, Vec<&str>) = pairs.iter().map(|(t, a)| (t.as_str(), a.as_str())).unzip();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT a.tenant_id, a.approver_id, a.public_key
         FROM approvers a JOIN unnest($1::text[], $2::text[]) AS n(tenant_id, approver_id)
           ON a.tenant_id = n.tenant_id AND a.approver_id = n.approver_id
         WHERE a.revoked_at IS NULL",
    )
    .bind(&tenants)
    .bind(&names)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(t, a, k)| ((t, a), k)).collect())
}

/// A recorded command as a decision finds it.
struct Recorded {
    cmd: CommandEnvelope,
    pending: bool,
    /// Counted approvals: those it arrived with, then the counted `approve` decisions.
    approvals: Vec<Approval>,
}

/// Handles one decision `d` (admitted by intake) of `msg`; `Ok(true)`: terminate the message
/// (quarantined), else ack it.
pub async fn handle(ctx: &Ctx, fence: Fence, msg: &Message, d: &CommandDecision) -> Result<bool, CommandError> {
    let Some(rec) = load(&ctx.pool, d).await? else {
        let e = WireError::new(
            Reason::UnknownCommand,
            format!("decision about command {} not known in store {}", d.command_id, d.store_id),
        );
        return quarantine(ctx, fence, msg, &e).await;
    };
    let key = keys(&ctx.pool, &d.tenant_id, &[d.approver.as_str()]).await?.remove(&d.approver);
    let approved: Vec<String> = rec.approvals.iter().map(|a| a.approver.clone()).collect();
    let verdict = if rec.pending {
        policy::check_decision(&rec.cmd, &approved, d, key.as_deref())
    } else {
        Err(WireError::new(
            Reason::NotPendingApproval,
            format!("command {} no longer waits for approval", d.command_id),
        ))
    };
    // The same counted decision again (its release was not confirmed): release again.
    let replay = rec.approvals.iter().any(|a| a.approver == d.approver && a.signature.as_ref() == Some(&d.signature));
    let need = rec.cmd.body.required_approvals();
    let logs = if replay {
        vec![]
    } else {
        let row = record(&ctx.pool, fence, d, &rec, verdict.as_ref().err(), need).await?;
        metrics::approval_decision(
            d.decision.as_str(),
            verdict.as_ref().map_or_else(|e| e.reason.as_str(), |_| "counted"),
        );
        match &verdict {
            Ok(()) => {
                tracing::info!(command_id = %d.command_id, approver = %d.approver, decision = d.decision.as_str(), "Approval decision counted.")
            }
            Err(e) => {
                tracing::warn!(command_id = %d.command_id, approver = %d.approver, reason = %e.reason, detail = %e.detail, "Approval decision refused.")
            }
        }
        row.into_iter().collect()
    };
    if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &logs).await {
        tracing::warn!(error = %Chain(&error), "Approval status not published; the sweeper retries it.");
    }
    let counted = rec.approvals.len() + usize::from(verdict.is_ok() && !replay);
    if rec.pending && d.decision == Decision::Approve && (verdict.is_ok() || replay) && counted >= need {
        let mut approvals = rec.approvals;
        if !replay {
            approvals.push(Approval {
                approver: d.approver.clone(),
                role: "approver".into(),
                approved_at_ms: d.at_ms,
                signature: Some(d.signature.clone()),
            });
        }
        release(ctx, CommandEnvelope { approvals, ..rec.cmd }).await?;
    }
    Ok(false)
}

pub(super) fn decode(subj: &str, payload: &[u8]) -> Result<CommandDecision, WireError> {
    let d: CommandDecision = codec::decode(payload)?;
    d.validate()?;
    super::cancel::check_store_subject(subj, &d.tenant_id, &d.store_id, "decision")?;
    Ok(d)
}

/// The command the decision names, in the store its subject names. `None`: not known there.
async fn load(pool: &PgPool, d: &CommandDecision) -> Result<Option<Recorded>, CommandError> {
    let row: Option<(Vec<u8>, bool)> = sqlx::query_as(
        "SELECT envelope, pending_approval FROM commands WHERE tenant_id = $1 AND store_id = $2 AND command_id = $3",
    )
    .bind(&d.tenant_id)
    .bind(&d.store_id)
    .bind(&d.command_id)
    .fetch_optional(pool)
    .await?;
    let Some((envelope, pending)) = row else { return Ok(None) };
    let mut cmd: CommandEnvelope = codec::decode(&envelope).map_err(CommandError::Stored)?;
    let decided: Vec<(String, String, sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc>)> = sqlx::query_as(
        "SELECT approver_id, signature, at FROM command_decisions
         WHERE tenant_id = $1 AND command_id = $2 AND code IS NULL AND decision = 'approve' ORDER BY id",
    )
    .bind(&d.tenant_id)
    .bind(&d.command_id)
    .fetch_all(pool)
    .await?;
    let mut approvals = std::mem::take(&mut cmd.approvals);
    approvals.extend(decided.into_iter().map(|(approver, signature, at)| Approval {
        approver,
        role: "approver".into(),
        approved_at_ms: at.timestamp_millis(),
        signature: Some(signature),
    }));
    Ok(Some(Recorded { cmd, pending, approvals }))
}

/// Records the decision and its effect in one transaction: a counted `reject` ends the
/// command; every other outcome is a `pending_approval` log row (with the refusal's code).
/// A decision about a command that no longer waits is recorded without a status.
async fn record(
    pool: &PgPool,
    fence: Fence,
    d: &CommandDecision,
    rec: &Recorded,
    refused: Option<&WireError>,
    need: usize,
) -> Result<Option<LogRow>, CommandError> {
    let mut tx = pool.begin().await?;
    crate::partitions::fence::check(&mut tx, fence).await?;
    sqlx::query(
        "INSERT INTO command_decisions (tenant_id, command_id, approver_id, decision, signature, code)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&d.tenant_id)
    .bind(&d.command_id)
    .bind(&d.approver)
    .bind(d.decision.as_str())
    .bind(&d.signature)
    .bind(refused.map(|e| e.reason.as_str()))
    .execute(&mut *tx)
    .await?;
    let (state, code, detail) = match (refused, d.decision) {
        (Some(e), _) if e.reason == Reason::NotPendingApproval => {
            tx.commit().await?;
            return Ok(None);
        }
        (Some(e), _) => (
            CommandState::PendingApproval,
            Some(e.reason.as_str()),
            format!("{} refused: {}", d.decision.as_str(), e.detail),
        ),
        (None, Decision::Reject) => {
            let code = Reason::ApprovalRejected.as_str();
            sql::end_pending(&mut tx, &d.tenant_id, &d.command_id, code).await?;
            (CommandState::Rejected, Some(code), format!("rejected by {}", d.approver))
        }
        (None, Decision::Approve) => {
            let have = rec.approvals.len() + 1;
            (CommandState::PendingApproval, None, format!("approved by {} ({have} of {need})", d.approver))
        }
    };
    let log = NewLog {
        tenant_id: &d.tenant_id,
        store_id: &d.store_id,
        command_id: &d.command_id,
        device_id: None,
        state,
        attempt: 0,
        code,
        detail: &detail,
        actor: BY_PORTAL,
    };
    let row = insert_log(&mut tx, log).await?;
    tx.commit().await?;
    Ok(Some(row))
}

/// Publishes the approved command on its intake subject, where intake checks and delivers it.
async fn release(ctx: &Ctx, cmd: CommandEnvelope) -> Result<(), CommandError> {
    let mut headers = HeaderMap::new();
    headers.insert(names::HEADER_MSG_ID, format!("{}:released", cmd.command_id).as_str());
    let to = subject::intake(&cmd.tenant_id, &cmd.store_id, cmd.device_id.as_deref());
    let ack = ctx
        .js
        .publish_with_headers(to, headers, codec::encode(&cmd).into())
        .await
        .map_err(|e| CommandError::Publish(e.to_string()))?;
    ack.await.map_err(|e| CommandError::Publish(e.to_string()))?;
    tracing::info!(command_id = %cmd.command_id, approvals = cmd.approvals.len(), "Command approved; released to intake.");
    Ok(())
}
