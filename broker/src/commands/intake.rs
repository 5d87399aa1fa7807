//! Command intake from the portal: per store in stream order (which is issue order), a lane's
//! waiting messages at a time, accepted in one statement; stores are handled concurrently
//! ([`crate::lanes`]).
//!
//! A command that decodes is accepted (recorded, queued per device) or rejected with a coded
//! reason (recorded, reported, never delivered). One that does not decode is still rejected as a
//! command when its id, tenant and store can be read and agree with the subject, so the portal
//! hears why; anything less readable is quarantined. Everything is committed before the intake
//! message is acked, and a command id seen before is acked without effect.

use std::sync::Arc;

use std::time::Duration;

use async_nats::jetstream::Message;
use serde::Deserialize;
use tillsync_actors::policy::{self, Approvals};
use tillsync_schemas::ids::check_uuid_or_ulid;
use tillsync_schemas::{
    codec, streams as names, subject, CommandEnvelope, CommandState, DeviceAddr, Reason, WireError,
};

use super::intake_store::{self, Accepted};
use super::store::{self, CommandRow, OverPending};
use super::{publish, CommandError};
use crate::partitions::Fence;
use crate::spine::{self, Settle, Source};
use crate::{metrics, quarantine as quarantined, Ctx};

/// Most commands one lane accepts in one statement.
const BATCH: usize = 256;

/// The intake consumers of the spine.
pub const SOURCE: Source =
    Source { stream: names::INTAKE, base: names::BROKER_INTAKE_CONSUMER, max_batch: BATCH, linger: Duration::ZERO };

/// Accepts a lane's batch in order: commands to accept are gathered and accepted together;
/// one to refuse first has the gathered ones accepted, so a refusal never overtakes an
/// earlier command of the batch.
pub async fn handle_batch(ctx: &Arc<Ctx>, fence: Fence, batch: Vec<Message>) {
    metrics::commands_received(batch.len() as u64);
    let keys = match approver_keys(ctx, &batch).await {
        Ok(keys) => keys,
        Err(error) => {
            let how = super::not_committed(ctx, fence, "intake", &error);
            for msg in &batch {
                spine::settle(msg, how).await;
            }
            return;
        }
    };
    let mut gathered: Vec<(Message, CommandEnvelope)> = Vec::new();
    for msg in batch {
        if super::cancel::is_cancel(&msg.subject) {
            // After the commands before it, so a cancel always finds what it cancels.
            accept(ctx, fence, std::mem::take(&mut gathered)).await;
            let outcome = super::cancel::handle(ctx, fence, &msg).await;
            finish(ctx, fence, &msg, outcome).await;
            continue;
        }
        if super::approvals::is_decision(&msg.subject) {
            // Likewise: a decision always finds the command it decides.
            accept(ctx, fence, std::mem::take(&mut gathered)).await;
            let outcome = super::approvals::handle(ctx, fence, &msg).await;
            finish(ctx, fence, &msg, outcome).await;
            continue;
        }
        let outcome = match check(ctx, &msg, &keys).await {
            Ok(Ok(cmd)) => {
                gathered.push((msg, cmd));
                continue;
            }
            Ok(Err(refusal)) => {
                accept(ctx, fence, std::mem::take(&mut gathered)).await;
                refusal.apply(ctx, fence, &msg).await
            }
            Err(error) => Err(error),
        };
        finish(ctx, fence, &msg, outcome).await;
    }
    accept(ctx, fence, gathered).await;
}

/// Acks (or terminates) an intake message whose effect is committed; on an error, has it
/// redelivered.
async fn finish(ctx: &Ctx, fence: Fence, msg: &Message, outcome: Result<bool, CommandError>) {
    let how = match outcome {
        Ok(false) => Settle::Ack,
        Ok(true) => Settle::Term,
        Err(error) => super::not_committed(ctx, fence, "intake", &error),
    };
    spine::settle(msg, how).await;
}

/// Why a message is not accepted as it stands.
enum Refusal {
    /// It does not decode: rejected as a command if readable enough, else quarantined.
    Undecoded(WireError),
    /// Quarantined (terminated, no status).
    Quarantine(WireError),
    /// Recorded as a rejected command, with a status.
    Reject(Box<CommandEnvelope>, WireError),
    /// Recorded as waiting for approvals (it has `have` of `need`), with a status; delivered
    /// once approved.
    Hold { cmd: Box<CommandEnvelope>, have: usize, need: usize },
}

