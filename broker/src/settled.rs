//! Settled messages, settled again after a reconnect. An ack can be lost without the broker
//! knowing: written to a connection that then broke, or taken by a nats-server that was killed
//! before it stored it. JetStream then redelivers the message only after the ack wait (30 s by
//! default), and consumers sit on it meanwhile. So the last acks and terms are kept, and sent
//! again as soon as the connection is back: acking a message twice is harmless, and each one
//! recorded here had its effect committed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use async_nats::{Client, Subject};

use crate::metrics;

/// How far back the kept settlements reach, and at most how many are kept.
const WINDOW: Duration = Duration::from_secs(10);
const MOST: usize = 50_000;

struct Settled {
    at: Instant,
    client: Client,
    reply: Subject,
    kind: AckKind,
}

static RECENT: Mutex<VecDeque<Settled>> = Mutex::new(VecDeque::new());

/// Keeps an ack or term of a message whose effect is committed, to send again after a
/// reconnect; anything else (a nak) is not kept.
pub fn keep(msg: &async_nats::jetstream::Message, kind: AckKind) {
    if !matches!(kind, AckKind::Ack | AckKind::Term) {
        return;
    }
    let Some(reply) = msg.reply.clone() else { return };
    let now = Instant::now();
    let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    while recent.front().is_some_and(|s| now - s.at > WINDOW) || recent.len() >= MOST {
        recent.pop_front();
    }
    recent.push_back(Settled { at: now, client: msg.context.client(), reply, kind });
}

/// Sends every kept settlement again (on reconnect) and forgets them.
pub async fn send_again() {
    let kept: Vec<Settled> = RECENT.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
    if kept.is_empty() {
        return;
    }
    let n = kept.len();
    for s in kept {
        let body: bytes::Bytes = s.kind.into();
        if let Err(error) = s.client.publish(s.reply, body).await {
            tracing::debug!(%error, "Settlement not sent again; JetStream redelivers after the ack wait.");
        }
    }
    metrics::settlements_resent(n as u64);
    tracing::info!(settlements = n, "Sent the last acks again after reconnecting to NATS.");
}
