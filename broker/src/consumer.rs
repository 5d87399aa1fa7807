//! What the broker's message-at-a-time consumers (intake, command acks, heartbeats) share:
//! the subscribe-handle-resubscribe loop, and quarantining a message that cannot be used.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use futures::{Stream, StreamExt};
use tillsync_schemas::{subject, WireError};
use tokio::sync::mpsc;

use crate::ingest::writer::{self, BadRow};
use crate::{metrics, Ctx};

/// Hands every message of the durable `consumer` on `stream` to `handle`, until shutdown;
/// re-subscribes a second after the subscription fails (NATS restart, stream gone). Messages
/// are split by store over `lanes` concurrent lanes; within a lane (so within a store) they
/// are handled one at a time, in stream order.
pub async fn each_message<F, Fut>(ctx: &Ctx, stream: &str, consumer: &str, lanes: usize, handle: F)
where
    F: Fn(Message) -> Fut,
    Fut: Future<Output = ()>,
{
    let handle = &handle;
    each_batch(ctx, stream, consumer, lanes, 1, |batch: Vec<Message>| async move {
        for m in batch {
            handle(m).await;
        }
    })
    .await
}

/// Like [`each_message`], but a lane hands `handle` everything it holds at once (up to `max`,
/// in stream order, without waiting for more): idle, a batch is one message and costs no
/// latency; under load, one statement and one commit serve many messages.
pub async fn each_batch<F, Fut>(ctx: &Ctx, stream: &str, consumer: &str, lanes: usize, max: usize, handle: F)
where
    F: Fn(Vec<Message>) -> Fut,
    Fut: Future<Output = ()>,
{
    while !ctx.cancel.is_cancelled() {
        if let Err(error) = subscribe(ctx, stream, consumer, lanes.max(1), max.max(1), &handle).await {
            tracing::warn!(%error, consumer, "Consumer stopped; restarting in 1 s.");
            tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

async fn subscribe<F, Fut>(
    ctx: &Ctx,
    stream: &str,
    consumer: &str,
    lanes: usize,
    max: usize,
    handle: &F,
) -> Result<(), String>
where
    F: Fn(Vec<Message>) -> Fut,
    Fut: Future<Output = ()>,
{
    let c = crate::streams::consumer(&ctx.js, stream, consumer).await.map_err(|e| e.to_string())?;
    let mut messages = c.messages().await.map_err(|e| e.to_string())?;
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..lanes).map(|_| mpsc::channel::<Message>(64)).unzip();
    let workers = receivers.into_iter().map(|mut rx| async move {
        while let Some(first) = rx.recv().await {
            handle(gather(&mut rx, first, max, Duration::ZERO).await).await;
        }
    });
    let dispatch = async move {
        let result = dispatch(ctx, &mut messages, &senders, consumer).await;
        // Closing the channels lets each lane finish what it holds, then end.
        drop(senders);
        result
    };
    let (result, _) = futures::join!(dispatch, futures::future::join_all(workers));
    result
}

/// A batch starting with `first`: what else is waiting in `rx` or arrives within `linger`,
/// up to `max` messages.
pub async fn gather(rx: &mut mpsc::Receiver<Message>, first: Message, max: usize, linger: Duration) -> Vec<Message> {
    let mut batch = Vec::with_capacity(max.min(64));
    batch.push(first);
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < max {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) if linger.is_zero() => break,
            Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => batch.push(m),
                Ok(None) | Err(_) => break,
            },
        }
    }
    batch
}

/// Sends each message to the lane of its store ([`crate::lanes`]) until shutdown (`Ok`), the
/// subscription ends or a lane is gone (`Err`). A full lane holds the others back: the
/// broker takes no more than its lanes can buffer.
pub async fn dispatch<S, E>(
    ctx: &Ctx,
    messages: &mut S,
    lanes: &[mpsc::Sender<Message>],
    consumer: &str,
) -> Result<(), String>
where
    S: Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            m = messages.next() => match m {
                Some(Ok(m)) => {
                    let lane = crate::lanes::lane_of(&m.subject, lanes.len());
                    if lanes[lane].send(m).await.is_err() {
                        return Err(format!("{consumer}: a lane stopped"));
                    }
                }
                Some(Err(error)) => tracing::debug!(%error, consumer, "Stream hiccup."),
                None => return Err(format!("{consumer}: message stream ended")),
            }
        }
    }
}

/// Has JetStream redeliver, in 2 s, a message whose effect could not be committed.
pub async fn redeliver(msg: &Message, consumer: &str, error: &(dyn std::fmt::Display + Sync)) {
    tracing::warn!(%error, consumer, "Message not recorded; redelivering in 2 s.");
    if let Err(error) = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))).await {
        tracing::warn!(%error, consumer, "Nak failed; JetStream redelivers after the ack wait.");
    }
}

/// The quarantine row of a refused message, with whatever address its subject gives.
pub fn bad_row(stream: &str, subject: &str, stream_seq: u64, payload: &[u8], e: &WireError) -> BadRow {
    let parsed = subject::parse(subject).ok();
    BadRow {
        stream: stream.into(),
        stream_seq,
        subject: subject.into(),
        reason: e.reason.as_str(),
        detail: e.detail.clone(),
        payload: payload.to_vec(),
        tenant_id: parsed.as_ref().map(|p| p.tenant_id.clone()),
        store_id: parsed.as_ref().map(|p| p.store_id.clone()),
        device_id: parsed.map(|p| p.last),
    }
}

/// Records a refused message in `quarantine` and counts it by reason. The caller terminates
/// the JetStream message once this returns `Ok`.
pub async fn quarantine(ctx: &Ctx, stream: &str, msg: &Message, e: &WireError) -> Result<(), sqlx::Error> {
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    writer::commit(&ctx.pool, &[bad_row(stream, &msg.subject, seq, &msg.payload, e)], &[], &[]).await?;
    metrics::event_quarantined(e.reason.as_str());
    tracing::warn!(reason = %e.reason, detail = %e.detail, subject = %msg.subject, "Message quarantined.");
    Ok(())
}