impl Refusal {
    /// Records the refusal; `Ok(true)` when the message is to be terminated rather than acked.
    async fn apply(self, ctx: &Ctx, fence: Fence, msg: &Message) -> Result<bool, CommandError> {
        match self {
            Refusal::Undecoded(e) => refuse_undecoded(ctx, fence, msg, e).await,
            Refusal::Quarantine(e) => quarantine(ctx, fence, msg, &e).await,
            Refusal::Reject(cmd, e) => {
                reject(ctx, fence, &CommandRow::of(&cmd, &msg.payload), &e, OverPending::Leave).await
            }
            Refusal::Hold { cmd, have, need } => hold(ctx, fence, &cmd, &msg.payload, have, need).await,
        }
    }
}

/// Approver keys by (tenant, approver) of every approval the batch's commands carry: one query
/// a batch rather than one a command.
async fn approver_keys(ctx: &Ctx, batch: &[Message]) -> Result<Keys, CommandError> {
    let mut pairs: Vec<(String, String)> = batch
        .iter()
        .filter_map(|m| codec::decode_command(&m.subject, &m.payload).ok())
        .flat_map(|c| c.approvals.into_iter().map(move |a| (c.tenant_id.clone(), a.approver)))
        .collect();
    pairs.sort();
    pairs.dedup();
    Ok(super::approvals::keys_of(&ctx.pool, &pairs).await?)
}

type Keys = std::collections::HashMap<(String, String), String>;

/// The command if intake may accept it (the device lookup is part of accepting), else why not.
async fn check(ctx: &Ctx, msg: &Message, keys: &Keys) -> Result<Result<CommandEnvelope, Refusal>, CommandError> {
    if let Err(e) = spine::check_partition(&msg.subject, ctx.config.partitions) {
        return Ok(Err(Refusal::Quarantine(e)));
    }
    let cmd = match codec::decode_command(&msg.subject, &msg.payload) {
        Ok(cmd) => cmd,
        Err(e) => return Ok(Err(Refusal::Undecoded(e))),
    };
    if !ctx.tenants.exists(&ctx.pool, &cmd.tenant_id).await? {
        let e = WireError::new(Reason::UnknownTenant, format!("tenant {:?} is not provisioned", cmd.tenant_id));
        return Ok(Err(Refusal::Quarantine(e)));
    }
    let max_ttl_ms = (ctx.config.command_max_ttl_s as i64).saturating_mul(1000);
    let key_of = |a: &str| keys.get(&(cmd.tenant_id.clone(), a.to_string())).map(String::as_str);
    Ok(match policy::check_intake(&cmd, crate::now_ms(), max_ttl_ms, key_of) {
        Ok(Approvals::Enough) => Ok(cmd),
        Ok(Approvals::Pending { have, need }) => Err(Refusal::Hold { cmd: Box::new(cmd), have, need }),
        Err(e) => Err(Refusal::Reject(Box::new(cmd), e)),
    })
}

