//! What the broker publishes for commands: deliveries to devices and status to the portal,
//! both through JetStream (awaiting the stream's ack) with a `Nats-Msg-Id` so a publish repeated
//! after a crash is dropped by the stream's duplicate window.

use std::sync::{Arc, Mutex};

use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use sqlx::PgPool;
use tillsync_schemas::{
    codec, signature, streams, subject, CommandEnvelope, CommandStatus, DeviceAddr, SCHEMA_VERSION,
};
use tokio_util::task::TaskTracker;

use super::sql::{self, LogRow};
use super::CommandError;
use crate::error::Chain;
use crate::signing::Signer;

/// `Nats-Msg-Id` of one delivery of a command to one device.
pub fn delivery_msg_id(command_id: &str, device_id: &str, attempt: u32) -> String {
    format!("{command_id}:{device_id}:{attempt}")
}

/// A message to publish: subject, headers, payload.
pub type Outgoing = (String, HeaderMap, Vec<u8>);

/// Publishes messages in order, pipelined: all are sent, then their acks awaited. Returns the
/// stream sequences of those, from the first, the stream confirmed before the first failure,
/// and that failure.
async fn pipelined(js: &Context, msgs: Vec<Outgoing>) -> (Vec<u64>, Result<(), CommandError>) {
    let failed = |e: &dyn std::fmt::Display| Err(CommandError::Publish(e.to_string()));
    let mut pending = Vec::with_capacity(msgs.len());
    let mut result = Ok(());
    for (subject, headers, payload) in msgs {
        match js.publish_with_headers(subject, headers, payload.into()).await {
            Ok(ack) => pending.push(ack),
            Err(e) => {
                result = failed(&e);
                break;
            }
        }
    }
    let mut confirmed = Vec::with_capacity(pending.len());
    for ack in pending {
        match ack.await {
            // A duplicate's PubAck carries the sequence of the copy stored first.
            Ok(ack) => confirmed.push(ack.sequence),
            Err(e) => return (confirmed, failed(&e)),
        }
    }
    (confirmed, result)
}

fn headers(msg_id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(streams::HEADER_MSG_ID, msg_id);
    h.insert(streams::HEADER_CONTENT_TYPE, streams::CONTENT_TYPE);
    h.insert(streams::HEADER_SCHEMA_VERSION, SCHEMA_VERSION.to_string().as_str());
    h
}

/// Publishes delivery `attempt` of a stored envelope to one device, with its device id filled
/// in; returns its stream sequence.
pub async fn command(
    js: &Context,
    signer: &Signer,
    addr: &DeviceAddr,
    envelope: &[u8],
    attempt: u32,
) -> Result<u64, CommandError> {
    let (seqs, result) = pipelined(js, vec![signed_delivery(signer, addr, envelope, attempt)?]).await;
    result?;
    seqs.first().copied().ok_or_else(|| CommandError::Publish("no PubAck".into()))
}

/// Delivery `attempt` of a stored envelope to one device, signed for its commands subject:
/// published there, or handed again on its copies subject ([`super::sync`]).
pub fn signed_delivery(
    signer: &Signer,
    addr: &DeviceAddr,
    envelope: &[u8],
    attempt: u32,
) -> Result<Outgoing, CommandError> {
    let cmd: CommandEnvelope = codec::decode(envelope).map_err(CommandError::Stored)?;
    Ok(delivery(signer, addr, &cmd, attempt))
}

/// Publishes first deliveries (attempt 1), pipelined. Returns the stream sequences of those
/// confirmed (a prefix) and the first failure; the sweeper publishes the rest again.
pub async fn first_deliveries(
    js: &Context,
    signer: &Signer,
    items: &[(DeviceAddr, &CommandEnvelope)],
) -> (Vec<u64>, Result<(), CommandError>) {
    pipelined(js, items.iter().map(|(addr, cmd)| delivery(signer, addr, cmd, 1)).collect()).await
}

