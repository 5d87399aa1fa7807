//! Keeps the store's configuration in step with head office. On start and on every
//! (re)connect it reads the version of the last delta on TILLSYNC_CONFIG and decides
//! ([`start`]) between the snapshot and the deltas; deltas are read with the device's own
//! consumer from the stream seq after the last applied one, each applied only onto the version
//! before it ([`on_delta`]). A gap (the delta it needs was compacted away) means the snapshot.
//! Malformed messages are refused with a code, a metric and a row in `refused_config`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use futures::StreamExt;
use sqlx::sqlite::SqlitePool;
use tillsync_schemas::config::{self, ConfigDelta, ConfigSnapshot};
use tillsync_schemas::{streams, DeviceAddr};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config_cache::{self, Applying, Position};
use crate::metrics::Metrics;

pub use tillsync_schemas::config::HEADER_VERSION;
/// Refusal codes of a delta or snapshot the bridge cannot apply.
pub const UNDECODABLE: &str = "undecodable";
pub const WRONG_STORE: &str = "wrong_store";
pub const REFUSAL_CODES: &[&str] = &[UNDECODABLE, WRONG_STORE];

/// How to (re)start after connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Take the snapshot, then read deltas after its seq.
    Snapshot,
    /// Read deltas from this stream seq.
    Deltas { from_seq: u64 },
}

/// The pure start decision: `last_version` is the version of the last delta on the stream
/// (None: no delta yet).
pub fn start(applied: Position, last_version: Option<u64>, snapshot_after: u64) -> Start {
    match last_version {
        Some(last) if applied.version == 0 || last.saturating_sub(applied.version) > snapshot_after => Start::Snapshot,
        _ => Start::Deltas { from_seq: applied.seq + 1 },
    }
}

/// What to do with a delta of `version` when `applied` is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Already applied (a redelivery, or the snapshot covered it).
    Skip,
    Apply,
    /// The deltas in between are gone from the stream.
    Snapshot,
}

pub fn on_delta(applied: u64, version: u64) -> Step {
    match version {
        v if v <= applied => Step::Skip,
        v if v == applied + 1 => Step::Apply,
        _ => Step::Snapshot,
    }
}

/// Why a read of deltas ended.
enum Next {
    Cancelled,
    /// The position moved under the consumer (a snapshot): read again from the new one.
    Reposition,
}

pub struct Syncer {
    pub addr: DeviceAddr,
    pub js: async_nats::jetstream::Context,
    pub pool: SqlitePool,
    pub db_path: PathBuf,
    pub metrics: Arc<Metrics>,
    pub connected: watch::Receiver<bool>,
    pub cancel: CancellationToken,
    pub backoff: Backoff,
    pub snapshot_after: u64,
    /// Woken after each applied change set: the hand-off and the heartbeat.
    pub applied: Vec<Arc<Notify>>,
}

