//! The consumer spine: how every broker consumer (events, heartbeats, command intake with its
//! cancels and approval decisions, command acks) takes its messages. One shape for all of them:
//!
//! - one durable consumer per partition and stream (`broker-events-p3`), pulled only by the
//!   instance that owns the partition, for as long as it owns it ([`run`]);
//! - messages handed over in stream order, a batch at a time (what is waiting, up to a size,
//!   lingering a little where that pays), so one store's messages never overtake each other;
//! - every batch taken through one template ([`take`]): every message [`admit`]ted the same way
//!   (its partition, then decode, then the tenant), the refused ones quarantined, the rest
//!   decided and committed by the [`Consumer`], and every message settled with one [`Settle`],
//!   only after its effect is committed.

mod admit;
mod take;

pub use admit::{admit, unknown_tenant, Gate, Refused};
pub use take::{take, Admitted, Committed, Consumer, Failure, Verdict};

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::MessagesError;
use async_nats::jetstream::consumer::StreamError;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use tokio::sync::{AcquireError, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::{BrokerError, Chain};
use crate::partitions::Fence;
use crate::Ctx;

/// How a message is settled with JetStream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Its effect is committed.
    Ack,
    /// Refused for good (quarantined, or recorded as rejected): never redeliver.
    Term,
    /// Not committed: redeliver after this delay.
    Nak(Duration),
}

impl Settle {
    /// What a commit that failed and may succeed later settles to.
    pub const RETRY: Settle = Settle::Nak(Duration::from_secs(2));
}

/// Settles `msg`. A failed ack is logged, not retried: JetStream redelivers the message and
/// the ledger (or the command log) answers "already done".
pub async fn settle(msg: &Message, how: Settle) {
    let kind = match how {
        Settle::Ack => AckKind::Ack,
        Settle::Term => AckKind::Term,
        Settle::Nak(d) => AckKind::Nak(Some(d)),
    };
    if let Err(error) = msg.ack_with(kind).await {
        tracing::debug!(%error, subject = %msg.subject, ?how, "Settling failed; JetStream redelivers.");
    }
    crate::settled::keep(msg, kind);
}

/// One stream's consumers, as the spine runs them.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub stream: &'static str,
    /// Consumer base name; partition `p` is consumed by `<base>-p<p>`.
    pub base: &'static str,
    /// Most messages handed over at once.
    pub max_batch: usize,
    /// How long a batch waits for more messages once it has one.
    pub linger: Duration,
}

/// Hands `fence.partition`'s messages of `source` to `handle`, a batch at a time in stream
/// order, until `stop` fires; a batch in hand is finished first. Re-subscribes a second after
/// the subscription fails (a NATS node restarting, a stream leader moving). `slots` bounds how
/// many batches of this kind the instance commits at once, across its partitions.
pub async fn run<F, Fut>(
    ctx: &Ctx,
    stop: &CancellationToken,
    source: Source,
    fence: Fence,
    slots: &Semaphore,
    handle: F,
) where
    F: Fn(Vec<Message>) -> Fut,
    Fut: Future<Output = ()>,
{
    let name = tillsync_schemas::streams::partition_consumer(source.base, fence.partition);
    while !stop.is_cancelled() {
        if let Err(error) = pull(ctx, stop, source, &name, slots, &handle).await {
            tracing::warn!(error = %Chain(&error), consumer = %name, "Consumer stopped; restarting in 1 s.");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Why a partition's pull stopped; [`run`] pulls again a second later. The log line names the
/// consumer.
#[derive(Debug, thiserror::Error)]
enum PullError {
    /// The durable consumer or its stream is not there (yet), or JetStream did not answer.
    #[error(transparent)]
    Consumer(BrokerError),
    #[error("starting the pull")]
    Pull(#[source] StreamError),
    /// Nobody answers the pull request ([`stalled`]).
    #[error("pull stalled")]
    Stalled(#[source] MessagesError),
    #[error("message stream ended")]
    Ended,
    /// The instance's commit slots are closed: it is stopping.
    #[error("commit slots")]
    Slots(#[source] AcquireError),
}

async fn pull<F, Fut>(
    ctx: &Ctx,
    stop: &CancellationToken,
    source: Source,
    name: &str,
    slots: &Semaphore,
    handle: &F,
) -> Result<(), PullError>
where
    F: Fn(Vec<Message>) -> Fut,
    Fut: Future<Output = ()>,
{
    let consumer = crate::streams::consumer(&ctx.js, source.stream, name).await.map_err(PullError::Consumer)?;
    let mut messages = consumer
        .stream()
        .group(crate::streams::OWNER_GROUP)
        .max_messages_per_batch(source.max_batch.max(1) * 2)
        // A missed heartbeat (two) ends an unanswered pull within 4 s (see [`stalled`]).
        .heartbeat(Duration::from_secs(2))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(PullError::Pull)?;
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = messages.next() => match m {
                Some(Ok(m)) => m,
                // async-nats pulls again only when its batch runs low or the pull request
                // expires (30 s, plus 5 s of grace): a pull request nobody answers (sent while a
                // just-recreated consumer had no leader yet: "no responders", or silence) would
                // stall the partition for 35 s. Start a new pull instead.
                Some(Err(error)) if stalled(&error) => return Err(PullError::Stalled(error)),
                Some(Err(error)) => {
                    tracing::debug!(%error, consumer = name, "Stream hiccup.");
                    continue;
                }
                None => return Err(PullError::Ended),
            },
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + source.linger;
        while batch.len() < source.max_batch {
            let next = if source.linger.is_zero() {
                futures::FutureExt::now_or_never(messages.next()).flatten()
            } else {
                tokio::time::timeout_at(deadline, messages.next()).await.ok().flatten()
            };
            match next {
                Some(Ok(m)) => batch.push(m),
                Some(Err(_)) | None => break,
            }
        }
        let _slot = slots.acquire().await.map_err(PullError::Slots)?;
        handle(batch).await;
    }
}

/// Errors after which the pull request is answered by no one: pull again.
fn stalled(error: &async_nats::jetstream::consumer::pull::MessagesError) -> bool {
    use async_nats::jetstream::consumer::pull::MessagesErrorKind as Kind;
    matches!(error.kind(), Kind::MissingHeartbeat | Kind::NoResponders | Kind::ConsumerDeleted)
}
