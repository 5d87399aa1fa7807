//! Command intake from the portal: per partition in stream order (which is each store's issue
//! order), a batch of the partition's waiting messages at a time, accepted in one statement;
//! partitions are handled concurrently (up to `TILLSYNC_MESSAGE_LANES` batches at once,
//! [`crate::Slots`]).
//!
//! A command that decodes is accepted (recorded, queued per device) or rejected with a coded
//! reason (recorded, reported, never delivered). One that does not decode is still rejected as a
//! command when its id, tenant and store can be read and agree with the subject, so the portal
//! hears why ([`super::unreadable`]); anything less readable is quarantined. Everything is
//! committed before the intake message is acked, and a command id seen before is acked without
//! effect.
//!
//! Cancels ([`super::cancel`]) and approvers' decisions ([`super::approvals`]) travel on the
//! same stream and consumer and are admitted like commands ([`crate::spine::admit`]: their
//! partition, then decode, then the tenant): only the owner of a store's partition acts on them.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Message;
use tillsync_actors::policy::{self, Approvals};
use tillsync_schemas::{
    codec, streams as names, CommandCancel, CommandDecision, CommandEnvelope, CommandState, DeviceAddr, Reason,
    WireError,
};

use super::intake_sql::{self, Accepted};
use super::sql::{self, CommandRow, OverPending};
use super::unreadable::{self, Probe};
use super::{approvals, cancel, publish, CommandError};
use crate::error::Chain;
use crate::partitions::Fence;
use crate::spine::{self, Admitted, Committed, Consumer, Failure, Source, Verdict};
use crate::{metrics, Ctx};

/// Most messages in one intake batch (its commands are accepted in one statement).
const BATCH: usize = 256;

/// The intake consumers of the spine.
pub const SOURCE: Source =
    Source { stream: names::INTAKE, base: names::BROKER_INTAKE_CONSUMER, max_batch: BATCH, linger: Duration::ZERO };

/// Takes a partition's batch of intake messages through the spine.
pub async fn handle_batch(ctx: &Arc<Ctx>, fence: Fence, batch: Vec<Message>) {
    spine::take(ctx, fence, &Intake, batch).await
}

/// An intake message, decoded.
pub enum Item {
    Command(Box<CommandEnvelope>),
    Cancel(CommandCancel),
    Decision(Box<CommandDecision>),
    /// A command that does not decode, readable enough to be rejected as one.
    Unreadable(Box<Probe>, WireError),
}

/// The intake consumer: commands, cancels and decisions of a partition, in stream order.
pub struct Intake;

impl Consumer for Intake {
    type Item = Item;
    /// Devices whose new commands wait (offline, or behind an earlier one), to wake.
    type After = Vec<DeviceAddr>;
    const STREAM: &'static str = names::INTAKE;
    const NAME: &'static str = "intake";

    fn decode(&self, subj: &str, payload: &[u8]) -> Result<Item, WireError> {
        if cancel::is_cancel(subj) {
            return cancel::decode(subj, payload).map(Item::Cancel);
        }
        if approvals::is_decision(subj) {
            return approvals::decode(subj, payload).map(|d| Item::Decision(Box::new(d)));
        }
        match codec::decode_command(subj, payload) {
            Ok(cmd) => Ok(Item::Command(Box::new(cmd))),
            Err(e) => match unreadable::probe(subj, payload, &e) {
                Some(p) => Ok(Item::Unreadable(Box::new(p), e)),
                None => Err(e),
            },
        }
    }

    fn tenant<'a>(&self, item: &'a Item) -> &'a str {
        match item {
            Item::Command(cmd) => &cmd.tenant_id,
            Item::Cancel(req) => &req.tenant_id,
            Item::Decision(d) => &d.tenant_id,
            Item::Unreadable(p, _) => &p.tenant_id,
        }
    }

    /// An unreadable command of a tenant that does not exist is quarantined for why it does
    /// not decode.
    fn unknown_tenant(&self, item: &Item) -> WireError {
        match item {
            Item::Unreadable(_, e) => e.clone(),
            _ => spine::unknown_tenant(self.tenant(item)),
        }
    }

    async fn received(&self, _ctx: &Ctx, batch: &[Message]) {
        metrics::commands_received(batch.len() as u64);
    }

    fn quarantined(&self, e: &WireError) {
        metrics::command_rejected(e.reason.as_str());
    }

    async fn commit(
        &self,
        ctx: &Arc<Ctx>,
        fence: Fence,
        batch: &[Admitted<Item>],
    ) -> Result<Committed<Vec<DeviceAddr>>, Failure> {
        decide(ctx, fence, batch).await
    }

    async fn after(&self, ctx: &Arc<Ctx>, mut wake: Vec<DeviceAddr>) {
        wake.sort_unstable();
        wake.dedup();
        if !wake.is_empty() {
            // Not awaited: the partition's next batch need not wait for these actors. Tracked,
            // so the shutdown joins it before it stops the actors.
            let ctx2 = ctx.clone();
            ctx.spawned.spawn(async move { super::tick(&ctx2, wake).await });
        }
    }
}

