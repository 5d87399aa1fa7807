//! The bridge's background tasks, in one registry. Every loop the bridge runs is a [`Job`]: a
//! name and what wakes it (a period, or a trigger such as the outbox or a subscription). They
//! all stop one way: [`Tasks::stop`] cancels the bridge's token, each task returns at its next
//! wait, and they are joined within a bound, each named as it stops and any that did not.
//! Nothing is spawned outside the registry, so once they are joined `Bridge::shutdown` can
//! close NATS and the SQLite file with no loop left to use them.
//!
//! `tillsync_edge_tasks{task}` is 1 while a task runs and 0 once it has ended: a 0 while the
//! bridge runs is a task that ended by itself (a subscription that closed).
//!
//! The broker has the same registry (`tillsync_broker::tasks`); the bridge must not depend on
//! the broker crate, and this has no place in the wire-contract crate.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What wakes a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A period: the task does its work, then waits this long.
    Every(Duration),
    /// Something else (new outbox rows, a subscription, the connection), named for the
    /// operator; the task waits for it and for the cancellation itself.
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
    pub trigger: Trigger,
}

impl Job {
    pub const fn every(name: &'static str, period: Duration) -> Job {
        Job { name, trigger: Trigger::Every(period) }
    }

    pub const fn on(name: &'static str, what: &'static str) -> Job {
        Job { name, trigger: Trigger::On(what) }
    }
}

/// The running tasks, joined by [`Tasks::stop`].
pub struct Tasks {
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
    set: JoinSet<()>,
    running: HashMap<Id, Job>,
    jobs: Vec<Job>,
}

impl Tasks {
    /// An empty registry whose tasks stop when `cancel` fires; each task's gauge is in `metrics`.
    pub fn new(cancel: CancellationToken, metrics: Arc<Metrics>) -> Tasks {
        Tasks { cancel, metrics, set: JoinSet::new(), running: HashMap::new(), jobs: Vec::new() }
    }

    /// Registers `job` and starts `task`, which must return once the cancellation fires.
    pub fn spawn<Fut>(&mut self, job: Job, task: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let running = Running::new(job, self.metrics.clone());
        let handle = self.set.spawn(async move {
            let _running = running;
            task.await;
        });
        self.running.insert(handle.id(), job);
        self.jobs.push(job);
    }

    /// Every registered job, in registration order.
    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    /// Logs what runs: one line with every name, and one line per job with its trigger (debug).
    pub fn log_started(&self) {
        for job in &self.jobs {
            tracing::debug!(task = job.name, trigger = %job.trigger, "Task registered.");
        }
        let names: Vec<&str> = self.jobs.iter().map(|j| j.name).collect();
        tracing::info!(count = names.len(), tasks = %names.join(","), "Tasks started.");
    }

    /// Cancels every task and joins them for at most `within`, logging each as it stops; the
    /// ones still running then are named and aborted. Returns their names.
    pub async fn stop(mut self, within: Duration) -> Vec<&'static str> {
        self.cancel.cancel();
        let deadline = tokio::time::Instant::now() + within;
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

/// `tillsync_edge_tasks` is 1 from registration; dropped when the task ends, returns, panics or
/// is aborted, it goes to 0.
struct Running(Job, Arc<Metrics>);

impl Running {
    fn new(job: Job, metrics: Arc<Metrics>) -> Running {
        metrics.task(job.name).set(1.0);
        Running(job, metrics)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.1.task(self.0.name).set(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(metrics: &Metrics, task: &str) -> Option<String> {
        let series = format!("tillsync_edge_tasks{{task=\"{task}\"}} ");
        metrics.render().lines().find_map(|l| l.strip_prefix(&series).map(String::from))
    }

    #[tokio::test]
    async fn stop_joins_every_task_and_names_the_ones_that_do_not_stop() {
        let (cancel, metrics) = (CancellationToken::new(), Arc::new(Metrics::new()));
        let mut tasks = Tasks::new(cancel.clone(), metrics.clone());
        let (c1, c2) = (cancel.clone(), cancel.clone());
        tasks.spawn(Job::on("polite", "the test"), async move { c1.cancelled().await });
        tasks.spawn(Job::every("done", Duration::from_secs(1)), async move { drop(c2) });
        tasks.spawn(Job::on("stubborn", "nothing"), std::future::pending());
        assert_eq!(tasks.jobs().iter().map(|j| j.name).collect::<Vec<_>>(), ["polite", "done", "stubborn"]);
        assert_eq!(gauge(&metrics, "polite").as_deref(), Some("1"));
        let late = tasks.stop(Duration::from_millis(200)).await;
        assert!(cancel.is_cancelled());
        assert_eq!(late, ["stubborn"]);
        for task in ["polite", "done", "stubborn"] {
            assert_eq!(gauge(&metrics, task).as_deref(), Some("0"), "{task}");
        }
    }

    #[tokio::test]
    async fn stop_returns_nothing_when_all_stopped() {
        let cancel = CancellationToken::new();
        let mut tasks = Tasks::new(cancel.clone(), Arc::new(Metrics::new()));
        let c = cancel.clone();
        tasks.spawn(Job::on("polite", "the test"), async move { c.cancelled().await });
        assert!(tasks.stop(Duration::from_secs(5)).await.is_empty());
    }

    #[test]
    fn triggers_read_as_operators_see_them() {
        assert_eq!(Trigger::Every(Duration::from_secs(2)).to_string(), "every 2s");
        assert_eq!(Trigger::On("new outbox rows").to_string(), "on new outbox rows");
    }
}
