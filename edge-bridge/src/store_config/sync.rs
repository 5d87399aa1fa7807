//! Keeps the store's configuration in step with head office, holding no JetStream consumer
//! while it is in step (issue 27: a consumer per device costs the cluster far more than a
//! subscription). On every (re)connect it first subscribes (core NATS) to its store's delta
//! subject, then reads the version of the last delta on TILLSYNC_CONFIG (a direct get) and
//! decides ([`start`]): in step, nothing more; a few versions behind, a transient consumer reads
//! the missing deltas from the stream seq after the last applied one and is deleted; new or far
//! behind, the snapshot, then the deltas it trails by. From then on deltas arrive on the
//! subscription, each applied only onto the version before it ([`on_delta`]); a gap (a lost or
//! compacted delta) means the snapshot. While connected it reads the last version again every
//! [`Syncer::recheck_every`] (± 25 %) and catches up when a lost live delta left it behind.
//! Malformed messages are refused with a code, a metric and a row in `refused_config`. The
//! loop around all this is `crate::downlink`'s.

use std::ops::ControlFlow::{self, Break, Continue};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind, DirectGetErrorKind, Stream};
use async_nats::jetstream::ErrorCode;
use async_nats::Subscriber;
use futures::{FutureExt, StreamExt};
use rand::Rng;
use sqlx::sqlite::SqlitePool;
use tillsync_schemas::config::{self, ConfigDelta, ConfigSnapshot};
use tillsync_schemas::{streams, DeviceAddr};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::downlink::{self, Ended, Flow, Link, Next};
use crate::metrics::Metrics;
use crate::store_config::cache::{self, Applying, Position, UNDECODABLE, WRONG_STORE};
use crate::store_config::error::ConfigSyncError;

pub use tillsync_schemas::config::HEADER_VERSION;

/// A catch-up consumer the bridge could not delete (it lost the connection) goes this long
/// after its last pull.
pub const CATCH_UP_INACTIVE: Duration = Duration::from_secs(30);
/// Deltas asked for per pull of a catch-up.
const CATCH_UP_BATCH: usize = 256;

/// How to (re)start after connecting, or after a recheck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// In step, or nothing published yet (or the stream is behind the device): the live
    /// subscription alone, no consumer.
    Live,
    /// Take the snapshot, then the deltas it trails by.
    Snapshot,
    /// Read the deltas from this stream seq with a transient consumer.
    Deltas { from_seq: u64 },
}

/// The pure start decision: `last_version` is the version of the last delta on the stream
/// (None: no delta yet).
pub fn start(applied: Position, last_version: Option<u64>, snapshot_after: u64) -> Start {
    match last_version {
        Some(last) if last > applied.version => {
            if applied.version == 0 || last - applied.version > snapshot_after {
                Start::Snapshot
            } else {
                Start::Deltas { from_seq: applied.seq + 1 }
            }
        }
        _ => Start::Live,
    }
}

/// What to do with a delta of `version` when `applied` is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Already applied (a redelivery, or the snapshot covered it).
    Skip,
    Apply,
    /// The deltas in between are gone from the stream, or were lost on the way.
    Snapshot,
}

pub fn on_delta(applied: u64, version: u64) -> Step {
    match version {
        v if v <= applied => Step::Skip,
        v if v == applied + 1 => Step::Apply,
        _ => Step::Snapshot,
    }
}

/// The wait before the next recheck: `every` spread over ± 25 % by `unit` (uniform in [0, 1)),
/// so a fleet that reconnected together does not recheck together.
pub fn recheck_delay(every: Duration, unit: f64) -> Duration {
    every.mul_f64(0.75 + 0.5 * unit.clamp(0.0, 1.0))
}

/// What became of one delta.
enum Took {
    Next,
    Reposition,
    /// A live delta the bridge cannot use: it is refused (once, with its stream seq) when the
    /// stream is read.
    Refused,
}

