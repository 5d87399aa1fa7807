//! The I/O behind the device actor's inbox ports: persist a transition, then publish it (the
//! delivery, then its status), then count it.

use async_nats::jetstream::Context;
use sqlx::PgPool;
use tillsync_actors::ports::{Delivery, Finish, InboxSnapshot};
use tillsync_schemas::{CommandState, DeviceAddr};

use super::{publish, store, CommandError};
use crate::metrics;

/// What the inbox ports need: the database and JetStream.
#[derive(Clone)]
pub struct CommandIo {
    pub pool: PgPool,
    pub js: Context,
    pub marks: publish::Marks,
}

impl CommandIo {
    pub async fn load_inbox(&self, a: &DeviceAddr) -> Result<InboxSnapshot, CommandError> {
        let (pending, online) = store::load_inbox(&self.pool, a).await?;
        Ok(InboxSnapshot { pending, online })
    }

    pub async fn deliver(&self, a: &DeviceAddr, d: &Delivery) -> Result<bool, CommandError> {
        let Some((envelope, row)) =
            store::deliver(&self.pool, a, &d.command_id, d.attempt, d.next_attempt_at_ms, d.now_ms).await?
        else {
            return Ok(false);
        };
        metrics::command_delivery(d.attempt > 1);
        // The status first: acks bypass the actor, so the device's ack (and its `acked` status)
        // may follow the command at once; it must not overtake `delivered`.
        self.statuses(&[row]).await;
        // A failed publish is not undone: the attempt counts, and the next one follows the backoff.
        publish::command(&self.js, a, &envelope, d.attempt).await.map(|()| true)
    }

    pub async fn finish(&self, a: &DeviceAddr, f: &Finish) -> Result<bool, CommandError> {
        let Some(row) = store::finish(&self.pool, a, &f.command_id, f.state, &f.code, &f.detail).await? else {
            return Ok(false);
        };
        match f.state {
            CommandState::Expired => metrics::command_expired(),
            _ => metrics::command_failed(f.code.clone()),
        }
        if f.state == CommandState::Expired {
            tracing::info!(command_id = %f.command_id, device_id = %a.device_id, attempts = f.attempts, "Command expired.");
        } else {
            tracing::warn!(command_id = %f.command_id, device_id = %a.device_id, code = %f.code, "Command failed.");
        }
        self.statuses(&[row]).await;
        Ok(true)
    }

    /// Status publishing never fails a transition: it is committed, and the outbox resends.
    async fn statuses(&self, rows: &[store::LogRow]) {
        if let Err(error) = publish::statuses(&self.js, &self.marks, rows).await {
            tracing::warn!(%error, "Command status not published; the sweeper retries it.");
        }
    }
}
