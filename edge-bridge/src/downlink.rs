//! The one shape of the bridge's two downlinks, commands ([`crate::commands::executor`]) and
//! configuration ([`crate::store_config::sync`]), neither with a JetStream consumer of the
//! device's own (docs/architecture.md, "The downlink without consumers"). A round waits for the
//! connection, subscribes, catches up on what was published while the bridge was away, then
//! takes the live messages until it is cancelled, told to start over (a gap, a reconnect) or
//! fails; a failed round waits the backoff before the next. A flow supplies only what differs:
//! what it subscribes to, how it catches up, and what a message, a change of the connection and
//! its own timer do.

use std::future::Future;
use std::ops::ControlFlow::{self, Break, Continue};

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// How a round ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Stopped: the bridge is shutting down.
    Cancelled,
    /// Start over at once, the backoff reset: the position moved under the reader, or the
    /// connection was lost and regained in between.
    StartOver,
}

/// What an event of a round leads to: go on, end the round, or fail it with the flow's error.
pub type Next<E> = Result<ControlFlow<Ended>, E>;

/// What every flow runs by.
pub struct Link<'a> {
    pub connected: &'a mut watch::Receiver<bool>,
    pub cancel: &'a CancellationToken,
    pub backoff: &'a mut Backoff,
}

/// What differs between the downlinks. `Round` is what one round knows once caught up.
pub(crate) trait Flow: Send {
    type Live: Stream<Item = async_nats::Message> + Unpin + Send;
    type Round: Send;
    /// Why a round failed; its Display is what [`Flow::failed`] logs, causes included.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Why a round fails when the live subscription ends.
    const LIVE_ENDED: Self::Error;

    fn link(&mut self) -> Link<'_>;

    /// Subscribes live; first, so nothing published after the catch-up read can be missed.
    fn subscribe(&mut self) -> impl Future<Output = Result<Self::Live, Self::Error>> + Send;

    /// Brings the device up to date after subscribing.
    fn catch_up(&mut self) -> impl Future<Output = Result<ControlFlow<Ended, Self::Round>, Self::Error>> + Send;

    /// When the flow's own timer fires next (asking again, a recheck); None: not now.
    fn due(&self, round: &Self::Round) -> Option<Instant>;

    /// The timer fired.
    fn on_due(
        &mut self,
        round: &mut Self::Round,
        live: &mut Self::Live,
    ) -> impl Future<Output = Next<Self::Error>> + Send;

    /// A live message.
    fn on_message(
        &mut self,
        round: &mut Self::Round,
        msg: async_nats::Message,
        live: &mut Self::Live,
    ) -> impl Future<Output = Next<Self::Error>> + Send;

    /// The connection went down (`up` false) or came back while the round ran.
    fn on_connection(&mut self, round: &mut Self::Round, up: bool) -> impl Future<Output = Next<Self::Error>> + Send;

    /// The live messages stopped being taken (not called when the round is cancelled).
    fn left(&mut self) {}

    /// Says why a round failed; the next one starts after the backoff.
    fn failed(&self, error: &Self::Error);
}

/// Runs `flow` round after round until cancelled.
pub async fn run<F: Flow>(mut flow: F) {
    let cancel = flow.link().cancel.clone();
    loop {
        if !crate::nats::wait_connected(flow.link().connected, &cancel).await {
            return;
        }
        // Every await of a round (a flush, an API request) may wait on a connection that is
        // gone; a stop must not wait with it.
        let ended = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            r = round(&mut flow) => r,
        };
        match ended {
            Ok(Ended::Cancelled) => return,
            Ok(Ended::StartOver) => flow.link().backoff.reset(),
            Err(error) => {
                flow.failed(&error);
                let delay = flow.link().backoff.next_delay();
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn round<F: Flow>(flow: &mut F) -> Result<Ended, F::Error> {
    let mut live = flow.subscribe().await?;
    let mut round = match flow.catch_up().await? {
        Continue(round) => round,
        Break(ended) => return Ok(ended),
    };
    let ended = follow(flow, &mut round, &mut live).await;
    flow.left();
    ended
}

enum Event {
    Connection(bool),
    Message(async_nats::Message),
    Due,
}

async fn follow<F: Flow>(flow: &mut F, round: &mut F::Round, live: &mut F::Live) -> Result<Ended, F::Error> {
    loop {
        let due = flow.due(round);
        let connected = flow.link().connected;
        // Biased: a change of the connection first, then messages already received, then the
        // timer (a recheck reads the stream only after the deltas that came before it).
        let event = tokio::select! {
            biased;
            changed = connected.changed() => match changed {
                Ok(()) => Event::Connection(*connected.borrow()),
                Err(_) => return Ok(Ended::Cancelled),
            },
            m = live.next() => Event::Message(m.ok_or(F::LIVE_ENDED)?),
            _ = at(due) => Event::Due,
        };
        let step = match event {
            Event::Connection(up) => flow.on_connection(round, up).await?,
            Event::Message(msg) => flow.on_message(round, msg, live).await?,
            Event::Due => flow.on_due(round, live).await?,
        };
        if let Break(ended) = step {
            return Ok(ended);
        }
    }
}

async fn at(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