/// Accepts the gathered commands in one statement, rejects those with no known device,
/// publishes the statuses and the direct first deliveries, acks the messages and wakes the
/// devices whose new commands wait (offline, or behind an earlier one).
async fn accept(ctx: &Arc<Ctx>, fence: Fence, gathered: Vec<(Message, CommandEnvelope)>) {
    if gathered.is_empty() {
        return;
    }
    let rows: Vec<CommandRow<'_>> = gathered.iter().map(|(m, c)| CommandRow::of(c, &m.payload)).collect();
    let accepted = match intake_store::accept_many(&ctx.keyed, fence, &rows, super::params(&ctx.config)).await {
        Ok(a) => a,
        Err(error) => {
            let how = super::not_committed(ctx, fence, "intake", &CommandError::from(error));
            for (msg, _) in &gathered {
                spine::settle(msg, how).await;
            }
            return;
        }
    };
    let mut logs = Vec::new();
    let mut deliveries = Vec::new();
    let mut wake: Vec<DeviceAddr> = Vec::new();
    let mut outcomes = Vec::with_capacity(gathered.len());
    for (((_, cmd), row), result) in gathered.iter().zip(&rows).zip(accepted) {
        outcomes.push(match result {
            Accepted::New(new) => {
                let queued = new.iter().filter(|l| l.state == CommandState::Queued);
                tracing::info!(command_id = %cmd.command_id, kind = cmd.body.kind(), devices = queued.clone().count(), "Command queued.");
                for l in queued {
                    let Some(device) = l.device_id.as_deref() else { continue };
                    let addr = DeviceAddr::new(&cmd.tenant_id, &cmd.store_id, device);
                    // Delivered by the accepting statement, or left to the device's actor.
                    if new.iter().any(|d| d.state == CommandState::Delivered && d.device_id == l.device_id) {
                        metrics::command_delivery();
                        deliveries.push((addr, cmd));
                    } else {
                        wake.push(addr);
                    }
                }
                logs.extend(new);
                Ok(false)
            }
            Accepted::Duplicate => {
                tracing::debug!(command_id = %cmd.command_id, "Duplicate command intake; already recorded.");
                Ok(false)
            }
            Accepted::NoDevice => {
                let what = match cmd.device_id.as_deref() {
                    Some(d) => format!("device {d:?} is not known"),
                    None => format!("store {:?} has no known device", cmd.store_id),
                };
                let e = WireError::new(Reason::UnknownDevice, format!("{what} (provision with `tillsync devices add`)"));
                // Also when this is the approved release of a command waiting for approval.
                reject(ctx, fence, row, &e, OverPending::End).await
            }
        });
    }
    // Each command's `queued` before its `delivered`, both before the command itself (see acks).
    logs.sort_unstable_by_key(|l| l.id);
    if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &logs).await {
        tracing::warn!(%error, "Command status not published; the sweeper retries it.");
    }
    let (seqs, published) = publish::first_deliveries(&ctx.js, &ctx.signer, &deliveries).await;
    let copies: Vec<_> =
        deliveries.iter().zip(seqs).map(|((addr, cmd), seq)| (addr.clone(), cmd.command_id.clone(), seq)).collect();
    if let Err(error) = store::record_copies(&ctx.pool, &copies).await {
        tracing::warn!(%error, "Command copies not recorded; their check publishes them again (a duplicate the stream drops).");
    }
    if let Err(error) = published {
        // Recorded as attempt 1 with no stream sequence: its check publishes the same copy.
        tracing::warn!(%error, "First delivery not published; its check publishes it again.");
    }
    for ((msg, _), outcome) in gathered.iter().zip(outcomes) {
        finish(ctx, fence, msg, outcome).await;
    }
    wake.sort_unstable();
    wake.dedup();
    if !wake.is_empty() {
        let ctx = ctx.clone();
        tokio::spawn(async move { super::tick(&ctx, wake).await });
    }
}

/// Records a rejected command and publishes its status; `Ok(false)`: ack the message.
async fn reject(
    ctx: &Ctx,
    fence: Fence,
    row: &CommandRow<'_>,
    e: &WireError,
    over: OverPending,
) -> Result<bool, CommandError> {
    let Some(log) = store::reject(&ctx.pool, fence, row, e.reason.as_str(), &e.detail, over).await? else {
        return Ok(false);
    };
    metrics::command_rejected(e.reason.as_str());
    tracing::warn!(command_id = %row.command_id, reason = %e.reason, detail = %e.detail, "Command rejected.");
    if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &[log]).await {
        tracing::warn!(%error, "Rejected status not published; the sweeper retries it.");
    }
    Ok(false)
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
async fn refuse_undecoded(ctx: &Ctx, fence: Fence, msg: &Message, e: WireError) -> Result<bool, CommandError> {
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
    let Some(p) = probe.filter(|_| trusted) else { return quarantine(ctx, fence, msg, &e).await };
    if !ctx.tenants.exists(&ctx.pool, &p.tenant_id).await? {
        return quarantine(ctx, fence, msg, &e).await;
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
    reject(ctx, fence, &row, &e, OverPending::Leave).await
}

/// Records a command that waits for approvals and tells the portal; `Ok(false)`: ack.
async fn hold(
    ctx: &Ctx,
    fence: Fence,
    cmd: &CommandEnvelope,
    payload: &[u8],
    have: usize,
    need: usize,
) -> Result<bool, CommandError> {
    let detail = format!(
        "{} requested by {}: {have} of {need} approvals; approvers run `tillsync commands approve {}`",
        cmd.body.kind(),
        cmd.requested_by,
        cmd.command_id
    );
    let Some(log) = store::hold(&ctx.pool, fence, &CommandRow::of(cmd, payload), &detail).await? else {
        return Ok(false);
    };
    metrics::command_pending_approval();
    tracing::info!(command_id = %cmd.command_id, kind = cmd.body.kind(), have, need, "Command waits for approval.");
    if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &[log]).await {
        tracing::warn!(%error, "Pending-approval status not published; the sweeper retries it.");
    }
    Ok(false)
}

/// Quarantines a message; `Ok(true)`: terminate it.
async fn quarantine(ctx: &Ctx, fence: Fence, msg: &Message, e: &WireError) -> Result<bool, CommandError> {
    quarantined::record(&ctx.pool, fence, names::INTAKE, msg, e).await?;
    metrics::command_rejected(e.reason.as_str());
    Ok(true)
}
