//! Command acks from devices, a lane's waiting acks at a time: each decodable ack is recorded
//! (matched or not) with its transition, all in one statement where they can be
//! ([`ack_store::record_acks`]); their status messages follow, then the JetStream messages
//! are acked. An ack that does not decode, or names an unknown tenant, is quarantined.
//!
//! Acks do not go through the device actor: every transition is a conditional update in
//! Postgres, so an ack racing a redelivery or an expiry is settled there, and the actor reloads
//! its inbox on every tick. A delivery's status is published before the command itself, so a
//! command's `acked` status can never overtake its `delivered`.

use std::sync::Arc;

use async_nats::jetstream::{AckKind, Message};
use tillsync_schemas::{codec, streams as names, CommandAck, CommandState, Reason, WireError};

use super::ack_store::{self, AckRecorded};
use super::{publish, CommandError};
use crate::{metrics, Ctx};

/// Most acks one lane records in one statement.
const BATCH: usize = 256;

pub async fn run(ctx: Arc<Ctx>) {
    let ctx = &ctx;
    crate::consumer::each_batch(
        ctx,
        names::COMMAND_ACKS,
        names::BROKER_ACKS_CONSUMER,
        ctx.config.message_lanes,
        BATCH,
        move |batch| handle_batch(ctx, batch),
    )
    .await;
}

async fn handle_batch(ctx: &Ctx, batch: Vec<Message>) {
    let mut acks = Vec::with_capacity(batch.len());
    let mut good = Vec::with_capacity(batch.len());
    for msg in batch {
        match check(ctx, &msg).await {
            Ok(Ok(ack)) => {
                acks.push(ack);
                good.push(msg);
            }
            Ok(Err(e)) => match quarantine(ctx, &msg, &e).await {
                Ok(()) => warn_unacked(msg.ack_with(AckKind::Term).await),
                Err(error) => redeliver(&msg, &error).await,
            },
            Err(error) => redeliver(&msg, &error).await,
        }
    }
    if acks.is_empty() {
        return;
    }
    match ack_store::record_acks(&ctx.keyed, &acks).await {
        Ok(recorded) => {
            let rows = settle(&acks, recorded);
            if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &rows).await {
                tracing::warn!(%error, "Command status not published; the sweeper retries it.");
            }
            for msg in &good {
                warn_unacked(msg.ack().await);
            }
        }
        Err(error) => {
            let error = CommandError::from(error);
            for msg in &good {
                redeliver(msg, &error).await;
            }
        }
    }
}

/// Counts what the recorded acks did; returns the transitions' log rows to publish.
fn settle(acks: &[CommandAck], recorded: Vec<AckRecorded>) -> Vec<super::store::LogRow> {
    let mut rows = Vec::new();
    for (ack, rec) in acks.iter().zip(recorded) {
        match &rec.transition {
            Some(row) if row.corrects.is_some() => {
                metrics::command_applied_after_final();
                tracing::warn!(command_id = %ack.command_id, device_id = %ack.device_id, corrects = ?row.corrects, "Command applied after the portal was told it ended; a correcting status follows.");
            }
            Some(row) if row.state == CommandState::Acked => {
                metrics::command_acked(rec.round_trip_ms.unwrap_or(0).max(0) as f64 / 1000.0)
            }
            Some(_) => metrics::command_failed(ack.code.clone()),
            None => {
                metrics::command_ack_unmatched();
                tracing::info!(command_id = %ack.command_id, device_id = %ack.device_id, effect = rec.effect.as_str(), "Ack recorded without effect.");
            }
        }
        tracing::debug!(command_id = %ack.command_id, effect = rec.effect.as_str(), "Command ack recorded.");
        rows.extend(rec.transition);
    }
    rows
}

/// The ack, or why it is refused (`Ok(Err)`: quarantine it).
async fn check(ctx: &Ctx, msg: &Message) -> Result<Result<CommandAck, WireError>, CommandError> {
    let ack = match codec::decode_command_ack(&msg.subject, &msg.payload) {
        Ok(a) => a,
        Err(e) => return Ok(Err(e)),
    };
    if !ctx.tenants.exists(&ctx.pool, &ack.tenant_id).await? {
        return Ok(Err(WireError::new(
            Reason::UnknownTenant,
            format!("tenant {:?} is not provisioned", ack.tenant_id),
        )));
    }
    Ok(Ok(ack))
}

async fn quarantine(ctx: &Ctx, msg: &Message, e: &WireError) -> Result<(), CommandError> {
    Ok(crate::consumer::quarantine(ctx, names::COMMAND_ACKS, msg, e).await?)
}

async fn redeliver(msg: &Message, error: &CommandError) {
    crate::consumer::redeliver(msg, names::BROKER_ACKS_CONSUMER, error).await
}

fn warn_unacked(result: Result<(), async_nats::Error>) {
    if let Err(error) = result {
        // Recorded already: a redelivered ack is recorded again as a duplicate, harmlessly.
        tracing::warn!(%error, "Ack of a command ack failed.");
    }
}
