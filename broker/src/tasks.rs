//! The broker's background tasks, in one registry. Every loop the broker runs (besides each
//! partition's consumers, which run under the `partitions` task) is a [`Job`]: a name, what
//! wakes it (a period, or a trigger such as a subscription) and where it runs (every instance,
//! or only the one leading partition 0). They all stop one way: `Broker::shutdown` cancels
//! [`Ctx::cancel`], each task returns at its next wait, and [`Tasks::stop`] joins them within
//! a bound, naming each one as it stops and any that did not. A task joins whatever it starts
//! (the partitions task its partitions' work). Short-lived work started without being awaited
//! (a wake of device actors after an intake batch, a burst of status marks, the acks sent again
//! after a reconnect) goes to the registry's tracker ([`Tasks::spawned`]), joined right after
//! the tasks that start most of it. So once [`Tasks::stop`] returns, nothing the broker started
//! still runs, and the shutdown can stop the actors and close the pools.
//!
//! `tillsync_broker_tasks{task, scope}` is 1 while a task runs and 0 once it has ended: a 0
//! while the broker runs is a task that ended by itself (a subscription that closed).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{metrics, Ctx};

/// Where a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// On every instance (its own partitions, its own connections, its own gauges).
    Instance,
    /// Only on the instance leading partition 0 ([`crate::partitions::Ownership::leads`]):
    /// duties over every store, done once.
    Lead,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Instance => "instance",
            Scope::Lead => "lead",
        }
    }
}

/// What wakes a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A period: [`Job::run`] runs its tick, then waits this long.
    Every(Duration),
    /// Something else (a subscription, a Postgres notification, the lease bucket), named for
    /// the operator; the task waits for it and for the cancellation itself.
    On(&'static str),
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Every(period) => write!(f, "every {period:?}"),
            Trigger::On(what) => write!(f, "on {what}"),
        }
    }
}

/// A registered task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub name: &'static str,
    pub scope: Scope,
    pub trigger: Trigger,
}

/// How often a lead-only job that does not lead looks whether it does now.
const NOT_LEADING: Duration = Duration::from_secs(1);

impl Job {
    pub const fn every(name: &'static str, scope: Scope, period: Duration) -> Job {
        Job { name, scope, trigger: Trigger::Every(period) }
    }

    pub const fn on(name: &'static str, scope: Scope, what: &'static str) -> Job {
        Job { name, scope, trigger: Trigger::On(what) }
    }

    /// Runs `tick`, then waits the job's period, until shutdown; a lead-only job ticks only
    /// while this instance leads, and looks again every second while it does not. A failed
    /// tick is logged with the job's name and tried again after the period. A job with a
    /// trigger of its own has no period: it ticks every second.
    pub async fn run<F, Fut>(self, ctx: &Ctx, mut tick: F)
    where
        F: FnMut() -> Fut,
        Fut: Future,
        Fut::Output: Ticked,
    {
        let period = match self.trigger {
            Trigger::Every(period) => period,
            Trigger::On(_) => NOT_LEADING,
        };
        loop {
            let wait = if self.scope == Scope::Instance || ctx.partitions.leads() {
                if let Err(error) = tick().await.result() {
                    tracing::warn!(%error, task = self.name, ?period, "Task failed; trying again after its period.");
                }
                period
            } else {
                NOT_LEADING.min(period)
            };
            tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// What a tick returns: nothing, or a result whose error is logged.
pub trait Ticked {
    fn result(self) -> Result<(), String>;
}

impl Ticked for () {
    fn result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: std::error::Error + 'static> Ticked for Result<(), E> {
    fn result(self) -> Result<(), String> {
        self.map_err(|e| crate::error::Chain(&e).to_string())
    }
}

/// What [`Tasks::stop`] names for tracked work that did not end in time.
const SPAWNED: &str = "spawned_work";

/// The running tasks, joined by [`Tasks::stop`].
pub struct Tasks {
    cancel: CancellationToken,
    set: JoinSet<()>,
    running: HashMap<Id, Job>,
    jobs: Vec<Job>,
    spawned: TaskTracker,
}

impl Tasks {
    /// An empty registry whose tasks stop when `cancel` fires.
    pub fn new(cancel: CancellationToken) -> Tasks {
        Tasks { cancel, set: JoinSet::new(), running: HashMap::new(), jobs: Vec::new(), spawned: TaskTracker::new() }
    }

    /// Where short-lived work is spawned so that [`Tasks::stop`] joins it once the tasks have
    /// stopped; work that tracked work spawns meanwhile is joined too. Work that only helps a
    /// running broker (the acks sent again after a reconnect) is not started once it is closed.
    pub fn spawned(&self) -> TaskTracker {
        self.spawned.clone()
    }

    /// Registers `job` and starts its task; `task` is given the job (a periodic one hands it
    /// to [`Job::run`]) and must return once the cancellation fires.
    pub fn spawn<F, Fut>(&mut self, job: Job, task: F)
    where
        F: FnOnce(Job) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = task(job);
        let handle = self.set.spawn(async move {
            let _running = Running::new(job);
            task.await;
        });
        self.running.insert(handle.id(), job);
        self.jobs.push(job);
    }

    /// Every registered job, in registration order.
    #[cfg(test)]
    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    /// Logs what runs: one line with every name, and one line per job with its scope and
    /// trigger (debug).
    pub fn log_started(&self) {
        for job in &self.jobs {
            tracing::debug!(task = job.name, scope = job.scope.as_str(), trigger = %job.trigger, "Task registered.");
        }
        let names: Vec<&str> = self.jobs.iter().map(|j| j.name).collect();
        tracing::info!(count = names.len(), tasks = %names.join(","), "Tasks started.");
    }

    /// Cancels every task and joins them, then the tracked work, for at most `within` in all,
    /// logging each task as it stops; the tasks still running then are named and aborted, and
    /// tracked work still running is named [`SPAWNED`]. Returns those names.
    pub async fn stop(mut self, within: Duration) -> Vec<&'static str> {
        self.cancel.cancel();
        let deadline = tokio::time::Instant::now() + within;
        let mut late = self.join_tasks(deadline, within).await;
        // Only now: until the tasks have stopped, they may still start work to join.
        self.spawned.close();
        let pending = self.spawned.len();
        match tokio::time::timeout_at(deadline, self.spawned.wait()).await {
            Ok(()) => tracing::info!(pending, "Spawned work joined."),
            Err(_) => {
                tracing::warn!(running = self.spawned.len(), ?within, "Spawned work did not end in time; leaving it.");
                late.push(SPAWNED);
            }
        }
        late
    }

    /// Joins the tasks until `deadline`, then aborts the rest and returns their names.
    async fn join_tasks(&mut self, deadline: tokio::time::Instant, within: Duration) -> Vec<&'static str> {
        loop {
            match tokio::time::timeout_at(deadline, self.set.join_next_with_id()).await {
                Ok(Some(Ok((id, ())))) => self.stopped(id, None),
                Ok(Some(Err(e))) => self.stopped(e.id(), Some(e)),
                Ok(None) => return Vec::new(),
                Err(_) => break,
            }
        }
        let mut late: Vec<&'static str> = self.running.values().map(|j| j.name).collect();
        late.sort_unstable();
        tracing::warn!(tasks = %late.join(","), ?within, "Tasks did not stop in time; aborting them.");
        self.set.shutdown().await;
        late
    }

