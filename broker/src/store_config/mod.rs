//! A shop's configuration from head office (menus, prices, modifiers, taxes, tenders,
//! settings, users), versioned per store (docs/operations.md, "Configuration"):
//!
//! - [`publish`] checks a change set whole and gives each store it reaches its next version
//!   in one transaction, or records why not (the CLI, the portal and the bench call it);
//! - [`distribute`] puts versions on JetStream (deltas, then the store's snapshot);
//! - [`portal`] answers publishes on `tillsync.cfgpub.>`;
//! - [`lost`] finds snapshots NATS no longer holds, so the distributor republishes them;
//! - [`drift`] compares what devices applied with what they should run;
//! - [`model`] is the pure part, [`rows`] the SQL.

pub mod distribute;
pub mod drift;
pub mod lost;
pub mod model;
pub mod portal;
pub mod publish;
pub mod rows;

use std::sync::Arc;
use std::time::Duration;

pub use publish::{ensure_store, publish, record_refusal, PublishError};

use crate::tasks::{Job, Scope, Tasks};
use crate::{BrokerError, Ctx};

/// Registers the portal responder (subscribed before it returns), the distributor, the drift
/// gauges and the check for lost snapshots.
pub async fn start(ctx: &Arc<Ctx>, tasks: &mut Tasks) -> Result<(), BrokerError> {
    let requests = portal::subscribe(&ctx.nats).await?;
    let portal = Job::on("config_portal", Scope::Instance, "tillsync.cfgpub.>");
    tasks.spawn(portal, |_| portal::run(ctx.clone(), requests));
    let distribute = Job::on("config_distribute", Scope::Lead, "NOTIFY tillsync_config, or every second");
    tasks.spawn(distribute, |_| distribute::run(ctx.clone()));
    let drift = Job::every("config_drift", Scope::Lead, Duration::from_millis(ctx.config.monitor_interval_ms));
    tasks.spawn(drift, |job| drift::run(ctx.clone(), job));
    tasks.spawn(Job::every("config_lost", Scope::Lead, lost::CHECK_EVERY), |job| lost::run(ctx.clone(), job));
    Ok(())
}
