//! Partitions and their ownership (docs/architecture.md, "Partitions and ownership").
//!
//! Stores are split into a fixed number of partitions ([`tillsync_schemas::partition`]). Each
//! partition is owned by one broker instance at a time: the holder of its lease in the lease
//! bucket ([`lease`]), who also bumped its epoch in Postgres ([`fence`]). Only the owner pulls
//! the partition's consumers ([`Work`], which the broker passes in: [`crate::work`]); every commit it makes checks the epoch, so an instance
//! that lost a partition (killed, paused, cut off) never commits for it again. Instances
//! joining or leaving rebalance the partitions by themselves ([`assign`]).

pub mod assign;
pub mod fence;
pub mod lease;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{Store, UpdateErrorKind};
use futures::StreamExt;
use tillsync_schemas::partition;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

pub use fence::Fence;

/// What an owned partition runs until its token is cancelled (handover, loss, shutdown): its
/// consumers. `bool`: taken over from an owner that did not hand it over. Passed in rather than
/// named here, so ownership does not depend on the consumers, which depend on it.
pub type Work = fn(Arc<Ctx>, Fence, bool, CancellationToken) -> futures::future::BoxFuture<'static, ()>;

use crate::error::Chain;
use crate::{metrics, Ctx};

/// What the rest of the broker asks about ownership.
pub struct Ownership {
    pub count: u16,
    pub instance: String,
    held: RwLock<HashMap<u16, Fence>>,
    fenced: mpsc::UnboundedSender<Fence>,
}

impl Ownership {
    /// The ownership handle, and the receiver of fence refusals for [`run`].
    pub fn new(count: u16, instance: String) -> (Ownership, mpsc::UnboundedReceiver<Fence>) {
        let (fenced, rx) = mpsc::unbounded_channel();
        (Ownership { count, instance, held: RwLock::new(HashMap::new()), fenced }, rx)
    }

    pub fn partition_of(&self, tenant: &str, store: &str) -> u16 {
        partition::of(tenant, store, self.count)
    }

    /// The fence of a partition this instance owns.
    pub fn fence(&self, p: u16) -> Option<Fence> {
        self.held.read().unwrap().get(&p).copied()
    }

    pub fn owns_store(&self, tenant: &str, store: &str) -> bool {
        self.fence(self.partition_of(tenant, store)).is_some()
    }

    /// Instance-wide duties (gauges over every store, the offline sweep) run on the owner of
    /// partition 0, so exactly one instance reports them.
    pub fn leads(&self) -> bool {
        self.fence(0).is_some()
    }

