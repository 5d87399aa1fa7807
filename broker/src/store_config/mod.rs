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

pub use publish::{ensure_store, publish, record_refusal, PublishError, Published};

use crate::{BrokerError, Ctx};

/// Starts the portal responder (subscribed before it returns), the distributor and the drift
/// gauges.
pub async fn start(ctx: &Arc<Ctx>, tasks: &mut tokio::task::JoinSet<()>) -> Result<(), BrokerError> {
    let requests = portal::subscribe(&ctx.nats).await?;
    tasks.spawn(portal::run(ctx.clone(), requests));
    tasks.spawn(distribute::run(ctx.clone()));
    tasks.spawn(drift::run(ctx.clone()));
    tasks.spawn(lost::run(ctx.clone()));
    Ok(())
}
