//! Command acks from devices, a batch of a partition's acks at a time: each decodable ack is recorded
//! (matched or not) with its transition, all in one statement where they can be
//! ([`ack_sql::record_acks`]); their status messages follow, then the JetStream messages
//! are acked. An ack that does not decode, or names an unknown tenant, is quarantined.
//!
//! Acks do not go through the device actor: every transition is a conditional update in
//! Postgres, so an ack racing a redelivery or an expiry is settled there, and the actor reloads
//! its inbox on every tick. A delivery's status is published before the command itself, so a
//! command's `acked` status can never overtake its `delivered`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Message;
use tillsync_schemas::{codec, streams as names, CommandAck, CommandState, WireError};

use super::ack_sql::{self, AckRecorded};
use super::publish;
use crate::error::Chain;
use crate::partitions::Fence;
use crate::spine::{self, Admitted, Committed, Consumer, Failure, Source, Verdict};
use crate::{metrics, Ctx};

/// Most acks one partition records in one statement.
const BATCH: usize = 256;

/// The command-ack consumers of the spine.
pub const SOURCE: Source =
    Source { stream: names::COMMAND_ACKS, base: names::BROKER_ACKS_CONSUMER, max_batch: BATCH, linger: Duration::ZERO };

/// Records a partition's batch of command acks.
pub async fn handle_batch(ctx: &Arc<Ctx>, fence: Fence, batch: Vec<Message>) {
    spine::take(ctx, fence, &Acks, batch).await
}

/// The command-ack consumer: a batch's acks are recorded in one statement.
pub struct Acks;

impl Consumer for Acks {
    type Item = CommandAck;
    type After = ();
    const STREAM: &'static str = names::COMMAND_ACKS;
    const NAME: &'static str = "command ack";

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<CommandAck, WireError> {
        codec::decode_command_ack(subject, payload)
    }

    fn tenant<'a>(&self, ack: &'a CommandAck) -> &'a str {
        &ack.tenant_id
    }

    async fn received(&self, ctx: &Ctx, batch: &[Message]) {
        crate::flood::watch(ctx, batch).await;
    }

    async fn commit(
        &self,
        ctx: &Arc<Ctx>,
        fence: Fence,
        batch: &[Admitted<CommandAck>],
    ) -> Result<Committed<()>, Failure> {
        let acks: Vec<CommandAck> = batch.iter().map(|a| a.item.clone()).collect();
        let recorded = ack_sql::record_acks(&ctx.keyed, fence, &acks).await?;
        let rows = tally(&acks, recorded);
        if let Err(error) = publish::statuses(&ctx.js, &ctx.marks, &rows).await {
            tracing::warn!(error = %Chain(&error), "Command status not published; the sweeper retries it.");
        }
        Ok(Committed { verdicts: batch.iter().map(|_| Verdict::Done).collect(), after: () })
    }
}

/// Counts what the recorded acks did; returns the transitions' log rows to publish.
fn tally(acks: &[CommandAck], recorded: Vec<AckRecorded>) -> Vec<super::sql::LogRow> {
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