/// Subject, headers and payload of delivery `attempt` of `cmd` to one device, signed for that
/// device's subject (the bridge refuses it otherwise).
fn delivery(signer: &Signer, addr: &DeviceAddr, cmd: &CommandEnvelope, attempt: u32) -> Outgoing {
    let mut cmd = cmd.clone();
    cmd.device_id = Some(addr.device_id.clone());
    let subject = subject::commands(addr);
    let payload = codec::encode(&cmd);
    let mut h = headers(&delivery_msg_id(&cmd.command_id, &addr.device_id, attempt));
    h.insert(streams::HEADER_ATTEMPT, attempt.to_string().as_str());
    h.insert(signature::HEADER_KEY, signer.public_key().as_str());
    h.insert(signature::HEADER_SIGNATURE, signer.sign(&subject, &payload).as_str());
    (subject, h, payload)
}

pub fn status_of(row: &LogRow) -> CommandStatus {
    CommandStatus {
        command_id: row.command_id.clone(),
        tenant_id: row.tenant_id.clone(),
        store_id: row.store_id.clone(),
        device_id: row.device_id.clone(),
        state: row.state,
        attempt: row.attempt,
        code: row.code.clone(),
        detail: row.detail.clone(),
        at_ms: row.at_ms,
        corrects: row.corrects,
    }
}

/// Marks status rows published, in batches, off the transitions' path: the ids that arrive
/// while one `UPDATE` runs go together in the next. A burst of marks is short-lived work of the
/// task registry ([`crate::tasks::Tasks::spawned`]), so the shutdown joins it after the tasks
/// (and the actor wakes) whose statuses it marks. A mark lost (a failed update, a stop before
/// it ran) only makes the sweeper send that status again, which the stream's duplicate window
/// drops.
#[derive(Clone)]
pub struct Marks(Arc<Marking>);

struct Marking {
    pool: PgPool,
    spawned: TaskTracker,
    waiting: Mutex<Waiting>,
}

/// Ids to mark, and whether a burst is marking them (it takes them all before it ends).
#[derive(Default)]
struct Waiting {
    ids: Vec<i64>,
    marking: bool,
}

impl Marks {
    /// Marks on `pool`, each burst spawned on `spawned`.
    pub fn new(pool: PgPool, spawned: TaskTracker) -> Marks {
        Marks(Arc::new(Marking { pool, spawned, waiting: Mutex::default() }))
    }

    fn add(&self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        let mut waiting = self.0.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.ids.extend_from_slice(ids);
        if !std::mem::replace(&mut waiting.marking, true) {
            let marking = self.0.clone();
            self.0.spawned.spawn(async move { marking.burst().await });
        }
    }
}

impl Marking {
    /// Marks what waits, at most 1,000 ids an `UPDATE`, until nothing does.
    async fn burst(&self) {
        loop {
            let ids: Vec<i64> = {
                let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                if waiting.ids.is_empty() {
                    waiting.marking = false;
                    return;
                }
                let n = waiting.ids.len().min(1_000);
                waiting.ids.drain(..n).collect()
            };
            if let Err(error) = sql::mark_published(&self.pool, &ids).await {
                tracing::warn!(error = %Chain(&error), count = ids.len(), "Statuses not marked published; the sweeper resends them.");
            }
        }
    }
}

/// Publishes one status message per committed transition, in order, then has them marked
/// published. The publishes are pipelined (sent in order, acks awaited afterwards); a failure
/// leaves that row and the ones after it for the sweeper's outbox pass.
pub async fn statuses(js: &Context, marks: &Marks, rows: &[LogRow]) -> Result<(), CommandError> {
    let msgs = rows
        .iter()
        .map(|row| {
            let subject = subject::status(&row.tenant_id, &row.store_id, &row.command_id);
            let msg_id = format!("{}:log:{}", row.command_id, row.id);
            (subject, headers(&msg_id), codec::encode(&status_of(row)))
        })
        .collect();
    let (confirmed, result) = pipelined(js, msgs).await;
    marks.add(&rows[..confirmed.len()].iter().map(|r| r.id).collect::<Vec<_>>());
    result
}
