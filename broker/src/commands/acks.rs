//! Command acks from devices, a batch of a partition's acks at a time: each decodable ack is recorded
//! (matched or not) with its transition, all in one statement where they can be
//! ([`ack_store::record_acks`]); their status messages follow, then the JetStream messages
//! are acked. An ack that does not decode, or names an unknown tenant, is quarantined.
//!
//! Acks do not go through the device actor: every transition is a conditional update in
//! Postgres, so an ack racing a redelivery or an expiry is settled there, and the actor reloads
//! its inbox on every tick. A delivery's status is published before the command itself, so a
//! command's `acked` status can never overtake its `delivered`.

use std::time::Duration;

use async_nats::jetstream::Message;
use tillsync_schemas::{codec, streams as names, CommandAck, CommandState};

use super::ack_store::{self, AckRecorded};
use super::{publish, CommandError};
use crate::partitions::Fence;
use crate::spine::{self, Refused, Settle, Source};
use crate::{metrics, quarantine, Ctx};

/// Most acks one partition records in one statement.
const BATCH: usize = 256;

/// The command-ack consumers of the spine.
pub const SOURCE: Source =
    Source { stream: names::COMMAND_ACKS, base: names::BROKER_ACKS_CONSUMER, max_batch: BATCH, linger: Duration::ZERO };

pub async fn handle_batch(ctx: &Ctx, fence: Fence, batch: Vec<Message>) {
    crate::flood::watch(ctx, &batch).await;
    let mut acks = Vec::with_capacity(batch.len());
    let mut good = Vec::with_capacity(batch.len());
    for msg in batch {
        let admitted =
            spine::admit(&ctx.gate(), &msg.subject, &msg.payload, codec::decode_command_ack, |a| a.tenant_id.as_str())
                .await;
        match admitted {
            Ok(ack) => {
                acks.push(ack);
                good.push(msg);
            }
            Err(Refused::Bad(e)) => {
                let how = match quarantine::record(&ctx.pool, fence, names::COMMAND_ACKS, &msg, &e).await {
                    Ok(()) => Settle::Term,
                    Err(error) => super::not_committed(ctx, fence, "command ack", &error.into()),
                };
                spine::settle(&msg, how).await;
            }
            Err(Refused::Db(error)) => {
                spine::settle(&msg, super::not_committed(ctx, fence, "command ack", &error.into())).await
            }
        }
    }
    if acks.is_empty() {
        return;
    }
    let how = match ack_store::record_acks(&ctx.keyed, fence, &acks).await {
        Ok(recorded) => {
            let rows = settle(&acks, recorded);
            if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &rows).await {
                tracing::warn!(%error, "Command status not published; the sweeper retries it.");
            }
            Settle::Ack
        }
        Err(error) => super::not_committed(ctx, fence, "command ack", &CommandError::from(error)),
    };
    for msg in &good {
        spine::settle(msg, how).await;
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