pub struct Syncer {
    pub addr: DeviceAddr,
    /// Core NATS: the live subscription to the store's deltas.
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub pool: SqlitePool,
    pub db_path: PathBuf,
    pub metrics: Arc<Metrics>,
    pub connected: watch::Receiver<bool>,
    pub cancel: CancellationToken,
    pub backoff: Backoff,
    pub snapshot_after: u64,
    /// While connected, read the last delta's version again this often (± 25 %) and catch up
    /// if behind: a live delta lost on the way leaves no store behind for longer. Zero: never.
    pub recheck_every: Duration,
    /// Woken after each applied change set: the hand-off and the heartbeat.
    pub applied: Vec<Arc<Notify>>,
}

impl Syncer {
    pub async fn run(self) {
        if let Ok(p) = cache::position(&self.pool).await {
            self.metrics.config_version.set(p.version as f64);
        }
        // The device's consumer may be on the server: left by an older bridge (which held it
        // for as long as it ran) or by a catch-up cut short. Deleted at the next connect.
        downlink::run(Following { syncer: self, stale: true }).await
    }

    fn delta_subject(&self) -> String {
        config::delta_subject(&self.addr.tenant_id, &self.addr.store_id)
    }

    /// The version of the last delta on the stream (None: none yet, or unreadable).
    async fn last_version(&self, deltas: &Stream<()>) -> Result<Option<u64>, ConfigSyncError> {
        match deltas.direct_get_last_for_subject(self.delta_subject()).await {
            Ok(m) => Ok(version_of(&m.headers, &m.payload)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(ConfigSyncError::LastDelta(e)),
        }
    }

    /// Deletes the device's consumer; one already gone is fine. Clears `stale` when it is gone.
    async fn delete_consumer(&self, deltas: &Stream<()>, stale: &mut bool) {
        let name = config::device_consumer(&self.addr);
        match deltas.delete_consumer(&name).await {
            Ok(_) => {
                tracing::debug!(consumer = %name, "Configuration consumer deleted.");
                *stale = false;
            }
            Err(e) if is_absent(&e) => *stale = false,
            Err(error) => tracing::warn!(
                consumer = %name,
                %error,
                "Configuration consumer not deleted; trying again at the next connect."
            ),
        }
    }

    /// Brings the store from `pos` to `last` (the last delta's version): nothing when in step,
    /// else the snapshot and/or the deltas through a transient consumer. `count`: the reason a
    /// read of the deltas is counted under.
    async fn catch_up(
        &mut self,
        deltas: &Stream<()>,
        mut pos: Position,
        last: Option<u64>,
        count: Option<&'static str>,
        stale: &mut bool,
    ) -> Result<ControlFlow<Ended, Position>, ConfigSyncError> {
        let Some(last) = last else { return Ok(Continue(pos)) };
        match start(pos, Some(last), self.snapshot_after) {
            Start::Live => return Ok(Continue(pos)),
            Start::Snapshot => {
                pos = self.take_snapshot(pos).await?;
                if pos.version >= last {
                    return Ok(Continue(pos));
                }
            }
            Start::Deltas { .. } => {}
        }
        if let Some(why) = count {
            self.metrics.config_catchup(why).increment(1);
        }
        pos = match self.read_deltas(deltas, pos, last, stale).await? {
            Continue(pos) => pos,
            other => return Ok(other),
        };
        if pos.version < last {
            // Not on the stream after that seq (the stream was made again?): the snapshot.
            tracing::warn!(applied = pos.version, last, "Deltas not found on the stream; taking the snapshot.");
            let after = self.take_snapshot(pos).await?;
            if after.version < last {
                return Err(ConfigSyncError::Behind { reached: after.version, last });
            }
            pos = after;
        }
        Ok(Continue(pos))
    }

    /// Reads the deltas after `pos` with a transient consumer until `until` is applied or
    /// nothing is pending, then deletes the consumer.
    async fn read_deltas(
        &mut self,
        deltas: &Stream<()>,
        pos: Position,
        until: u64,
        stale: &mut bool,
    ) -> Result<ControlFlow<Ended, Position>, ConfigSyncError> {
        let name = config::device_consumer(&self.addr);
        *stale = true;
        let consumer = deltas
            .create_consumer(pull::Config {
                // The name the device's permissions allow: one consumer per device at most.
                name: Some(name.clone()),
                filter_subject: self.delta_subject(),
                ack_policy: AckPolicy::None,
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: pos.seq + 1 },
                inactive_threshold: CATCH_UP_INACTIVE,
                num_replicas: 1,
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|source| ConfigSyncError::Consumer { name: name.clone(), source })?;
        tracing::debug!(consumer = %name, from_seq = pos.seq + 1, until, "Catching up on configuration deltas.");
        let read = self.drain(&consumer, pos, until).await;
        if !matches!(read, Ok(Break(Ended::Cancelled))) && *self.connected.borrow() {
            self.delete_consumer(deltas, stale).await;
        }
        read
    }

    async fn drain(
        &mut self,
        consumer: &async_nats::jetstream::consumer::Consumer<pull::Config>,
        mut pos: Position,
        until: u64,
    ) -> Result<ControlFlow<Ended, Position>, ConfigSyncError> {
        let mut pending = consumer.cached_info().num_pending;
        while pending > 0 && pos.version < until {
            let mut batch =
                consumer.fetch().max_messages(CATCH_UP_BATCH).messages().await.map_err(ConfigSyncError::Fetch)?;
            let mut got = 0;
            while pending > 0 && pos.version < until {
                let msg = tokio::select! {
                    _ = self.cancel.cancelled() => return Ok(Break(Ended::Cancelled)),
                    changed = self.connected.changed() => return self.connection_changed(changed).map(Break),
                    m = batch.next() => match m {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => return Err(ConfigSyncError::Deltas(e)),
                        None => break,
                    },
                };
                got += 1;
                let info = msg.info().map_err(ConfigSyncError::Metadata)?;
                let seq = info.stream_sequence;
                pending = info.pending;
                match self.take(&msg.subject, Some(seq), &msg.payload, &mut pos).await? {
                    Took::Next | Took::Refused => {}
                    Took::Reposition => return Ok(Break(Ended::StartOver)),
                }
            }
            if got == 0 {
                break;
            }
        }
        Ok(Continue(pos))
    }

    async fn on_live(
        &mut self,
        m: async_nats::Message,
        deltas: &Stream<()>,
        mut pos: Position,
        stale: &mut bool,
    ) -> Result<ControlFlow<Ended, Position>, ConfigSyncError> {
        Ok(match self.take(&m.subject, None, &m.payload, &mut pos).await? {
            Took::Next => Continue(pos),
            Took::Reposition => Break(Ended::StartOver),
            Took::Refused => {
                tracing::info!("A live configuration delta is unusable; reading it from the stream.");
                self.read_deltas(deltas, pos, u64::MAX, stale).await?
            }
        })
    }

    /// None: never (a zero `recheck_every`).
    fn next_recheck(&self) -> Option<tokio::time::Instant> {
        if self.recheck_every.is_zero() {
            return None;
        }
        Some(tokio::time::Instant::now() + recheck_delay(self.recheck_every, rand::rng().random::<f64>()))
    }

    /// Reads the last delta's version again; catches up when a lost live delta left the store
    /// behind. A failed read waits for the next recheck.
    async fn recheck(
        &mut self,
        live: &mut Subscriber,
        deltas: &Stream<()>,
        mut pos: Position,
        stale: &mut bool,
    ) -> Result<ControlFlow<Ended, Position>, ConfigSyncError> {
        let last = match self.last_version(deltas).await {
            Ok(last) => last,
            Err(error) => {
                tracing::warn!(%error, "Configuration recheck failed; trying again at the next one.");
                return Ok(Continue(pos));
            }
        };
        // A delta stored before that read was sent to the subscription before the answer: take
        // those received meanwhile first, so only a lost delta leaves the store behind here.
        while start(pos, last, self.snapshot_after) != Start::Live {
            let Some(Some(m)) = live.next().now_or_never() else { break };
            match self.on_live(m, deltas, pos, stale).await? {
                Continue(p) => pos = p,
                other => return Ok(other),
            }
        }
        if start(pos, last, self.snapshot_after) == Start::Live {
            return Ok(Continue(pos));
        }
        tracing::warn!(
            applied = pos.version,
            last,
            "Configuration behind at the periodic recheck (a live delta was lost); catching up."
        );
        self.metrics.config_catchup("recheck").increment(1);
        self.catch_up(deltas, pos, last, None, stale).await
    }

    /// A change of the connection while reading ([`reconnected`]); closed: stopping.
    fn connection_changed(&self, changed: Result<(), watch::error::RecvError>) -> Result<Ended, ConfigSyncError> {
        match changed {
            Ok(()) => reconnected(*self.connected.borrow()),
            Err(_) => Ok(Ended::Cancelled),
        }
    }

    /// Takes one delta: `seq` is its stream seq when read from the stream, None when live
    /// (then `pos.seq` stays: a lower bound, where a catch-up starts and skips what is applied).
    async fn take(
        &self,
        subject: &str,
        seq: Option<u64>,
        payload: &[u8],
        pos: &mut Position,
    ) -> Result<Took, ConfigSyncError> {
        let delta = match seq {
            Some(seq) => match self.decode::<ConfigDelta>(subject, seq, payload).await? {
                Some(d) => d,
                None => {
                    // Unusable: only a snapshot past it lets the store move on.
                    let after = self.take_snapshot(*pos).await?;
                    if after.seq < seq {
                        return Err(ConfigSyncError::RefusedDelta { seq });
                    }
                    return Ok(Took::Reposition);
                }
            },
            // Refused where it has a seq (kept once per stream message): on the stream.
            None => match self.check::<ConfigDelta>(payload) {
                Ok(d) => d,
                Err(_) => return Ok(Took::Refused),
            },
        };
        let at = seq.unwrap_or(pos.seq);
        match on_delta(pos.version, delta.version) {
            Step::Skip => {}
            Step::Apply => {
                self.apply(Applying::Delta { delta: &delta, seq: at }, payload.len()).await?;
                *pos = Position { version: delta.version, seq: at };
            }
            Step::Snapshot => {
                tracing::info!(applied = pos.version, next = delta.version, "Deltas missing; taking the snapshot.");
                let after = self.take_snapshot(*pos).await?;
                // Read from the stream, the deltas in between are gone: the snapshot must cover
                // them. Live, they may only have been lost: starting over reads them.
                if seq.is_some() && after.version + 1 < delta.version {
                    return Err(ConfigSyncError::SnapshotShort { snapshot: after.version, delta: delta.version });
                }
                return Ok(Took::Reposition);
            }
        }
        Ok(Took::Next)
    }

    /// Applies the store's snapshot when it is newer than `pos`; returns the new position.
    async fn take_snapshot(&self, pos: Position) -> Result<Position, ConfigSyncError> {
        let snapshots =
            self.js.get_stream_no_info(streams::CONFIG_SNAPSHOTS).await.map_err(ConfigSyncError::SnapshotStream)?;
        let subject = config::snapshot_subject(&self.addr.tenant_id, &self.addr.store_id);
        let m = match snapshots.direct_get_last_for_subject(subject).await {
            Ok(m) => m,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Err(ConfigSyncError::NoSnapshot),
            Err(e) => return Err(ConfigSyncError::Snapshot(e)),
        };
        let Some(snap) = self.decode::<ConfigSnapshot>(&m.subject, m.sequence, &m.payload).await? else {
            return Err(ConfigSyncError::RefusedSnapshot { seq: m.sequence });
        };
        if snap.version <= pos.version {
            return Ok(pos);
        }
        self.apply(Applying::Snapshot(&snap), m.payload.len()).await?;
        Ok(Position { version: snap.version, seq: snap.delta_seq })
    }

    async fn apply(&self, change: Applying<'_>, bytes: usize) -> Result<(), ConfigSyncError> {
        if !cache::apply(&self.pool, &self.db_path, change).await? {
            return Err(ConfigSyncError::NotNext { version: change.version() });
        }
        let via = if change.is_snapshot() { "snapshot" } else { "delta" };
        self.metrics.config_applied(via).increment(1);
        self.metrics.config_bytes(via).increment(bytes as u64);
        self.metrics.config_version.set(change.version() as f64);
        if let Ok(Some(at)) = cache::published_at_ms(&self.pool, change.version()).await {
            self.metrics.config_latency.record((crate::now_ms() - at).max(0) as f64 / 1000.0);
        }
        tracing::info!(version = change.version(), via, "Configuration applied.");
        for n in &self.applied {
            n.notify_one();
        }
        Ok(())
    }

    /// A delta or snapshot of this store, or why not (code, detail).
    fn check<T: serde::de::DeserializeOwned + Addressed>(&self, payload: &[u8]) -> Result<T, (&'static str, String)> {
        match tillsync_schemas::config::decode::<T>(payload) {
            Ok(v) if v.addressed_to(&self.addr) => Ok(v),
            Ok(_) => Err((WRONG_STORE, "names another tenant or store".to_string())),
            Err(e) => Err((UNDECODABLE, e.detail)),
        }
    }

    /// Decodes a delta or snapshot of this store; refuses (None) anything else.
    async fn decode<T: serde::de::DeserializeOwned + Addressed>(
        &self,
        subject: &str,
        seq: u64,
        payload: &[u8],
    ) -> Result<Option<T>, ConfigSyncError> {
        let (code, detail) = match self.check::<T>(payload) {
            Ok(v) => return Ok(Some(v)),
            Err(why) => why,
        };
        tracing::warn!(subject, seq, code, %detail, "Configuration message refused.");
        if cache::refuse(&self.pool, subject, seq, code, &detail, payload).await? {
            self.metrics.config_refused(code).increment(1);
        }
        Ok(None)
    }
}

/// The sync as a downlink flow: `stale` outlives a round (the consumer to delete at the next
/// connect), the stream and the position are one round's.
struct Following {
    syncer: Syncer,
    stale: bool,
}

struct Round {
    deltas: Stream<()>,
    pos: Position,
    recheck: Option<tokio::time::Instant>,
}

impl Flow for Following {
    type Live = Subscriber;
    type Round = Round;
    type Error = ConfigSyncError;
    const LIVE_ENDED: ConfigSyncError = ConfigSyncError::LiveEnded;

