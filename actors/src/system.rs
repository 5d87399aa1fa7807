//! The actor system: a root supervisor, one store actor per store, one device actor per device,
//! and a `DashMap` from device address to actor for the hot path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use tillsync_schemas::DeviceAddr;

use crate::decide::{DeviceVerdicts, Incoming};
use crate::device::DeviceMsg;
use crate::inbox::{InboxMsg, TickReport};
use crate::policy::InboxParams;
use crate::ports::{PortError, Ports};
use crate::root::{RootActor, RootMsg};
use crate::stats::{ActorStats, StatsSnapshot};
use crate::ActorError;

#[derive(Debug, Clone)]
pub struct ActorConfig {
    /// Recent event ids each device actor remembers.
    pub recent_ids: usize,
    /// Idle time after which a device actor is stopped.
    pub idle_after: Duration,
    /// Longest wait for an actor's answer.
    pub call_timeout: Duration,
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig { recent_ids: 256, idle_after: Duration::from_secs(300), call_timeout: Duration::from_secs(30) }
    }
}

/// A resident device actor and when it was last used ([`Shared::uptime_ms`]).
pub struct DeviceEntry {
    pub actor: ActorRef<DeviceMsg>,
    pub last_active: AtomicU64,
}

/// What every actor of the system shares.
pub struct Shared {
    pub config: ActorConfig,
    pub ports: Arc<dyn Ports>,
    pub stats: ActorStats,
    pub devices: DashMap<DeviceAddr, DeviceEntry>,
    started: Instant,
}

impl Shared {
    /// Milliseconds since the system started, on the monotonic clock: only actors' idle times
    /// are measured with it, and a wall-clock step must not passivate (or keep) every actor.
    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

pub struct ActorSystem {
    shared: Arc<Shared>,
    root: ActorRef<RootMsg>,
    /// Taken by [`ActorSystem::shutdown`], which takes `&self` so an owner that shares the
    /// system (the broker's tasks do) can still stop it.
    root_join: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The system's own sweeper ([`ActorSystem::start`]); `None` when its owner runs the sweep
    /// ([`ActorSystem::start_unswept`]).
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// How often a dead or restarting actor is retried before the caller gives up.
const CALL_ATTEMPTS: usize = 5;

impl ActorSystem {
    /// Starts the system with a sweeper of its own that passivates idle actors every
    /// [`ActorSystem::passivate_every`], stopped by [`ActorSystem::shutdown`].
    pub async fn start(config: ActorConfig, ports: Arc<dyn Ports>) -> Result<ActorSystem, ActorError> {
        let system = ActorSystem::start_unswept(config, ports).await?;
        let sweeper = tokio::spawn(sweep(system.shared.clone()));
        *system.sweeper.lock().unwrap_or_else(|e| e.into_inner()) = Some(sweeper);
        Ok(system)
    }

    /// Starts the system without a sweeper: its owner calls [`ActorSystem::passivate_idle`]
    /// every [`ActorSystem::passivate_every`], so the sweep starts and stops with the owner's
    /// other tasks (the broker's task registry).
    pub async fn start_unswept(config: ActorConfig, ports: Arc<dyn Ports>) -> Result<ActorSystem, ActorError> {
        let shared = Arc::new(Shared {
            config,
            ports,
            stats: ActorStats::default(),
            devices: DashMap::new(),
            started: Instant::now(),
        });
        let (root, root_join) =
            Actor::spawn(None, RootActor, shared.clone()).await.map_err(|e| ActorError::Start(e.to_string()))?;
        Ok(ActorSystem { shared, root, root_join: Mutex::new(Some(root_join)), sweeper: Mutex::new(None) })
    }

    /// How often idle actors are looked for: a quarter of `idle_after`, between 50 ms and 30 s.
    pub fn passivate_every(&self) -> Duration {
        sweep_every(&self.shared.config)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The device's actor, started if it is not resident.
    pub async fn device(&self, addr: &DeviceAddr) -> Result<ActorRef<DeviceMsg>, ActorError> {
        if let Some(e) = self.shared.devices.get(addr) {
            e.last_active.store(self.shared.uptime_ms(), Ordering::Relaxed);
            return Ok(e.actor.clone());
        }
        let unavailable = |why: String| ActorError::Unavailable(format!("{addr:?}"), why);
        let store =
            match self.root.call(|r| RootMsg::Store(addr.tenant_id.clone(), addr.store_id.clone(), r), None).await {
                Ok(CallResult::Success(Ok(s))) => s,
                Ok(CallResult::Success(Err(e))) => return Err(unavailable(e.to_string())),
                other => return Err(unavailable(format!("root supervisor: {other:?}"))),
            };
        match store.call(|r| crate::store::StoreMsg::Device(addr.device_id.clone(), r), None).await {
            Ok(CallResult::Success(Ok(d))) => Ok(d),
            Ok(CallResult::Success(Err(e))) => Err(unavailable(e.to_string())),
            other => Err(unavailable(format!("store actor: {other:?}"))),
        }
    }

    /// Calls the device actor, retrying on a fresh actor when the old one stopped or failed
    /// (passivation, restart) under the caller's feet.
    pub async fn call<T: Send + 'static>(
        &self,
        addr: &DeviceAddr,
        build: impl Fn(ractor::RpcReplyPort<T>) -> DeviceMsg,
    ) -> Result<T, ActorError> {
        let mut last = String::new();
        for attempt in 0..CALL_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
            let actor = self.device(addr).await?;
            match actor.call(&build, Some(self.shared.config.call_timeout)).await {
                Ok(CallResult::Success(v)) => return Ok(v),
                Ok(CallResult::Timeout) => return Err(ActorError::Timeout(format!("{addr:?}"))),
                Ok(CallResult::SenderError) => last = "actor stopped before replying".into(),
                Err(e) => last = e.to_string(),
            }
            // The actor is gone: forget it unless already replaced.
            self.shared.devices.remove_if(addr, |_, e| e.actor.get_id() == actor.get_id());
        }
        Err(ActorError::Unavailable(format!("{addr:?}"), last))
    }