    fn stopped(&mut self, id: Id, failed: Option<tokio::task::JoinError>) {
        let name = self.running.remove(&id).map_or("unknown", |j| j.name);
        match failed {
            None => tracing::info!(task = name, "Task stopped."),
            Some(error) => tracing::error!(%error, task = name, "Task ended abnormally."),
        }
    }
}

/// `tillsync_broker_tasks` is 1 while a task runs; dropped when it ends, returns, panics or is
/// aborted, it goes to 0.
struct Running(Job);

impl Running {
    fn new(job: Job) -> Running {
        metrics::broker_task(job.name, job.scope.as_str(), true);
        Running(job)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        metrics::broker_task(self.0.name, self.0.scope.as_str(), false);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn stop_joins_every_task_and_names_the_ones_that_do_not_stop() {
        let cancel = CancellationToken::new();
        let mut tasks = Tasks::new(cancel.clone());
        let (c1, c2) = (cancel.clone(), cancel.clone());
        tasks.spawn(Job::on("polite", Scope::Instance, "the test"), move |_| async move { c1.cancelled().await });
        tasks.spawn(Job::every("done", Scope::Lead, Duration::from_secs(1)), move |_| async move { drop(c2) });
        tasks.spawn(Job::on("stubborn", Scope::Instance, "nothing"), |_| std::future::pending());
        assert_eq!(tasks.jobs().iter().map(|j| j.name).collect::<Vec<_>>(), ["polite", "done", "stubborn"]);
        let late = tasks.stop(Duration::from_millis(200)).await;
        assert!(cancel.is_cancelled());
        assert_eq!(late, ["stubborn"]);
    }

    #[tokio::test]
    async fn stop_returns_nothing_when_all_stopped() {
        let cancel = CancellationToken::new();
        let mut tasks = Tasks::new(cancel.clone());
        let c = cancel.clone();
        tasks.spawn(Job::on("polite", Scope::Instance, "the test"), move |_| async move { c.cancelled().await });
        assert!(tasks.stop(Duration::from_secs(5)).await.is_empty());
    }

    #[tokio::test]
    async fn stop_joins_the_work_tasks_spawn_as_they_stop_and_the_work_it_spawns() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let cancel = CancellationToken::new();
        let mut tasks = Tasks::new(cancel.clone());
        let (spawned, c) = (tasks.spawned(), cancel.clone());
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        // Like a last intake batch whose wake marks statuses: spawned at the stop, and spawning.
        tasks.spawn(Job::on("intake", Scope::Instance, "the test"), move |_| async move {
            c.cancelled().await;
            let again = spawned.clone();
            spawned.spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                again.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    flag.store(true, Ordering::SeqCst);
                });
            });
        });
        assert!(tasks.stop(Duration::from_secs(5)).await.is_empty());
        assert!(done.load(Ordering::SeqCst), "the work spawned by spawned work was joined");
    }

    #[tokio::test]
    async fn stop_names_spawned_work_that_does_not_end() {
        let tasks = Tasks::new(CancellationToken::new());
        tasks.spawned().spawn(std::future::pending::<()>());
        assert_eq!(tasks.stop(Duration::from_millis(100)).await, [SPAWNED]);
    }

    #[test]
    fn triggers_read_as_operators_see_them() {
        assert_eq!(Trigger::Every(Duration::from_secs(2)).to_string(), "every 2s");
        assert_eq!(Trigger::On("tillsync.csync.>").to_string(), "on tillsync.csync.>");
    }
}
