//! Commands down: intake, approval policy, per-device inbox, delivery, acks, expiry, feedback.
//!
//! - [`intake`] takes approved commands from the portal, validates them (subject, tenant,
//!   approvals, expiry, TTL, known device), records them and fans store-wide ones out to one
//!   inbox entry per device; refused ones are recorded as `rejected` and never delivered
//!   ([`unreadable`]: one that does not decode too, when it can be read well enough). It is
//!   a consumer on the spine ([`crate::spine`]), like [`acks`]; cancels and approval
//!   decisions come through it.
//! - The device actor ([`tillsync_actors::inbox`]) publishes each command to its device's
//!   stream once, in issue order, through the inbox ports ([`io`]), which persist every
//!   transition before publishing it; a connected bridge takes it live, and one that was away
//!   gets it by its catch-up ([`sync`]) or a due check ([`copies`]).
//!   [`copies`] checks a published copy is still there and deletes the copies of what ended.
//! - [`acks`] records device acks, a batch per statement, with the transitions they make, and
//!   the applies that came after the portal was told a command ended (corrections).
//! - [`approvals`] counts approvers' signed decisions about commands waiting for approval and
//!   releases a command once it has enough.
//! - [`cancel`] cancels what has not been applied, on the portal's request.
//! - [`sync`] hands a bridge that holds no consumer its unfinished commands again when it
//!   (re)connects and asks.
//! - [`misnamed`] deletes device command consumers no device may use.
//! - [`sweep`] wakes device actors for due checks and expiries (actors are passivated when
//!   idle, so no timer lives in them), republishes status messages a crash left unpublished,
//!   deletes copies of ended commands and exports the inbox gauges.
//!
//! Every transition is a `command_log` row and a status message on
//! `tillsync.status.<tenant>.<store>.<command_id>`.

pub mod ack_sql;
pub mod acks;
pub mod approvals;
pub mod cancel;
pub mod copies;
pub mod intake;
pub mod intake_sql;
pub mod io;
pub mod misnamed;
pub mod publish;
pub mod sql;
pub mod sweep;
pub mod sync;
pub mod unreadable;

use futures::StreamExt;
use tillsync_actors::policy::InboxParams;
use tillsync_schemas::{DeviceAddr, WireError};

use crate::config::Config;
use crate::error::Chain;
use crate::spine::Failure;
use crate::Ctx;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("Postgres")]
    Db(#[from] sqlx::Error),
    #[error("JetStream publish: {0}")]
    Publish(String),
    #[error("stored envelope unreadable: {0}")]
    Stored(WireError),
    #[error(transparent)]
    Actor(#[from] tillsync_actors::ActorError),
}

/// The delivery knobs of the device inboxes.
pub fn params(c: &Config) -> InboxParams {
    InboxParams { max_attempts: c.command_max_attempts, first_retry_ms: c.command_retry_ms.max(1) }
}

impl From<CommandError> for Failure {
    fn from(e: CommandError) -> Failure {
        match e {
            CommandError::Db(e) => e.into(),
            CommandError::Stored(_) => Failure::new(&e, false, false),
            CommandError::Publish(_) | CommandError::Actor(_) => Failure::new(&e, false, true),
        }
    }
}

/// Runs the inboxes of these devices now (after intake), a few at a time.
pub async fn tick(ctx: &Ctx, devices: Vec<DeviceAddr>) {
    let p = params(&ctx.config);
    futures::stream::iter(devices)
        .for_each_concurrent(16, |addr| async move {
            match ctx.actors.inbox_tick(&addr, p).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(error = %Chain(&error), device_id = %addr.device_id, "Inbox tick failed; the sweeper retries.")
                }
                Err(error) => {
                    tracing::warn!(error = %Chain(&error), device_id = %addr.device_id, "Device actor unavailable; the sweeper retries.")
                }
            }
        })
        .await;
}
