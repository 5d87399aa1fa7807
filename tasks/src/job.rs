//! What the registry knows of a job: its name and what wakes it.

use std::fmt;
use std::time::Duration;

/// What wakes a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A period: the task does its work, then waits this long.
    Every(Duration),
    /// Something else (a subscription, new outbox rows, a Postgres notification), named for
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

/// An owner's job: a [`Job`] and whatever the owner adds (the broker's says where it runs),
/// handed to the task when it starts and to the owner's gauge.
pub trait AsJob: Copy + Send + Sync + 'static {
    fn job(&self) -> Job;

    /// Where the job runs, for the `Task registered.` line; `None` where every job runs alike.
    fn scope(&self) -> Option<&'static str> {
        None
    }
}

impl AsJob for Job {
    fn job(&self) -> Job {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_read_as_operators_see_them() {
        assert_eq!(Trigger::Every(Duration::from_secs(2)).to_string(), "every 2s");
        assert_eq!(Trigger::On("tillsync.csync.>").to_string(), "on tillsync.csync.>");
    }
}
