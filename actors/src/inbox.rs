//! The device's command inbox, held by the device actor.
//!
//! A command is published to the device's stream once; JetStream's durable consumer then
//! redelivers it to the device until the device acks it. A tick therefore publishes first
//! copies, checks now and then that a published copy is still in the stream (republishing
//! only one that is gone, or consumed without an ack ever reaching the broker), and ends what
//! expired or lost every copy.
//!
//! Postgres (`command_inbox`) is the source of truth; every tick loads the unfinished entries
//! (one indexed query) and keeps nothing afterwards, so intake by another broker instance is
//! seen and a passivated or restarted actor picks up where the last one stopped, attempt counts
//! included. The actor's job is to serialise a device's broker-side transitions (deliveries,
//! failures, expiry) and to run the pure [`policy`](crate::policy) on them; the port does the
//! I/O, persisting each transition before publishing it. Acks and intake's direct first
//! deliveries are settled in Postgres without the actor (conditional updates).

use ractor::{ActorProcessingErr, RpcReplyPort};
use tillsync_schemas::{now_ms, CommandState, DeviceAddr};

use crate::policy::{self, Action, InboxParams, PendingEntry};
use crate::ports::{Delivery, Finish, PortError};
use crate::system::Shared;

/// Messages about commands for one device.
#[derive(Debug)]
pub enum InboxMsg {
    /// Refresh from Postgres and do whatever is due (deliver, check, republish, fail, expire).
    Tick(InboxParams, RpcReplyPort<Result<TickReport, PortError>>),
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    pub delivered: usize,
    pub failed: usize,
    pub expired: usize,
    /// Still unfinished after the tick.
    pub pending: usize,
}

pub async fn handle(addr: &DeviceAddr, msg: InboxMsg, shared: &Shared) -> Result<(), ActorProcessingErr> {
    // A port failure is answered to the caller, never turned into an actor failure: the next
    // tick retries from Postgres.
    match msg {
        InboxMsg::Tick(params, reply) => {
            let _ = reply.send(tick(addr, shared, params).await);
        }
    }
    Ok(())
}

async fn tick(addr: &DeviceAddr, shared: &Shared, params: InboxParams) -> Result<TickReport, PortError> {
    let mut snap = shared.ports.load_inbox(addr.clone()).await?;
    // The wall clock, not the system's uptime: expiry is a wall-clock deadline set by the portal.
    let now = now_ms();
    let mut report = TickReport::default();
    for action in policy::plan(&snap.pending, now, snap.online, params) {
        let action = match action {
            Action::Check { command_id } => {
                let Some(e) = snap.pending.iter().find(|e| e.command_id == command_id) else { continue };
                let copy = shared.ports.check(addr.clone(), e.stream_seq).await?;
                policy::after_check(e, copy, now, params)
            }
            other => other,
        };
        if act(addr, shared, action, now, &mut report, &mut snap.pending).await? {
            report.delivered += 1;
        }
    }
    report.pending = snap.pending.len();
    Ok(report)
}

/// Carries out one action; `true` when it published a copy.
async fn act(
    addr: &DeviceAddr,
    shared: &Shared,
    action: Action,
    now: i64,
    report: &mut TickReport,
    pending: &mut Vec<PendingEntry>,
) -> Result<bool, PortError> {
    let (command_id, state, attempts, code, detail) = match action {
        Action::Deliver { command_id, attempt, next_attempt_at_ms, why } => {
            let d = Delivery { command_id, attempt, next_attempt_at_ms, now_ms: now, why };
            return shared.ports.deliver(addr.clone(), d).await;
        }
        Action::Recheck { command_id, next_attempt_at_ms } => {
            shared.ports.reschedule(addr.clone(), command_id, next_attempt_at_ms).await?;
            return Ok(false);
        }
        // `plan` yields checks, which the tick has already turned into what they lead to.
        Action::Check { .. } => return Ok(false),
        Action::Fail { command_id, attempts } => {
            let detail = format!("{attempts} copies published, each lost from the stream or taken without an ack");
            (command_id, CommandState::Failed, attempts, policy::MAX_ATTEMPTS_CODE, detail)
        }
        Action::Expire { command_id, attempts } => {
            (command_id, CommandState::Expired, attempts, policy::EXPIRED_CODE, String::new())
        }
    };
    let f = Finish { command_id: command_id.clone(), state, attempts, code: code.into(), detail };
    if shared.ports.finish(addr.clone(), f).await? {
        match state {
            CommandState::Expired => report.expired += 1,
            _ => report.failed += 1,
        }
    }
    pending.retain(|e| e.command_id != command_id);
    Ok(false)
}
