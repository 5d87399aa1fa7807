//! tillsync's task registry: every background loop of the broker and of the edge bridge is a
//! [`Job`] of one [`Tasks`], with a name and what wakes it (a period, or a trigger such as a
//! subscription). They all stop one way: [`Tasks::stop`] cancels the owner's token, each task
//! returns at its next wait, and they are joined within a bound, each named as it stops and any
//! that did not. Nothing is spawned outside the registry: short-lived work started without
//! being awaited goes to its tracker ([`Tasks::spawned`]), joined after the tasks. So once
//! [`Tasks::stop`] returns, nothing the owner started still runs, and it can close what they
//! used (NATS, the pools, the SQLite file).
//!
//! Each task's running state (1 from registration, 0 once it has ended) goes to a gauge the
//! owner supplies: the broker's `tillsync_broker_tasks{task, scope}` in the global `metrics`
//! recorder, the bridge's `tillsync_edge_tasks{task}` in its own. What only one owner needs
//! stays with it: the broker's jobs say where they run (every instance, or only the lead) and
//! tick through `tillsync_broker::tasks::Job::run`, which asks the broker whether it leads.
//!
//! Its own crate because the bridge must not depend on the broker, and the schemas crate is the
//! wire contract only.

mod job;
mod registry;

pub use job::{AsJob, Job, Trigger};
pub use registry::Tasks;
