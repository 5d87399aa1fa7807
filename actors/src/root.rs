//! The root supervisor: owns the store actors.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};

use crate::store::{StoreActor, StoreMsg};
use crate::system::Shared;

#[derive(Debug)]
pub enum RootMsg {
    /// The store's actor (tenant, store), spawned if needed.
    Store(String, String, RpcReplyPort<Result<ActorRef<StoreMsg>, SpawnErr>>),
}

pub struct RootActor;

pub struct RootState {
    shared: Arc<Shared>,
    stores: HashMap<(String, String), ActorRef<StoreMsg>>,
    by_cell: HashMap<ActorId, (String, String)>,
}

impl Actor for RootActor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        _myself: ActorRef<RootMsg>,
        shared: Arc<Shared>,
    ) -> Result<RootState, ActorProcessingErr> {
        Ok(RootState { shared, stores: HashMap::new(), by_cell: HashMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Store(tenant, store, reply) => {
                let key = (tenant, store);
                if let Some(s) = state.stores.get(&key) {
                    let _ = reply.send(Ok(s.clone()));
                    return Ok(());
                }
                let args = (key.0.clone(), key.1.clone(), state.shared.clone());
                let result = match Actor::spawn_linked(None, StoreActor, args, myself.get_cell()).await {
                    Ok((actor, _)) => {
                        state.by_cell.insert(actor.get_id(), key.clone());
                        state.stores.insert(key, actor.clone());
                        Ok(actor)
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<RootMsg>,
        evt: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let cell = match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(%err, "Store actor failed; it restarts on the next message for the store.");
                cell
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => cell,
            _ => return Ok(()),
        };
        if let Some(key) = state.by_cell.remove(&cell.get_id()) {
            state.stores.remove(&key);
        }
        Ok(())
    }
}