    /// Decides a batch of the device's events; the actor then holds its candidates as
    /// committed. The caller must commit them, or call [`ActorSystem::forget`] if it cannot.
    pub async fn decide(&self, addr: &DeviceAddr, batch: Vec<Incoming>) -> Result<DeviceVerdicts, ActorError> {
        self.call(addr, |r| DeviceMsg::Decide(batch.clone(), r)).await
    }

    /// The batch last decided for this device did not commit: its actor drops what it holds
    /// and reloads from Postgres before its next message. Not awaited: the caller's next
    /// `decide` for the device queues behind it. An actor already gone needs nothing: its
    /// successor loads from Postgres anyway.
    pub fn forget(&self, addr: &DeviceAddr) {
        if let Some(e) = self.shared.devices.get(addr) {
            let _ = e.actor.send_message(DeviceMsg::Forget);
        }
    }

    pub async fn watermark(&self, addr: &DeviceAddr) -> Result<u64, ActorError> {
        self.call(addr, DeviceMsg::Watermark).await
    }

    /// Runs a device's command inbox: refresh from Postgres, then deliver, fail or expire
    /// whatever is due.
    pub async fn inbox_tick(
        &self,
        addr: &DeviceAddr,
        params: InboxParams,
    ) -> Result<Result<TickReport, PortError>, ActorError> {
        self.call(addr, |r| DeviceMsg::Inbox(InboxMsg::Tick(params, r))).await
    }

    /// Injects a failure into a device actor (fault tests).
    pub async fn fail(&self, addr: &DeviceAddr, why: &str) -> Result<(), ActorError> {
        let actor = self.device(addr).await?;
        actor
            .send_message(DeviceMsg::Fail(why.into()))
            .map_err(|e| ActorError::Unavailable(format!("{addr:?}"), e.to_string()))
    }

    pub fn resident(&self) -> usize {
        self.shared.devices.len()
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot(self.resident())
    }

    /// Stops every device actor idle longer than `idle_after`; returns how many.
    pub fn passivate_idle(&self) -> usize {
        passivate(&self.shared)
    }

    /// Stops the device actors `which` selects (the devices of a partition this instance no
    /// longer owns, or just took over); their state reloads from Postgres if they come back.
    /// Returns how many were resident.
    pub fn drop_where(&self, which: impl Fn(&DeviceAddr) -> bool) -> usize {
        let mut n = 0;
        self.shared.devices.retain(|addr, e| {
            let drop = which(addr);
            if drop {
                e.actor.stop(Some("partition handed over".into()));
                n += 1;
            }
            !drop
        });
        n
    }

    /// Stops the sweeper and every actor, and waits for the root supervisor to end. A second
    /// call finds nothing left to wait for.
    pub async fn shutdown(&self) {
        if let Some(sweeper) = self.sweeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            sweeper.abort();
        }
        self.root.stop(Some("shutdown".into()));
        let root_join = self.root_join.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(root_join) = root_join {
            let _ = root_join.await;
        }
        for e in self.shared.devices.iter() {
            e.actor.stop(Some("shutdown".into()));
        }
        self.shared.devices.clear();
    }
}

fn passivate(shared: &Shared) -> usize {
    let idle = shared.config.idle_after.as_millis() as u64;
    let now = shared.uptime_ms();
    let mut n = 0;
    shared.devices.retain(|_, e| {
        let keep = now.saturating_sub(e.last_active.load(Ordering::Relaxed)) < idle;
        if !keep {
            e.actor.stop(Some("passivated".into()));
            ActorStats::bump(&shared.stats.passivations);
            n += 1;
        }
        keep
    });
    n
}

/// One sweeper for the whole system rather than a timer per actor: 100,000 timers would cost
/// more memory than the actors themselves.
async fn sweep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(sweep_every(&shared.config));
    loop {
        tick.tick().await;
        passivate(&shared);
    }
}

fn sweep_every(config: &ActorConfig) -> Duration {
    (config.idle_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(30))
}