    fn link(&mut self) -> Link<'_> {
        let s = &mut self.syncer;
        Link { connected: &mut s.connected, cancel: &s.cancel, backoff: &mut s.backoff }
    }

    async fn subscribe(&mut self) -> Result<Subscriber, ConfigSyncError> {
        // First: the direct get of the last version goes out after it on the same connection,
        // so every delta stored after that read reaches this subscription.
        let subject = self.syncer.delta_subject();
        self.syncer
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|source| ConfigSyncError::Subscribe { subject, source })
    }

    async fn catch_up(&mut self) -> Result<ControlFlow<Ended, Round>, ConfigSyncError> {
        let s = &mut self.syncer;
        let deltas = s.js.get_stream_no_info(streams::CONFIG).await.map_err(ConfigSyncError::Stream)?;
        if self.stale {
            s.delete_consumer(&deltas, &mut self.stale).await;
        }
        let pos = cache::position(&s.pool).await?;
        let last = s.last_version(&deltas).await?;
        let pos = match s.catch_up(&deltas, pos, last, Some("connect"), &mut self.stale).await? {
            Continue(pos) => pos,
            Break(ended) => return Ok(Break(ended)),
        };
        s.backoff.reset();
        Ok(Continue(Round { deltas, pos, recheck: s.next_recheck() }))
    }

    fn due(&self, round: &Round) -> Option<tokio::time::Instant> {
        round.recheck
    }

    async fn on_due(&mut self, round: &mut Round, live: &mut Subscriber) -> Next<ConfigSyncError> {
        round.recheck = self.syncer.next_recheck();
        let flow = self.syncer.recheck(live, &round.deltas, round.pos, &mut self.stale).await?;
        Ok(moved(round, flow))
    }

    async fn on_message(
        &mut self,
        round: &mut Round,
        msg: async_nats::Message,
        _: &mut Subscriber,
    ) -> Next<ConfigSyncError> {
        let flow = self.syncer.on_live(msg, &round.deltas, round.pos, &mut self.stale).await?;
        Ok(moved(round, flow))
    }

    async fn on_connection(&mut self, _: &mut Round, up: bool) -> Next<ConfigSyncError> {
        reconnected(up).map(Break)
    }

    fn failed(&self, error: &ConfigSyncError) {
        tracing::warn!(%error, "Configuration sync stopped; retrying.");
    }
}

