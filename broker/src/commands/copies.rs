//! A command's copies in TILLSYNC_COMMANDS. The broker publishes a command to its device's
//! subject once; the stream keeps the copy until the device acks it, however long the device
//! is away: a connected bridge takes it live, one that reconnects asks for its unfinished
//! commands ([`super::sync`]), and a bridge of the previous version reads its durable consumer.
//! The broker asks, now and then, whether the copy is still there ([`check`]; a copy its device
//! holds no consumer for is handed again on the copies subject), and deletes the copies of a
//! command that ended ([`purge`]), so nothing waits in the device's stream afterwards.

use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{DeleteMessageErrorKind, RawMessageErrorKind, Stream};
use async_nats::jetstream::Context;
use futures::StreamExt;
use sqlx::PgPool;
use tillsync_actors::policy::CopyState;
use tillsync_schemas::{streams, subject, DeviceAddr};

use super::sql::{self, Copies};
use super::CommandError;
use crate::error::Chain;
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
/// yet its ack never reached the broker), or waiting for the device. A device without a
/// consumer (a bridge reading live, docs/architecture.md "The downlink without consumers") is
/// handed the waiting copy again on its copies subject: its live copy may have been lost with
/// its connection, and no consumer will redeliver it. The check's interval grows with the
/// copy's age, so an offline device costs one core publish per check.
pub async fn check(js: &Context, addr: &DeviceAddr, stream_seq: Option<u64>) -> Result<CopyState, CommandError> {
    let Some(seq) = stream_seq else { return Ok(CopyState::Unconfirmed) };
    let stream = stream(js).await?;
    let copy = match stream.get_raw_message(seq).await {
        Ok(copy) => copy,
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(CopyState::Missing),
        Err(e) => return Err(nats(e)),
    };
    match stream.consumer_info(streams::device_commands_consumer(addr)).await {
        Ok(info) if info.ack_floor.stream_sequence >= seq => Ok(CopyState::Consumed),
        Ok(_) => Ok(CopyState::Waiting),
        Err(e) if e.kind() != ConsumerInfoErrorKind::NotFound => Err(nats(e)),
        Err(_) => {
            js.client()
                .publish_with_headers(subject::command_copies(addr), copy.headers, copy.payload)
                .await
                .map_err(nats)?;
            metrics::command_copies_handed("check", 1);
            Ok(CopyState::Waiting)
        }
    }
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
                        tracing::warn!(error = %Chain(&error), seq, "Command copy not deleted; the sweeper retries.");
                        None
                    }
                }
            }
        })
        .buffer_unordered(PURGE_CONCURRENCY)
        .filter_map(|s| async move { s })
        .collect()
        .await;
    sql::clear_copies(pool, entries, &deleted).await?;
    metrics::command_copies_deleted(deleted.len() as u64);
    Ok(deleted.len())
}
