//! A partition's work while this instance owns it: its four consumers on the spine, each
//! handing its batches to the part of the broker that commits them under the partition's fence.
//! [`partitions`](crate::partitions) decides which partitions this instance owns and starts
//! this for each ([`start`]); the wiring lives here, above the consumers it names, so the
//! partitions the consumers import do not import them back.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use futures::future::BoxFuture;

use crate::partitions::Fence;
use crate::spine;
use crate::{commands, heartbeats, ingest, Ctx};

/// [`run`] as the [`crate::partitions::Work`] the partition loop spawns.
pub fn start(ctx: Arc<Ctx>, fence: Fence, taken_over: bool, stop: CancellationToken) -> BoxFuture<'static, ()> {
    Box::pin(run(ctx, fence, taken_over, stop))
}

/// Runs until `stop` fires (handover, loss, shutdown); each consumer finishes the batch it
/// holds first.
/// `taken_over`: the previous owner did not hand the partition over (killed, paused, cut off),
/// so its consumers are recreated at their ack floor whatever they show
/// ([`crate::streams::restart_at_ack_floor`]).
pub async fn run(ctx: Arc<Ctx>, fence: Fence, taken_over: bool, stop: CancellationToken) {
    let c = &ctx;
    for (stream, base, family) in crate::streams::PARTITIONED {
        let p = fence.partition;
        let r = crate::streams::restart_at_ack_floor(&c.js, &c.config, stream, base, family, p, taken_over).await;
        if let Err(error) = r {
            // Not fatal: the unacked messages come again after the ack wait.
            tracing::warn!(%error, partition = fence.partition, "Consumer not restarted at its ack floor.");
        }
    }
    let events =
        spine::run(c, &stop, ingest::source(&c.config), fence, &c.slots.events, |b| ingest::handle_batch(c, fence, b));
    let beats =
        spine::run(c, &stop, heartbeats::SOURCE, fence, &c.slots.messages, |b| heartbeats::handle_batch(c, fence, b));
    let intake = spine::run(c, &stop, commands::intake::SOURCE, fence, &c.slots.messages, |b| {
        commands::intake::handle_batch(c, fence, b)
    });
    let acks = spine::run(c, &stop, commands::acks::SOURCE, fence, &c.slots.messages, |b| {
        commands::acks::handle_batch(c, fence, b)
    });
    futures::join!(events, beats, intake, acks);
}
