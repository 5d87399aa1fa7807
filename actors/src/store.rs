//! The store actor: supervises the device actors of one store and restarts failed ones with
//! backoff. Device actors are its linked children.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};
use tillsync_schemas::DeviceAddr;

use crate::device::{DeviceActor, DeviceArgs, DeviceMsg};
use crate::stats::ActorStats;
use crate::system::{DeviceEntry, Shared};

#[derive(Debug)]
pub enum StoreMsg {
    /// The device's actor, spawned if not resident.
    Device(String, RpcReplyPort<Result<ActorRef<DeviceMsg>, SpawnErr>>),
}

pub struct StoreActor;

pub struct StoreState {
    tenant_id: String,
    store_id: String,
    shared: Arc<Shared>,
    by_cell: HashMap<ActorId, String>,
    /// Recent failures per device: (count, last failure), for the restart backoff.
    failures: HashMap<String, (u32, Instant)>,
}

/// 100 ms doubling per recent failure, at most 5 s; failures older than a minute are forgiven.
pub fn restart_backoff(recent_failures: u32) -> Duration {
    Duration::from_millis(100u64 << recent_failures.min(6)).min(Duration::from_secs(5))
}

impl StoreState {
    async fn spawn(
        &mut self,
        myself: &ActorRef<StoreMsg>,
        device_id: &str,
        delay: Duration,
    ) -> Result<ActorRef<DeviceMsg>, SpawnErr> {
        let addr = DeviceAddr::new(&self.tenant_id, &self.store_id, device_id);
        let args = DeviceArgs { addr: addr.clone(), shared: self.shared.clone(), delay };
        let (actor, _) = Actor::spawn_linked(None, DeviceActor, args, myself.get_cell()).await?;
        self.by_cell.insert(actor.get_id(), device_id.to_string());
        let now = self.shared.uptime_ms();
        self.shared.devices.insert(addr, DeviceEntry { actor: actor.clone(), last_active: AtomicU64::new(now) });
        ActorStats::bump(&self.shared.stats.activations);
        Ok(actor)
    }

    fn forget(&mut self, cell: &ActorCell) -> Option<String> {
        let device_id = self.by_cell.remove(&cell.get_id())?;
        let addr = DeviceAddr::new(&self.tenant_id, &self.store_id, &device_id);
        self.shared.devices.remove_if(&addr, |_, e| e.actor.get_id() == cell.get_id());
        Some(device_id)
    }
}

impl Actor for StoreActor {
    type Msg = StoreMsg;
    type State = StoreState;
    type Arguments = (String, String, Arc<Shared>);

    async fn pre_start(
        &self,
        _myself: ActorRef<StoreMsg>,
        (tenant_id, store_id, shared): Self::Arguments,
    ) -> Result<StoreState, ActorProcessingErr> {
        Ok(StoreState { tenant_id, store_id, shared, by_cell: HashMap::new(), failures: HashMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<StoreMsg>,
        msg: StoreMsg,
        state: &mut StoreState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StoreMsg::Device(device_id, reply) => {
                let addr = DeviceAddr::new(&state.tenant_id, &state.store_id, &device_id);
                let existing = state.shared.devices.get(&addr).map(|e| e.actor.clone());
                let result = match existing {
                    Some(a) => Ok(a),
                    None => state.spawn(&myself, &device_id, Duration::ZERO).await,
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<StoreMsg>,
        evt: SupervisionEvent,
        state: &mut StoreState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(device_id) = state.forget(&cell) else { return Ok(()) };
                ActorStats::bump(&state.shared.stats.restarts);
                let entry = state.failures.entry(device_id.clone()).or_insert((0, Instant::now()));
                if entry.1.elapsed() > Duration::from_secs(60) {
                    entry.0 = 0;
                }
                let delay = restart_backoff(entry.0);
                *entry = (entry.0 + 1, Instant::now());
                tracing::warn!(tenant_id = %state.tenant_id, store_id = %state.store_id, %device_id, %err, ?delay, "Device actor failed; restarting.");
                // Restart now (state reloads from Postgres after the backoff), so work that
                // arrives meanwhile queues in the new actor's mailbox.
                if let Err(e) = state.spawn(&myself, &device_id, delay).await {
                    tracing::error!(%device_id, error = %e, "Device actor restart failed; it starts on its next message.");
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.forget(&cell);
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(restart_backoff(0), Duration::from_millis(100));
        assert_eq!(restart_backoff(1), Duration::from_millis(200));
        assert_eq!(restart_backoff(30), Duration::from_secs(5));
    }
}