impl Syncer {
    pub async fn run(mut self) {
        if let Ok(p) = config_cache::position(&self.pool).await {
            self.metrics.config_version.set(p.version as f64);
        }
        loop {
            if !crate::nats::wait_connected(&mut self.connected, &self.cancel).await {
                return;
            }
            match self.sync().await {
                Ok(Next::Cancelled) => return,
                Ok(Next::Reposition) => self.backoff.reset(),
                Err(error) => {
                    tracing::warn!(%error, "Configuration sync stopped; retrying.");
                    let delay = self.backoff.next_delay();
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn delta_subject(&self) -> String {
        config::delta_subject(&self.addr.tenant_id, &self.addr.store_id)
    }

    async fn sync(&mut self) -> Result<Next, String> {
        let deltas = self.js.get_stream_no_info(streams::CONFIG).await.map_err(|e| format!("config stream: {e}"))?;
        let mut pos = config_cache::position(&self.pool).await.map_err(db)?;
        let last = match deltas.direct_get_last_for_subject(self.delta_subject()).await {
            Ok(m) => version_of(&m.headers, &m.payload),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => None,
            Err(e) => return Err(format!("last delta: {e}")),
        };
        if start(pos, last, self.snapshot_after) == Start::Snapshot {
            pos = self.take_snapshot(pos).await?;
        }
        self.read_deltas(&deltas, pos).await
    }

    /// Reads deltas from `pos.seq + 1` until cancelled, disconnected or repositioned.
    async fn read_deltas(&mut self, deltas: &Stream<()>, mut pos: Position) -> Result<Next, String> {
        let name = config::device_consumer(&self.addr);
        // The start position is fixed at creation: a new position means a new consumer.
        let _ = deltas.delete_consumer(&name).await;
        let consumer = deltas
            .create_consumer(pull::Config {
                name: Some(name.clone()),
                filter_subject: self.delta_subject(),
                ack_policy: AckPolicy::None,
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: pos.seq + 1 },
                inactive_threshold: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("consumer {name}: {e}"))?;
        let mut messages = consumer.messages().await.map_err(|e| format!("config deltas: {e}"))?;
        self.backoff.reset();
        loop {
            let msg = tokio::select! {
                _ = self.cancel.cancelled() => return Ok(Next::Cancelled),
                changed = self.connected.changed() => {
                    if changed.is_err() { return Ok(Next::Cancelled); }
                    if *self.connected.borrow() { continue; }
                    return Err("disconnected".into());
                }
                m = messages.next() => match m {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return Err(format!("config deltas: {e}")),
                    None => return Err("config deltas ended".into()),
                },
            };
            let seq = msg.info().map_err(|e| format!("delta metadata: {e}"))?.stream_sequence;
            let delta = match self.decode::<ConfigDelta>(&msg.subject, seq, &msg.payload).await? {
                Some(d) => d,
                None => {
                    // Unusable: only a snapshot past it lets the store move on.
                    let after = self.take_snapshot(pos).await?;
                    if after.seq < seq {
                        return Err(format!("delta at seq {seq} refused and no snapshot past it yet"));
                    }
                    return Ok(Next::Reposition);
                }
            };
            match on_delta(pos.version, delta.version) {
                Step::Skip => {}
                Step::Apply => {
                    let change = Applying::Delta { delta: &delta, seq };
                    self.apply(change, msg.payload.len()).await?;
                    pos = Position { version: delta.version, seq };
                }
                Step::Snapshot => {
                    tracing::info!(applied = pos.version, next = delta.version, "Deltas missing; taking the snapshot.");
                    let after = self.take_snapshot(pos).await?;
                    if after.version + 1 < delta.version {
                        return Err(format!("snapshot at {} does not reach delta {}", after.version, delta.version));
                    }
                    return Ok(Next::Reposition);
                }
            }
        }
    }

    /// Applies the store's snapshot when it is newer than `pos`; returns the new position.
    async fn take_snapshot(&self, pos: Position) -> Result<Position, String> {
        let snapshots = self
            .js
            .get_stream_no_info(streams::CONFIG_SNAPSHOTS)
            .await
            .map_err(|e| format!("config snapshot stream: {e}"))?;
        let subject = config::snapshot_subject(&self.addr.tenant_id, &self.addr.store_id);
        let m = match snapshots.direct_get_last_for_subject(subject).await {
            Ok(m) => m,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Err("no configuration snapshot yet".into()),
            Err(e) => return Err(format!("snapshot: {e}")),
        };
        let Some(snap) = self.decode::<ConfigSnapshot>(&m.subject, m.sequence, &m.payload).await? else {
            return Err(format!("snapshot at seq {} refused", m.sequence));
        };
        if snap.version <= pos.version {
            return Ok(pos);
        }
        self.apply(Applying::Snapshot(&snap), m.payload.len()).await?;
        Ok(Position { version: snap.version, seq: snap.delta_seq })
    }

    async fn apply(&self, change: Applying<'_>, bytes: usize) -> Result<(), String> {
        if !config_cache::apply(&self.pool, &self.db_path, change).await.map_err(db)? {
            return Err(format!("version {} does not follow the applied one", change.version()));
        }
        let via = if change.is_snapshot() { "snapshot" } else { "delta" };
        self.metrics.config_applied(via).increment(1);
        self.metrics.config_bytes(via).increment(bytes as u64);
        self.metrics.config_version.set(change.version() as f64);
        if let Ok(Some(at)) = config_cache::published_at_ms(&self.pool, change.version()).await {
            self.metrics.config_latency.record((crate::now_ms() - at).max(0) as f64 / 1000.0);
        }
        tracing::info!(version = change.version(), via, "Configuration applied.");
        for n in &self.applied {
            n.notify_one();
        }
        Ok(())
    }

    /// Decodes a delta or snapshot of this store; refuses (None) anything else.
    async fn decode<T: serde::de::DeserializeOwned + Addressed>(
        &self,
        subject: &str,
        seq: u64,
        payload: &[u8],
    ) -> Result<Option<T>, String> {
        let (code, detail) = match tillsync_schemas::config::decode::<T>(payload) {
            Ok(v) if v.addressed_to(&self.addr) => return Ok(Some(v)),
            Ok(_) => (WRONG_STORE, "names another tenant or store".to_string()),
            Err(e) => (UNDECODABLE, e.detail),
        };
        tracing::warn!(subject, seq, code, %detail, "Configuration message refused.");
        if config_cache::refuse(&self.pool, subject, seq, code, &detail, payload).await.map_err(db)? {
            self.metrics.config_refused(code).increment(1);
        }
        Ok(None)
    }
}

/// Deltas and snapshots name their store.
pub trait Addressed {
    fn addressed_to(&self, addr: &DeviceAddr) -> bool;
}

impl Addressed for ConfigDelta {
    fn addressed_to(&self, addr: &DeviceAddr) -> bool {
        self.tenant_id == addr.tenant_id && self.store_id == addr.store_id
    }
}

impl Addressed for ConfigSnapshot {
    fn addressed_to(&self, addr: &DeviceAddr) -> bool {
        self.tenant_id == addr.tenant_id && self.store_id == addr.store_id
    }
}

/// A delta's version: its header, else its body; None when neither reads.
fn version_of(headers: &async_nats::HeaderMap, payload: &[u8]) -> Option<u64> {
    headers
        .get(HEADER_VERSION)
        .and_then(|v| v.as_str().parse().ok())
        .or_else(|| tillsync_schemas::config::decode::<ConfigDelta>(payload).ok().map(|d| d.version))
}

fn db(e: sqlx::Error) -> String {
    format!("SQLite: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: Position = Position { version: 5, seq: 50 };

    #[test]
    fn start_takes_the_snapshot_when_new_or_far_behind() {
        let none = Position { version: 0, seq: 0 };
        assert_eq!(start(none, Some(3), 100), Start::Snapshot);
        assert_eq!(start(none, None, 100), Start::Deltas { from_seq: 1 }, "nothing published yet: wait for it");
        assert_eq!(start(AT, Some(5), 100), Start::Deltas { from_seq: 51 });
        assert_eq!(start(AT, Some(105), 100), Start::Deltas { from_seq: 51 }, "exactly the limit: deltas");
        assert_eq!(start(AT, Some(106), 100), Start::Snapshot);
        assert_eq!(start(AT, Some(8), 2), Start::Snapshot);
        assert_eq!(start(AT, Some(3), 100), Start::Deltas { from_seq: 51 }, "behind the device: nothing to take");
    }

    #[test]
    fn deltas_apply_only_onto_the_version_before() {
        assert_eq!(on_delta(5, 4), Step::Skip);
        assert_eq!(on_delta(5, 5), Step::Skip);
        assert_eq!(on_delta(5, 6), Step::Apply);
        assert_eq!(on_delta(5, 7), Step::Snapshot);
        assert_eq!(on_delta(0, 1), Step::Apply);
    }
}