/// The verdicts so far, in stream order, and the devices to wake.
#[derive(Default)]
struct Decided {
    verdicts: Vec<Verdict>,
    wake: Vec<DeviceAddr>,
}

/// Decides about a partition's batch in order and commits it: commands to accept are gathered
/// and accepted together; anything else first has the gathered ones accepted, so a refusal
/// never overtakes an earlier command of the batch, and a cancel or a decision always finds
/// the command it names.
async fn decide(ctx: &Ctx, fence: Fence, batch: &[Admitted<Item>]) -> Result<Committed<Vec<DeviceAddr>>, Failure> {
    let keys = approver_keys(ctx, batch).await?;
    let mut out = Decided::default();
    let mut gathered: Vec<(&Message, &CommandEnvelope)> = Vec::new();
    for a in batch {
        let step = match step(ctx, a, &keys) {
            Ok(cmd) => {
                gathered.push((&a.msg, cmd));
                continue;
            }
            Err(step) => step,
        };
        accept(ctx, fence, std::mem::take(&mut gathered), &mut out).await;
        out.verdicts.push(run(ctx, fence, &a.msg, step).await.unwrap_or_else(|e| Verdict::Failed(e.into())));
    }
    accept(ctx, fence, gathered, &mut out).await;
    Ok(Committed { verdicts: out.verdicts, after: out.wake })
}

/// What to do with an intake message that is not a command to accept as it stands.
enum Step<'a> {
    /// Recorded as waiting for approvals (it has `have` of `need`), with a status; delivered
    /// once approved.
    Hold {
        cmd: &'a CommandEnvelope,
        have: usize,
        need: usize,
    },
    /// Recorded as a rejected command, with a status.
    Reject(Box<CommandRow<'a>>, WireError),
    Cancel(&'a CommandCancel),
    Decide(&'a CommandDecision),
}

/// The command if intake may accept it (the device lookup is part of accepting), else what to
/// do with the message.
fn step<'a>(ctx: &Ctx, a: &'a Admitted<Item>, keys: &Keys) -> Result<&'a CommandEnvelope, Step<'a>> {
    let cmd = match &a.item {
        Item::Command(cmd) => cmd,
        Item::Unreadable(p, e) => return Err(Step::Reject(Box::new(p.row(&a.msg.payload)), e.clone())),
        Item::Cancel(req) => return Err(Step::Cancel(req)),
        Item::Decision(d) => return Err(Step::Decide(d)),
    };
    let max_ttl_ms = (ctx.config.command_max_ttl_s as i64).saturating_mul(1000);
    let key_of = |a: &str| keys.get(&(cmd.tenant_id.clone(), a.to_string())).map(String::as_str);
    match policy::check_intake(cmd, crate::now_ms(), max_ttl_ms, key_of) {
        Ok(Approvals::Enough) => Ok(cmd),
        Ok(Approvals::Pending { have, need }) => Err(Step::Hold { cmd, have, need }),
        Err(e) => Err(Step::Reject(Box::new(CommandRow::of(cmd, &a.msg.payload)), e)),
    }
}

/// Commits one step.
async fn run(ctx: &Ctx, fence: Fence, msg: &Message, step: Step<'_>) -> Result<Verdict, CommandError> {
    match step {
        Step::Hold { cmd, have, need } => hold(ctx, fence, cmd, &msg.payload, have, need).await?,
        Step::Reject(row, e) => reject(ctx, fence, &row, &e, OverPending::Leave).await?,
        Step::Cancel(req) => return cancel::handle(ctx, fence, req).await,
        Step::Decide(d) => {
            // `true`: refused for good, and quarantined by approvals itself.
            if approvals::handle(ctx, fence, msg, d).await? {
                return Ok(Verdict::Ended);
            }
        }
    }
    Ok(Verdict::Done)
}

/// Approver keys by (tenant, approver) of every approval the batch's commands carry: one query
/// a batch rather than one a command.
async fn approver_keys(ctx: &Ctx, batch: &[Admitted<Item>]) -> Result<Keys, sqlx::Error> {
    let mut pairs: Vec<(String, String)> = batch
        .iter()
        .filter_map(|a| match &a.item {
            Item::Command(cmd) => Some(cmd),
            _ => None,
        })
        .flat_map(|c| c.approvals.iter().map(|a| (c.tenant_id.clone(), a.approver.clone())))
        .collect();
    pairs.sort();
    pairs.dedup();
    approvals::keys_of(&ctx.pool, &pairs).await
}

type Keys = std::collections::HashMap<(String, String), String>;

/// Accepts the gathered commands in one statement, rejects those with no known device,
/// publishes the statuses and the direct first deliveries, and adds their verdicts and the
/// devices whose new commands wait (offline, or behind an earlier one) to `out`.
async fn accept(ctx: &Ctx, fence: Fence, gathered: Vec<(&Message, &CommandEnvelope)>, out: &mut Decided) {
    if gathered.is_empty() {
        return;
    }
    let rows: Vec<CommandRow<'_>> = gathered.iter().map(|(m, c)| CommandRow::of(c, &m.payload)).collect();
    let accepted = match intake_sql::accept_many(&ctx.keyed, fence, &rows, super::params(&ctx.config)).await {
        Ok(a) => a,
        Err(error) => {
            let failure = Failure::from(error);
            out.verdicts.extend(gathered.iter().map(|_| Verdict::Failed(failure.clone())));
            return;
        }
    };
    let mut logs = Vec::new();
    let mut deliveries = Vec::new();
    let mut verdicts = Vec::with_capacity(gathered.len());
    for (((_, cmd), row), result) in gathered.iter().zip(&rows).zip(accepted) {
        verdicts.push(match result {
            Accepted::New(new) => {
                let queued = new.iter().filter(|l| l.state == CommandState::Queued);
                tracing::info!(command_id = %cmd.command_id, kind = cmd.body.kind(), devices = queued.clone().count(), "Command queued.");
                for l in queued {
                    let Some(device) = l.device_id.as_deref() else { continue };
                    let addr = DeviceAddr::new(&cmd.tenant_id, &cmd.store_id, device);
                    // Delivered by the accepting statement, or left to the device's actor.
                    if new.iter().any(|d| d.state == CommandState::Delivered && d.device_id == l.device_id) {
                        metrics::command_delivery();
                        deliveries.push((addr, *cmd));
                    } else {
                        out.wake.push(addr);
                    }
                }
                logs.extend(new);
                Verdict::Done
            }
            Accepted::Duplicate => {
                tracing::debug!(command_id = %cmd.command_id, "Duplicate command intake; already recorded.");
                Verdict::Done
            }
            Accepted::NoDevice => {
                let what = match cmd.device_id.as_deref() {
                    Some(d) => format!("device {d:?} is not known"),
                    None => format!("store {:?} has no known device", cmd.store_id),
                };
                let e = WireError::new(Reason::UnknownDevice, format!("{what} (provision with `tillsync devices add`)"));
                // Also when this is the approved release of a command waiting for approval.
                match reject(ctx, fence, row, &e, OverPending::End).await {
                    Ok(()) => Verdict::Done,
                    Err(error) => Verdict::Failed(error.into()),
                }
            }
        });
    }
    // Each command's `queued` before its `delivered`, both before the command itself (see acks).
    logs.sort_unstable_by_key(|l| l.id);
    if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &logs).await {
        tracing::warn!(error = %Chain(&error), "Command status not published; the sweeper retries it.");
    }
    let (seqs, published) = publish::first_deliveries(&ctx.js, &ctx.signer, &deliveries).await;
    let copies: Vec<_> =
        deliveries.iter().zip(seqs).map(|((addr, cmd), seq)| (addr.clone(), cmd.command_id.clone(), seq)).collect();
    if let Err(error) = sql::record_copies(&ctx.pool, &copies).await {
        tracing::warn!(error = %Chain(&error), "Command copies not recorded; their check publishes them again (a duplicate the stream drops).");
    }
    if let Err(error) = published {
        // Recorded as attempt 1 with no stream sequence: its check publishes the same copy.
        tracing::warn!(error = %Chain(&error), "First delivery not published; its check publishes it again.");
    }
    out.verdicts.extend(verdicts);
}

