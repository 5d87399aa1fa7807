//! The device actor: one per device, started on first message, stopped when idle.
//!
//! It holds what makes per-device decisions fast (recent ids, the seq tracker) and serialises
//! the device's inbox ticks (the inbox itself lives in Postgres). Its state is loaded from
//! Postgres before its first message is handled, so a restart or a passivation loses nothing:
//! what is in memory is a cache of what is committed, plus the batch it last decided, which
//! the broker commits next or has it forget.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tillsync_schemas::DeviceAddr;

use crate::decide::{decide_batch, hold, DeviceVerdicts, Incoming};
use crate::inbox::{self, InboxMsg};
use crate::recent::{short, RecentIds};
use crate::seqs::SeqTracker;
use crate::system::Shared;

#[derive(Debug)]
pub enum DeviceMsg {
    /// Decide a batch of this device's events, in stream order, and hold its candidates as
    /// committed ([`crate::decide::hold`]): the caller commits them next.
    Decide(Vec<Incoming>, RpcReplyPort<DeviceVerdicts>),
    /// The last decided batch did not commit: drop what is held and reload from Postgres
    /// before the next message. (Saying nothing on success saves a message per device per
    /// batch; a failed commit is rare.)
    Forget,
    /// The current watermark (tests, status).
    Watermark(RpcReplyPort<u64>),
    /// Fail on purpose (fault-injection tests): the store actor restarts the device actor.
    Fail(String),
    Inbox(InboxMsg),
}

pub struct DeviceActor;

pub struct DeviceArgs {
    pub addr: DeviceAddr,
    pub shared: Arc<Shared>,
    /// Wait before loading state: the backoff after a failure.
    pub delay: Duration,
}

pub struct DeviceState {
    pub addr: DeviceAddr,
    pub shared: Arc<Shared>,
    pub recent: RecentIds,
    pub seqs: SeqTracker,
    /// `Some(backoff)` until the state has been loaded from Postgres.
    pending_load: Option<Duration>,
}

impl DeviceState {
    async fn ensure_loaded(&mut self) -> Result<(), ActorProcessingErr> {
        let Some(delay) = self.pending_load else { return Ok(()) };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let cap = self.shared.config.recent_ids;
        // The cause goes into the failure's text: the supervisor logs only that.
        let snap = self.shared.ports.load_device(self.addr.clone(), cap).await.map_err(|e| e.line())?;
        for (id, hash) in &snap.recent {
            self.recent.insert(id, short(hash));
        }
        self.seqs = SeqTracker::restore(snap.watermark, snap.above);
        self.pending_load = None;
        Ok(())
    }
}

impl Actor for DeviceActor {
    type Msg = DeviceMsg;
    type State = DeviceState;
    type Arguments = DeviceArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<DeviceMsg>,
        args: DeviceArgs,
    ) -> Result<DeviceState, ActorProcessingErr> {
        // Loading is deferred to the first message so that spawning stays cheap and the store
        // actor (which spawns) never waits on Postgres.
        Ok(DeviceState {
            recent: RecentIds::new(args.shared.config.recent_ids),
            seqs: SeqTracker::default(),
            addr: args.addr,
            shared: args.shared,
            pending_load: Some(args.delay),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<DeviceMsg>,
        msg: DeviceMsg,
        state: &mut DeviceState,
    ) -> Result<(), ActorProcessingErr> {
        // The loading and inbox futures are large and rare; boxing them keeps every resident
        // actor's task small (its future is sized for the largest await point).
        if state.pending_load.is_some() {
            Box::pin(state.ensure_loaded()).await?;
        }
        match msg {
            DeviceMsg::Decide(batch, reply) => {
                let verdicts = decide_batch(&state.recent, &state.seqs, &batch);
                hold(&mut state.recent, &mut state.seqs, &batch, &verdicts);
                let _ = reply.send(verdicts);
            }
            DeviceMsg::Forget => {
                state.recent = RecentIds::new(state.shared.config.recent_ids);
                state.seqs = SeqTracker::default();
                state.pending_load = Some(Duration::ZERO);
            }
            DeviceMsg::Watermark(reply) => {
                let _ = reply.send(state.seqs.watermark);
            }
            DeviceMsg::Fail(why) => return Err(format!("injected failure: {why}").into()),
            DeviceMsg::Inbox(m) => Box::pin(inbox::handle(&state.addr, m, &state.shared)).await?,
        }
        Ok(())
    }
}
