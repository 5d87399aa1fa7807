//! The broker's background tasks, in one registry ([`tillsync_tasks`]). Every loop the broker
//! runs (besides each partition's consumers, which run under the `partitions` task) is a
//! [`Job`]: a name, what wakes it (a period, or a trigger such as a subscription) and where it
//! runs (every instance, or only the one leading partition 0). They all stop one way:
//! `Broker::shutdown` cancels [`Ctx::cancel`], each task returns at its next wait, and
//! [`Tasks::stop`] joins them within a bound, naming each one as it stops and any that did not.
//! A task joins whatever it starts (the partitions task its partitions' work). Short-lived work
//! started without being awaited (a wake of device actors after an intake batch, a burst of
//! status marks, the acks sent again after a reconnect) goes to the registry's tracker
//! ([`Tasks::spawned`]), joined right after the tasks that start most of it. So once
//! [`Tasks::stop`] returns, nothing the broker started still runs, and the shutdown can stop
//! the actors and close the pools.
//!
//! `tillsync_broker_tasks{task, scope}` is 1 while a task runs and 0 once it has ended
//! ([`gauge`]): a 0 while the broker runs is a task that ended by itself (a subscription that
//! closed).
//!
//! What is the broker's own here: the scope, and [`Job::run`], which ticks a lead-only job only
//! while this instance leads.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

pub use tillsync_tasks::Trigger;

use crate::error::Chain;
use crate::{metrics, Ctx};

/// The broker's registry of tasks.
pub type Tasks = tillsync_tasks::Tasks<Job>;

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

/// A registered task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub name: &'static str,
    pub scope: Scope,
    pub trigger: Trigger,
}

impl tillsync_tasks::AsJob for Job {
    fn job(&self) -> tillsync_tasks::Job {
        tillsync_tasks::Job { name: self.name, trigger: self.trigger }
    }

    fn scope(&self) -> Option<&'static str> {
        Some(self.scope.as_str())
    }
}

/// Sets `tillsync_broker_tasks{task, scope}`: the registry's gauge ([`Tasks::new`]).
pub fn gauge(job: &Job, running: bool) {
    metrics::broker_task(job.name, job.scope.as_str(), running);
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
                    let error = Chain(&error);
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

/// What a tick returns: nothing, or a result whose error is logged with its causes.
pub trait Ticked {
    type Error: std::error::Error + 'static;

    fn result(self) -> Result<(), Self::Error>;
}

impl Ticked for () {
    type Error = Infallible;

    fn result(self) -> Result<(), Infallible> {
        Ok(())
    }
}

impl<E: std::error::Error + 'static> Ticked for Result<(), E> {
    type Error = E;

    fn result(self) -> Result<(), E> {
        self
    }
}

#[cfg(test)]
mod tests {
    use tillsync_tasks::AsJob;

    use super::*;

    #[test]
    fn a_job_names_its_scope_for_the_log() {
        let job = Job::every("gap_repair", Scope::Lead, Duration::from_secs(5));
        assert_eq!(job.scope(), Some("lead"));
        assert_eq!(job.job(), tillsync_tasks::Job::every("gap_repair", Duration::from_secs(5)));
    }

    #[test]
    fn a_failed_tick_keeps_its_error_and_its_causes() {
        let failed: Result<(), crate::BrokerError> = Err(sqlx::Error::PoolTimedOut.into());
        let error = failed.result().unwrap_err();
        assert_eq!(Chain(&error).to_string(), format!("Postgres: {}", sqlx::Error::PoolTimedOut));
        assert!(().result().is_ok());
    }
}