/// Takes the position a step reached.
fn moved(round: &mut Round, flow: ControlFlow<Ended, Position>) -> ControlFlow<Ended> {
    match flow {
        Continue(pos) => {
            round.pos = pos;
            Continue(())
        }
        Break(ended) => Break(ended),
    }
}

/// The connection changed while reading: down, an error (retried once connected); up, it was
/// lost and regained in between, and live deltas may be missing: start over.
fn reconnected(up: bool) -> Result<Ended, ConfigSyncError> {
    if up {
        Ok(Ended::StartOver)
    } else {
        Err(ConfigSyncError::Disconnected)
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

/// JetStream's "consumer not found" (10014) and "stream not found" (10059): nothing to delete.
fn is_absent(e: &ConsumerError) -> bool {
    matches!(e.kind(), ConsumerErrorKind::JetStream(j)
        if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND || j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: Position = Position { version: 5, seq: 50 };

    #[test]
    fn start_takes_the_snapshot_when_new_or_far_behind() {
        let none = Position { version: 0, seq: 0 };
        assert_eq!(start(none, Some(3), 100), Start::Snapshot);
        assert_eq!(start(AT, Some(106), 100), Start::Snapshot);
        assert_eq!(start(AT, Some(8), 2), Start::Snapshot);
    }

    #[test]
    fn start_reads_deltas_only_when_a_few_versions_behind() {
        assert_eq!(start(AT, Some(6), 100), Start::Deltas { from_seq: 51 });
        assert_eq!(start(AT, Some(105), 100), Start::Deltas { from_seq: 51 }, "exactly the limit: deltas");
        assert_eq!(start(AT, Some(7), 2), Start::Deltas { from_seq: 51 });
    }

    #[test]
    fn start_holds_no_consumer_when_in_step() {
        let none = Position { version: 0, seq: 0 };
        assert_eq!(start(none, None, 100), Start::Live, "nothing published yet: version 1 comes live");
        assert_eq!(start(AT, None, 100), Start::Live, "no delta readable");
        assert_eq!(start(AT, Some(5), 100), Start::Live, "at the last version");
        assert_eq!(start(AT, Some(3), 100), Start::Live, "behind the device: nothing to take");
        assert_eq!(start(AT, Some(5), 0), Start::Live);
    }

    #[test]
    fn rechecks_spread_over_a_quarter_either_side() {
        let every = Duration::from_secs(300);
        assert_eq!(recheck_delay(every, 0.0), Duration::from_secs(225));
        assert_eq!(recheck_delay(every, 0.5), every);
        assert!(recheck_delay(every, 0.999_999) < Duration::from_secs(375));
        assert_eq!(recheck_delay(every, 7.0), Duration::from_secs(375), "clamped");
        assert_eq!(recheck_delay(Duration::ZERO, 0.3), Duration::ZERO);
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
