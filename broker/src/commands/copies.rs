//! A command's copies in TILLSYNC_COMMANDS. The broker publishes a command to its device's
//! stream once and lets JetStream deliver it: the device's durable consumer redelivers it
//! until the device acks it, however long the device is away. The broker only asks, now and
//! then, whether the copy is still there ([`check`]), and deletes the copies of a command that
//! ended ([`purge`]), so nothing waits in the device's stream to be pulled afterwards.

use async_nats::jetstream::stream::{DeleteMessageErrorKind, RawMessageErrorKind, Stream};
use async_nats::jetstream::Context;
use futures::StreamExt;
use sqlx::PgPool;
use tillsync_actors::policy::CopyState;
use tillsync_schemas::{streams, DeviceAddr};

use super::store::{self, Copies};
use super::CommandError;
use crate::metrics;

/// Copies deleted at once.
const PURGE_CONCURRENCY: usize = 32;

fn nats(e: impl std::fmt::Display) -> CommandError {
    CommandError::Publish(e.to_string())
}

async fn stream(js: &Context) -> Result<Stream<()>, CommandError> {
    js.get_stream_no_info(streams::COMMANDS).await.map_err(nats)
}

/// What the stream and the device's consumer say about the copy at `stream_seq`: gone (NATS
/// lost the write), consumed (the device's consumer acked it, so the device finished with it,
/// yet its ack never reached the broker), or waiting for the device.
pub async fn check(js: &Context, addr: &DeviceAddr, stream_seq: Option<u64>) -> Result<CopyState, CommandError> {
    let Some(seq) = stream_seq else { return Ok(CopyState::Unconfirmed) };
    let stream = stream(js).await?;
    match stream.get_raw_message(seq).await {
        Ok(_) => {}
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(CopyState::Missing),
        Err(e) => return Err(nats(e)),
    }
    // No consumer yet: the device has never connected, and will get the copy when it does.
    let Ok(info) = stream.consumer_info(streams::device_commands_consumer(addr)).await else {
        return Ok(CopyState::Waiting);
    };
    Ok(if info.ack_floor.stream_sequence >= seq { CopyState::Consumed } else { CopyState::Waiting })
}

/// Deletes copies from the stream (one already gone counts as deleted) and forgets those
/// deleted on their entries. What could not be deleted stays listed for the sweeper.
pub async fn purge(js: &Context, pool: &PgPool, entries: &[Copies]) -> Result<usize, CommandError> {
    let seqs: Vec<i64> = entries.iter().flat_map(|e| e.copies.iter().copied()).collect();
    if seqs.is_empty() {
        return Ok(0);
    }
    let stream = stream(js).await?;
    let deleted: Vec<i64> = futures::stream::iter(seqs)
        .map(|seq| {
            let stream = &stream;
            async move {
                match stream.delete_message(seq as u64).await {
                    Ok(_) => Some(seq),
                    // The server answered and has no such message to delete: it is gone.
                    Err(e) if matches!(e.kind(), DeleteMessageErrorKind::JetStream(_)) => Some(seq),
                    Err(error) => {
                        tracing::warn!(%error, seq, "Command copy not deleted; the sweeper retries.");
                        None
                    }
                }
            }
        })
        .buffer_unordered(PURGE_CONCURRENCY)
        .filter_map(|s| async move { s })
        .collect()
        .await;
    store::clear_copies(pool, entries, &deleted).await?;
    metrics::command_copies_deleted(deleted.len() as u64);
    Ok(deleted.len())
}