    pub fn owned(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.held.read().unwrap().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// A commit under `fence` was refused: the partition has a newer owner. Its work stops.
    pub fn report_fenced(&self, fence: Fence) {
        let _ = self.fenced.send(fence);
    }

    fn set(&self, fence: Fence) {
        self.held.write().unwrap().insert(fence.partition, fence);
    }

    fn unset(&self, p: u16) {
        self.held.write().unwrap().remove(&p);
    }
}

/// A partition this instance runs.
struct Running {
    fence: Fence,
    /// Revision of our lease key.
    revision: u64,
    renewed: Instant,
    stop: CancellationToken,
    work: JoinHandle<()>,
    /// Handing over: the work was told to stop; the lease is kept until it has.
    stopping: bool,
}

/// Partitions this instance lost (taken over, or a lease not renewed in time): what is still
/// done about each after [`lose`] returns, joined here rather than left running detached.
type Losing = JoinSet<()>;

/// Keeps this instance's share of the partitions until shutdown, then hands them all over.
/// Its wakes: a tick every fifth of the lease TTL, the lease bucket's changes, and fence
/// refusals.
pub async fn run(ctx: Arc<Ctx>, mut fenced: mpsc::UnboundedReceiver<Fence>, work: Work) {
    let me = ctx.partitions.instance.clone();
    let ttl = ctx.config.lease_ttl();
    // Every partition counts as unowned until the first plan has looked at the bucket, so a
    // broker that never reaches it (no lease bucket, NATS down) fires TillsyncPartitionUnowned.
    metrics::partitions_unowned(usize::from(ctx.config.partitions));
    let kv = loop {
        match lease::bucket(&ctx.js, ctx.config.stream_replicas, ttl).await {
            Ok(kv) => break kv,
            Err(error) => tracing::warn!(error = %Chain(&error), "Lease bucket unavailable; retrying in 1 s."),
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let mut observed = lease::Observed::new();
    let mut running: HashMap<u16, Running> = HashMap::new();
    let mut losing = Losing::new();
    // The first plan waits one interval, so the watch has delivered what the bucket holds.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + ttl / 5, ttl / 5);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = None;
    loop {
        if watch.is_none() {
            watch =
                kv.watch_with_history(">").await.map_err(|e| tracing::warn!(error = %e, "Lease watch failed.")).ok();
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            _ = tick.tick() => step(&ctx, &kv, &me, &mut observed, &mut running, &mut losing, work).await,
            Some(f) = fenced.recv() => {
                if running.get(&f.partition).is_some_and(|r| r.fence == f) {
                    tracing::warn!(partition = f.partition, epoch = f.epoch, "Partition taken over (fenced); stopping its work.");
                    lose(&ctx, &mut running, &mut losing, f.partition);
                }
            }
            Some(_) = losing.join_next(), if !losing.is_empty() => {}
            e = async { watch.as_mut().unwrap().next().await }, if watch.is_some() => match e {
                Some(Ok(entry)) => observed.apply(&entry),
                Some(Err(error)) => { tracing::warn!(%error, "Lease watch error; re-watching."); watch = None; }
                None => watch = None,
            },
        }
    }
    // Shutdown: hand every partition over cleanly, so others take them without waiting a TTL.
    for r in running.values() {
        r.stop.cancel();
    }
    let ps: Vec<u16> = running.keys().copied().collect();
    for p in ps {
        let r = running.remove(&p).unwrap();
        let _ = r.work.await;
        hand_over(&ctx, &kv, r.fence, r.revision).await;
    }
    let _ = kv.delete(lease::member_key(&me)).await;
    while losing.join_next().await.is_some() {}
    metrics::partitions_owned(0);
}

async fn step(
    ctx: &Arc<Ctx>,
    kv: &Store,
    me: &str,
    observed: &mut lease::Observed,
    running: &mut HashMap<u16, Running>,
    losing: &mut Losing,
    work: Work,
) {
    let ttl = ctx.config.lease_ttl();
    let bound = kv_bound(ttl);
    let member = kv.put(lease::member_key(me), me.to_string().into_bytes().into());
    let (member, ()) = tokio::join!(tokio::time::timeout(bound, member), renew(ctx, kv, me, observed, running, losing));
    match member {
        Ok(Ok(rev)) => observed.set(&lease::member_key(me), rev, Some(me.to_string())),
        // Debug only: while NATS is down this fails every round; tillsync_nats_connected and
        // the lost leases (one line a round) say so.
        Ok(Err(error)) => tracing::debug!(%error, "Membership not renewed."),
        Err(_) => tracing::debug!("Membership not renewed within {bound:?}."),
    }

    // Handovers whose work has ended: release the epoch, then the lease.
    let done: Vec<u16> = running.iter().filter(|(_, r)| r.stopping && r.work.is_finished()).map(|(p, _)| *p).collect();
    for p in done {
        let r = running.remove(&p).unwrap();
        observed.set(&lease::owner_key(p), r.revision, None);
        hand_over(ctx, kv, r.fence, r.revision).await;
    }

    let held: BTreeSet<u16> = running.keys().copied().collect();
    let view = observed.view(ctx.config.partitions, ttl, Instant::now());
    metrics::partitions_unowned(view.leases.iter().filter(|l| matches!(l, assign::Lease::Free(_))).count());
    let plan = assign::plan(me, &view, &held, ttl);
    for p in plan.release {
        if let Some(r) = running.get_mut(&p) {
            if !r.stopping {
                tracing::info!(partition = p, "Handing partition over.");
                r.stopping = true;
                r.stop.cancel();
            }
        }
    }
    for p in plan.acquire {
        if running.contains_key(&p) {
            continue;
        }
        let key = lease::owner_key(p);
        let take = tokio::time::timeout(bound, lease::take(kv, p, me, observed.get(&key)));
        let revision = match take.await.unwrap_or(Err(lease::LeaseError::TimedOut(bound))) {
            Ok(rev) => rev,
            Err(error) => {
                tracing::debug!(error = %Chain(&error), partition = p, "Lease not taken (someone was first).");
                continue;
            }
        };
        observed.set(&key, revision, Some(me.to_string()));
        let (fence, taken_over) = match fence::take(&ctx.pool, p, me).await {
            Ok(f) => f,
            Err(error) => {
                tracing::warn!(%error, partition = p, "Epoch not taken; giving the lease back.");
                let _ = lease::give_up(kv, p, revision).await;
                observed.set(&key, revision, None);
                continue;
            }
        };
        // Whatever this instance cached about these stores may be older than the last owner's
        // commits: start from Postgres.
        drop_actors(ctx, p);
        ctx.partitions.set(fence);
        let stop = ctx.cancel.child_token();
        let work = tokio::spawn(work(ctx.clone(), fence, taken_over, stop.clone()));
        running.insert(p, Running { fence, revision, renewed: Instant::now(), stop, work, stopping: false });
        metrics::partition_change("acquired");
        tracing::info!(partition = p, epoch = fence.epoch, "Partition acquired.");
    }
    metrics::partitions_owned(running.values().filter(|r| !r.stopping).count());
}

/// Renews every held lease at once, each renewal bounded by [`kv_bound`]. A lease someone
/// else took is lost at once; so is one whose next renewal could not land before its TTL ends
/// (this instance is cut off), so every partition is given up within one TTL of its last
/// renewal, not one after another. The losses of one round are logged in one line.
async fn renew(
    ctx: &Arc<Ctx>,
    kv: &Store,
    me: &str,
    observed: &mut lease::Observed,
    running: &mut HashMap<u16, Running>,
    losing: &mut Losing,
) {
    let ttl = ctx.config.lease_ttl();
    let bound = kv_bound(ttl);
    let held: Vec<(u16, u64)> = running.iter().map(|(p, r)| (*p, r.revision)).collect();
    let results = futures::future::join_all(held.into_iter().map(|(p, revision)| async move {
        let result = match tokio::time::timeout(bound, lease::renew(kv, p, me, revision)).await {
            Ok(Ok(rev)) => Ok(rev),
            Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => Err(None),
            Ok(Err(e)) => Err(Some(e.to_string())),
            Err(_) => Err(Some(format!("no answer within {bound:?}"))),
        };
        (p, result)
    }))
    .await;
    let (mut taken, mut expired, mut cause) = (Vec::new(), Vec::new(), None);
    for (p, result) in results {
        match result {
            Ok(rev) => {
                let r = running.get_mut(&p).unwrap();
                r.revision = rev;
                r.renewed = Instant::now();
                observed.set(&lease::owner_key(p), rev, Some(me.to_string()));
            }
            Err(None) => taken.push(p),
            Err(Some(error)) if running[&p].renewed.elapsed() + bound >= ttl => {
                expired.push(p);
                cause = Some(error);
            }
            Err(Some(error)) => tracing::debug!(%error, partition = p, "Lease renewal failed; retrying."),
        }
    }
    if !taken.is_empty() {
        tracing::warn!(partitions = ?taken, "Leases taken by another instance; stopping those partitions' work.");
    }
    if !expired.is_empty() {
        let error = cause.unwrap_or_default();
        tracing::warn!(%error, partitions = ?expired, "Leases not renewed within their TTL; stopping those partitions' work.");
    }
    for p in taken.into_iter().chain(expired) {
        lose(ctx, running, losing, p);
    }
}

/// How long one lease-bucket operation may take: a quarter of the TTL, so a round of renewals
/// ends in time to give a partition up before its lease expires (the client's own request
/// timeout, 5 s, is as long as the whole TTL).
fn kv_bound(ttl: Duration) -> Duration {
    ttl / 4
}

/// Stops a partition's work without waiting: its epoch is no longer ours, so whatever it
/// still tries to commit is refused by the fence. The rest goes on in `losing`.
fn lose(ctx: &Arc<Ctx>, running: &mut HashMap<u16, Running>, losing: &mut Losing, p: u16) {
    let Some(r) = running.remove(&p) else { return };
    ctx.partitions.unset(p);
    r.stop.cancel();
    metrics::partition_change("lost");
    metrics::partitions_owned(running.values().filter(|r| !r.stopping).count());
    // Said at once, not after the work has ended: work stuck in a NATS call may take a while.
    let (pool, fence) = (ctx.pool.clone(), r.fence);
    losing.spawn(async move {
        if let Err(error) = fence::mark_lost(&pool, fence).await {
            tracing::debug!(%error, partition = p, "Lost partition not marked (status shows its owner until a takeover).");
        }
    });
    let ctx = ctx.clone();
    losing.spawn(async move {
        let _ = r.work.await;
        drop_actors(&ctx, p);
    });
}

/// A handover after the work ended: nothing more will commit under the epoch.
async fn hand_over(ctx: &Arc<Ctx>, kv: &Store, fence: Fence, revision: u64) {
    let p = fence.partition;
    ctx.partitions.unset(p);
    drop_actors(ctx, p);
    if let Err(error) = fence::release(&ctx.pool, fence).await {
        tracing::warn!(%error, partition = p, "Epoch not marked released (the next owner bumps it anyway).");
    }
    if let Err(error) = lease::give_up(kv, p, revision).await {
        tracing::warn!(error = %Chain(&error), partition = p, "Lease not given back; it expires after its TTL.");
    }
    metrics::partition_change("released");
    tracing::info!(partition = p, epoch = fence.epoch, "Partition handed over.");
}

fn drop_actors(ctx: &Ctx, p: u16) {
    let count = ctx.partitions.count;
    ctx.actors.drop_where(|a| partition::of(&a.tenant_id, &a.store_id, count) == p);
}
