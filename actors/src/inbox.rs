//! The device's command inbox, held by the device actor.
//!
//! Postgres (`command_inbox`) is the source of truth; every tick loads the unfinished entries
//! (one indexed query) and keeps nothing afterwards, so intake by another broker instance is
//! seen and a passivated or restarted actor picks up where the last one stopped, attempt counts
//! included. The actor's job is to serialise a device's broker-side transitions (deliveries,
//! failures, expiry) and to run the pure [`policy`](crate::policy) on them; the port does the
//! I/O, persisting each transition before publishing it. Acks and intake's direct first
//! deliveries are settled in Postgres without the actor (conditional updates).

use ractor::{ActorProcessingErr, RpcReplyPort};
use tillsync_schemas::{CommandState, DeviceAddr};

use crate::policy::{self, Action, InboxParams};
use crate::ports::{Delivery, Finish};
use crate::system::Shared;

/// Messages about commands for one device.
#[derive(Debug)]
pub enum InboxMsg {
    /// Refresh from Postgres and do whatever is due (deliver, redeliver, fail, expire).
    Tick(InboxParams, RpcReplyPort<Result<TickReport, String>>),
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

/// Wall-clock Unix milliseconds: expiry is a wall-clock deadline set by the portal.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
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

async fn tick(addr: &DeviceAddr, shared: &Shared, params: InboxParams) -> Result<TickReport, String> {
    let mut snap = shared.ports.load_inbox(addr.clone()).await?;
    let now = now_ms();
    let mut report = TickReport::default();
    for action in policy::plan(&snap.pending, now, snap.online, params) {
        match action {
            Action::Deliver { command_id, attempt, next_attempt_at_ms } => {
                let d = Delivery { command_id, attempt, next_attempt_at_ms, now_ms: now };
                if shared.ports.deliver(addr.clone(), d).await? {
                    report.delivered += 1;
                }
            }
            Action::Fail { command_id, attempts } => {
                let f = Finish {
                    command_id: command_id.clone(),
                    state: CommandState::Failed,
                    attempts,
                    code: policy::MAX_ATTEMPTS_CODE.into(),
                    detail: format!("no ack after {attempts} deliveries"),
                };
                if shared.ports.finish(addr.clone(), f).await? {
                    report.failed += 1;
                }
                snap.pending.retain(|e| e.command_id != command_id);
            }
            Action::Expire { command_id, attempts } => {
                let f = Finish {
                    command_id: command_id.clone(),
                    state: CommandState::Expired,
                    attempts,
                    code: policy::EXPIRED_CODE.into(),
                    detail: String::new(),
                };
                if shared.ports.finish(addr.clone(), f).await? {
                    report.expired += 1;
                }
                snap.pending.retain(|e| e.command_id != command_id);
            }
        }
    }
    report.pending = snap.pending.len();
    Ok(report)
}
