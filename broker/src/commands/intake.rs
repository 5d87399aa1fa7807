//! Command intake from the portal: per store, one message at a time in stream order (which is
//! issue order); stores are handled concurrently ([`crate::lanes`]).
//!
//! A command that decodes is accepted (recorded, queued per device) or rejected with a coded
//! reason (recorded, reported, never delivered). One that does not decode is still rejected as a
//! command when its id, tenant and store can be read and agree with the subject, so the portal
//! hears why; anything less readable is quarantined. Everything is committed before the intake
//! message is acked, and a command id seen before is acked without effect.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use serde::Deserialize;
use tillsync_actors::policy;
use tillsync_schemas::ids::check_uuid_or_ulid;
use tillsync_schemas::{codec, streams as names, subject, CommandEnvelope, DeviceAddr, Reason, WireError};

use super::store::{self, Accepted, CommandRow};
use super::{publish, CommandError};
use crate::{metrics, Ctx};

pub async fn run(ctx: Arc<Ctx>) {
    let ctx = &ctx;
    crate::consumer::each_message(
        ctx,
        names::INTAKE,
        names::BROKER_INTAKE_CONSUMER,
        ctx.config.message_lanes,
        move |msg| async move {
            metrics::command_received();
            match handle(ctx, &msg).await {
                Ok(Handled { term, wake }) => {
                    let ack = if term { msg.ack_with(AckKind::Term).await } else { msg.ack().await };
                    if let Err(error) = ack {
                        // Committed already: a redelivery is answered "duplicate".
                        tracing::warn!(%error, "Intake ack failed after commit.");
                    }
                    if !wake.is_empty() {
                        let ctx = ctx.clone();
                        tokio::spawn(async move { super::tick(&ctx, wake).await });
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "Command not recorded; redelivering.");
                    let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))).await;
                }
            }
        },
    )
    .await;
}

/// What to do with the intake message once its effect is committed.
struct Handled {
    /// Terminate (quarantined) rather than ack.
    term: bool,
    /// Devices whose inbox got a new entry.
    wake: Vec<DeviceAddr>,
}

const ACKED: Handled = Handled { term: false, wake: Vec::new() };

async fn handle(ctx: &Ctx, msg: &Message) -> Result<Handled, CommandError> {
    let cmd = match codec::decode_command(&msg.subject, &msg.payload) {
        Ok(cmd) => cmd,
        Err(e) => return refuse_undecoded(ctx, msg, e).await,
    };
    if !ctx.tenants.exists(&ctx.pool, &cmd.tenant_id).await? {
        let e = WireError::new(Reason::UnknownTenant, format!("tenant {:?} is not provisioned", cmd.tenant_id));
        return quarantine(ctx, msg, &e).await;
    }
    let row = CommandRow::of(&cmd, &msg.payload);
    let max_ttl_ms = (ctx.config.command_max_ttl_s as i64).saturating_mul(1000);
    if let Err(e) = policy::check_intake(&cmd, crate::now_ms(), max_ttl_ms) {
        return reject(ctx, &row, &e).await;
    }
    accept(ctx, &cmd, &row).await
}

async fn accept(ctx: &Ctx, cmd: &CommandEnvelope, row: &CommandRow<'_>) -> Result<Handled, CommandError> {
    let logs = match store::accept(&ctx.pool, row).await? {
        Accepted::New(logs) => logs,
        Accepted::Duplicate => {
            tracing::debug!(command_id = %cmd.command_id, "Duplicate command intake; already recorded.");
            return Ok(ACKED);
        }
        Accepted::NoDevice => {
            let what = match cmd.device_id.as_deref() {
                Some(d) => format!("device {d:?} is not known"),
                None => format!("store {:?} has no known device", cmd.store_id),
            };
            let e = WireError::new(Reason::UnknownDevice, format!("{what} (provision with `tillsync devices add`)"));
            return reject(ctx, row, &e).await;
        }
    };
    tracing::info!(command_id = %cmd.command_id, kind = cmd.body.kind(), devices = logs.len(), "Command queued.");
    if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &logs).await {
        tracing::warn!(%error, "Queued status not published; the sweeper retries it.");
    }
    let wake = logs
        .iter()
        .filter_map(|l| l.device_id.as_deref())
        .map(|d| DeviceAddr::new(&cmd.tenant_id, &cmd.store_id, d))
        .collect();
    Ok(Handled { term: false, wake })
}

async fn reject(ctx: &Ctx, row: &CommandRow<'_>, e: &WireError) -> Result<Handled, CommandError> {
    let Some(log) = store::reject(&ctx.pool, row, e.reason.as_str(), &e.detail).await? else {
        return Ok(ACKED);
    };
    metrics::command_rejected(e.reason.as_str());
    tracing::warn!(command_id = %row.command_id, reason = %e.reason, detail = %e.detail, "Command rejected.");
    if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &[log]).await {
        tracing::warn!(%error, "Rejected status not published; the sweeper retries it.");
    }
    Ok(ACKED)
}

/// The fields read from a command that does not fully decode (unknown kind, bad field, ...).
#[derive(Deserialize)]
struct Probe {
    command_id: String,
    tenant_id: String,
    store_id: String,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    requested_by: String,
    #[serde(default)]
    approvals: Vec<ProbeApproval>,
    #[serde(default)]
    issued_at_ms: i64,
    #[serde(default)]
    expires_at_ms: i64,
    #[serde(default)]
    body: Option<ProbeBody>,
}

#[derive(Deserialize)]
struct ProbeApproval {
    approver: String,
}

#[derive(Deserialize)]
struct ProbeBody {
    kind: String,
}

/// Rejects as a command when the message names a valid command of a known tenant on its own
/// subject; quarantines otherwise (no status goes to a tenant the subject does not prove).
async fn refuse_undecoded(ctx: &Ctx, msg: &Message, e: WireError) -> Result<Handled, CommandError> {
    let trusted = !matches!(e.reason, Reason::BadSubject | Reason::SubjectMismatch | Reason::Oversize);
    let probe = codec::decode::<Probe>(&msg.payload).ok().filter(|p| {
        let parsed = subject::parse(&msg.subject).ok();
        check_uuid_or_ulid("command_id", &p.command_id).is_ok()
            && parsed.is_some_and(|s| {
                s.family == subject::Family::Intake
                    && s.tenant_id == p.tenant_id
                    && s.store_id == p.store_id
                    && s.last == p.device_id.as_deref().unwrap_or(subject::STORE_WIDE)
            })
    });
    let Some(p) = probe.filter(|_| trusted) else { return quarantine(ctx, msg, &e).await };
    if !ctx.tenants.exists(&ctx.pool, &p.tenant_id).await? {
        return quarantine(ctx, msg, &e).await;
    }
    let kind = p.body.as_ref().map_or("unknown", |b| b.kind.as_str());
    let row = CommandRow {
        tenant_id: &p.tenant_id,
        store_id: &p.store_id,
        command_id: &p.command_id,
        device_id: p.device_id.as_deref(),
        kind,
        envelope: &msg.payload,
        requested_by: &p.requested_by,
        approvers: p.approvals.iter().map(|a| a.approver.clone()).collect(),
        issued_at_ms: p.issued_at_ms,
        expires_at_ms: p.expires_at_ms,
    };
    reject(ctx, &row, &e).await
}

async fn quarantine(ctx: &Ctx, msg: &Message, e: &WireError) -> Result<Handled, CommandError> {
    crate::consumer::quarantine(ctx, names::INTAKE, msg, e).await?;
    metrics::command_rejected(e.reason.as_str());
    Ok(Handled { term: true, wake: Vec::new() })
}
