//! The I/O behind the device actor's inbox ports: persist a transition, then publish it (the
//! delivery, then its status), then count it.

use std::sync::Arc;

use async_nats::jetstream::Context;
use sqlx::PgPool;
use tillsync_actors::policy::{CopyState, Publish};
use tillsync_actors::ports::{Delivery, Finish, InboxSnapshot};
use tillsync_schemas::{CommandState, DeviceAddr};

use super::{copies, publish, sql, CommandError};
use crate::error::Chain;
use crate::metrics;
use crate::signing::Signer;

/// What the inbox ports need: the database, JetStream and the signing key.
#[derive(Clone)]
pub struct CommandIo {
    pub pool: PgPool,
    pub js: Context,
    pub marks: publish::Marks,
    pub signer: Arc<Signer>,
}

impl CommandIo {
    pub async fn load_inbox(&self, a: &DeviceAddr) -> Result<InboxSnapshot, CommandError> {
        let (pending, online) = sql::load_inbox(&self.pool, a).await?;
        Ok(InboxSnapshot { pending, online })
    }

    pub async fn deliver(&self, a: &DeviceAddr, d: &Delivery) -> Result<bool, CommandError> {
        if d.why == Publish::Unconfirmed {
            return self.publish_again(a, d).await;
        }
        let Some((envelope, row)) =
            sql::deliver(&self.pool, a, &d.command_id, d.attempt, d.next_attempt_at_ms, d.now_ms).await?
        else {
            return Ok(false);
        };
        match d.why {
            Publish::First => metrics::command_delivery(),
            why => {
                tracing::warn!(command_id = %d.command_id, device_id = %a.device_id, attempt = d.attempt, why = why.as_str(), "Republishing a command copy.");
                metrics::command_republished(why.as_str());
            }
        }
        // The status first: acks bypass the actor, so the device's ack (and its `acked` status)
        // may follow the command at once; it must not overtake `delivered`.
        self.statuses(&[row]).await;
        // A failed publish is not undone: the attempt counts, and the next check (which finds
        // no stream sequence recorded) publishes the same copy again.
        self.publish(a, &d.command_id, &envelope, d.attempt).await
    }

    /// The same copy again, for a publish whose PubAck was never recorded.
    async fn publish_again(&self, a: &DeviceAddr, d: &Delivery) -> Result<bool, CommandError> {
        let Some(envelope) = sql::unconfirmed(&self.pool, a, &d.command_id, d.attempt, d.next_attempt_at_ms).await?
        else {
            return Ok(false);
        };
        metrics::command_republished(Publish::Unconfirmed.as_str());
        self.publish(a, &d.command_id, &envelope, d.attempt).await
    }

    async fn publish(
        &self,
        a: &DeviceAddr,
        command_id: &str,
        envelope: &[u8],
        attempt: u32,
    ) -> Result<bool, CommandError> {
        let seq = publish::command(&self.js, &self.signer, a, envelope, attempt).await?;
        sql::record_copies(&self.pool, &[(a.clone(), command_id.to_string(), seq)]).await?;
        Ok(true)
    }

    pub async fn finish(&self, a: &DeviceAddr, f: &Finish) -> Result<bool, CommandError> {
        let Some((row, copies)) = sql::finish(&self.pool, a, &f.command_id, f.state, &f.code, &f.detail).await? else {
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
        // Copies go before the portal hears the command ended; one not deleted now (NATS
        // unavailable) stays listed and the sweeper deletes it.
        let entry = sql::Copies { tenant_id: a.tenant_id.clone(), command_id: f.command_id.clone(), copies };
        if let Err(error) = copies::purge(&self.js, &self.pool, &[entry]).await {
            tracing::warn!(error = %Chain(&error), command_id = %f.command_id, "Command copies not deleted; the sweeper retries.");
        }
        self.statuses(&[row]).await;
        Ok(true)
    }

    pub async fn check(&self, a: &DeviceAddr, stream_seq: Option<u64>) -> Result<CopyState, CommandError> {
        copies::check(&self.js, a, stream_seq).await
    }

    pub async fn reschedule(
        &self,
        a: &DeviceAddr,
        command_id: &str,
        next_attempt_at_ms: i64,
    ) -> Result<(), CommandError> {
        Ok(sql::reschedule(&self.pool, a, command_id, next_attempt_at_ms).await?)
    }

    /// Status publishing never fails a transition: it is committed, and the outbox resends.
    async fn statuses(&self, rows: &[sql::LogRow]) {
        if let Err(error) = publish::statuses(&self.js, &self.marks, rows).await {
            tracing::warn!(error = %Chain(&error), "Command status not published; the sweeper retries it.");
        }
    }
}