/// Records a rejected command and publishes its status.
async fn reject(
    ctx: &Ctx,
    fence: Fence,
    row: &CommandRow<'_>,
    e: &WireError,
    over: OverPending,
) -> Result<(), CommandError> {
    let Some(log) = sql::reject(&ctx.pool, fence, row, e.reason.as_str(), &e.detail, over).await? else {
        return Ok(());
    };
    metrics::command_rejected(e.reason.as_str());
    tracing::warn!(command_id = %row.command_id, reason = %e.reason, detail = %e.detail, "Command rejected.");
    if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &[log]).await {
        tracing::warn!(error = %Chain(&error), "Rejected status not published; the sweeper retries it.");
    }
    Ok(())
}

/// Records a command that waits for approvals and tells the portal.
async fn hold(
    ctx: &Ctx,
    fence: Fence,
    cmd: &CommandEnvelope,
    payload: &[u8],
    have: usize,
    need: usize,
) -> Result<(), CommandError> {
    let detail = format!(
        "{} requested by {}: {have} of {need} approvals; approvers run `tillsync commands approve {}`",
        cmd.body.kind(),
        cmd.requested_by,
        cmd.command_id
    );
    let Some(log) = sql::hold(&ctx.pool, fence, &CommandRow::of(cmd, payload), &detail).await? else {
        return Ok(());
    };
    metrics::command_pending_approval();
    tracing::info!(command_id = %cmd.command_id, kind = cmd.body.kind(), have, need, "Command waits for approval.");
    if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &[log]).await {
        tracing::warn!(error = %Chain(&error), "Pending-approval status not published; the sweeper retries it.");
    }
    Ok(())
}
