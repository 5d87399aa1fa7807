//! Event ingest: from the events stream through the device actors into Postgres.
//!
//! Each owned partition's events consumer ([`Events`], on the [`crate::spine`]) hands over a
//! batch (up to `batch_size`, waiting at most `linger` for more); the spine admits it (refused
//! messages are quarantined), the rest is routed per device to the actors (fast dedupe, gaps),
//! committed in one transaction through the writer under the partition's fence, and only then
//! acked. Up to `ingest_lanes` batches commit at once across the partitions. [`process`] is the
//! same without JetStream, admitting included, for `tillsync replay`.

pub mod plan;
mod rows;
pub mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::partitions::{fence, Fence};
use crate::quarantine::BadRow;
use crate::spine::{self, Admitted, Committed, Consumer, Failure, Refused, Source, Verdict};
use crate::tenants::Tenants;
use crate::{metrics, Ctx};
use async_nats::jetstream;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tillsync_actors::{ActorError, ActorSystem, Decision, DeviceVerdicts, DupLayer, Incoming};
use tillsync_schemas::{codec, streams as names, subject, DeviceAddr, EventEnvelope, Reason, Watermark, WireError};
use writer::{Candidate, DeviceUpdate};

/// A message as read from the events stream.
#[derive(Debug, Clone)]
pub struct Raw {
    pub stream_seq: u64,
    pub subject: String,
    pub payload: Bytes,
}

/// What ingest made of one event message: applied or stale (the ledger's `outcome`), a duplicate,
/// a conflict, or quarantined. Not the wire's [`tillsync_schemas::Outcome`], a device's answer to
/// a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    Applied,
    Duplicate(DupLayer),
    Conflict,
    Stale,
    Quarantined(Reason),
}

/// The result of one committed batch.
#[derive(Debug, Default)]
pub struct Report {
    pub outcomes: Vec<EventOutcome>,
    /// The event kind of each message, where it decoded.
    pub kinds: Vec<Option<&'static str>>,
    /// Gaps in device sequences this batch detected.
    pub gaps: usize,
    /// Devices whose ack watermark advanced, with the new value.
    pub watermarks: Vec<(DeviceAddr, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("Postgres")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Actor(#[from] ActorError),
}

impl IngestError {
    fn is_fenced(&self) -> bool {
        matches!(self, IngestError::Db(e) if fence::is_fenced(e))
    }

    fn is_transient(&self) -> bool {
        match self {
            IngestError::Db(e) => crate::db::is_transient(e),
            IngestError::Actor(_) => true,
        }
    }
}

/// What processing needs: the database, the actors, the tenant list, and the fence of the
/// partition being committed (`None` for replay, which runs with the brokers stopped).
pub struct Engine<'a> {
    pub pool: &'a PgPool,
    pub actors: &'a ActorSystem,
    pub tenants: &'a Tenants,
    pub fence: Option<Fence>,
    /// The partition count subjects are checked against (`None`: not checked).
    pub partitions: Option<u16>,
}

pub fn content_hash(ev: &EventEnvelope) -> [u8; 32] {
    // The canonical re-encoding, not the raw bytes: a client that re-encodes the same event
    // with other map ordering or integer widths still produces a duplicate, not a conflict.
    Sha256::digest(codec::encode(ev)).into()
}

/// An event as admitted: its envelope and content hash.
pub struct Event {
    pub envelope: EventEnvelope,
    pub hash: [u8; 32],
}

fn bad_row(raw: &Raw, e: &WireError) -> BadRow {
    crate::quarantine::bad_row(names::EVENTS, &raw.subject, raw.stream_seq, &raw.payload, e)
}

/// Admits, decides and commits one batch read from the stream (replay: the live broker
/// admits through the spine). Refused messages are quarantined in the batch's transaction.
pub async fn process(engine: &Engine<'_>, raws: &[Raw]) -> Result<Report, IngestError> {
    let gate = spine::Gate { pool: engine.pool, tenants: engine.tenants, partitions: engine.partitions };
    let consumer = Events::taken_now();
    let mut outcomes: Vec<Option<EventOutcome>> = vec![None; raws.len()];
    let mut bad = Vec::new();
    let mut events = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        match spine::admit(&gate, &consumer, &raw.subject, &raw.payload).await {
            Ok(ev) => events.push((i, ev)),
            Err(Refused::Bad(e)) => {
                outcomes[i] = Some(EventOutcome::Quarantined(e.reason));
                bad.push(bad_row(raw, &e));
            }
            Err(Refused::Db(e)) => return Err(e.into()),
        }
    }
    let seqs: Vec<u64> = raws.iter().map(|r| r.stream_seq).collect();
    let events: Vec<(usize, &Event)> = events.iter().map(|(i, ev)| (*i, ev)).collect();
    apply(engine, &seqs, &events, &bad, outcomes).await
}

/// Decides and commits admitted events, `(position in the batch, event)`, with the batch's
/// stream sequences, the refused messages' quarantine rows and their outcomes. Nothing is
/// acked here; the caller acks after this returns.
async fn apply(
    engine: &Engine<'_>,
    seqs: &[u64],
    events: &[(usize, &Event)],
    bad: &[BadRow],
    mut outcomes: Vec<Option<EventOutcome>>,
) -> Result<Report, IngestError> {
    // Per device, in stream order: the actor's fast path and gap detection.
    let mut by_device: HashMap<DeviceAddr, Vec<usize>> = HashMap::new();
    for (k, (_, ev)) in events.iter().enumerate() {
        by_device.entry(ev.envelope.addr()).or_default().push(k);
    }
    // The actors hold what they decide as committed; if the batch does not commit, they must
    // drop it before any retry, or the retry would take these events for duplicates.
    let Decided { verdicts, positions, devices, decisions } =
        match decide_and_commit(engine, seqs, events, &by_device, bad, &mut outcomes).await {
            Ok(d) => d,
            Err(e) => {
                for addr in by_device.keys() {
                    engine.actors.forget(addr);
                }
                return Err(e);
            }
        };

    for (i, d) in positions.iter().zip(&decisions) {
        outcomes[*i] = Some(match d {
            Decision::New => EventOutcome::Applied,
            Decision::Duplicate(l) => EventOutcome::Duplicate(*l),
            Decision::Conflict => EventOutcome::Conflict,
            Decision::Stale => EventOutcome::Stale,
            Decision::Invalid(r) => EventOutcome::Quarantined(*r),
        });
    }
    // Every candidate counts as committed (conflicts too: their seq is durably accounted for,
    // in `conflicts` with the bytes), so the new watermark is the one `decide` projected.
    let watermarks = verdicts
        .into_iter()
        .filter(|(_, v)| v.projected_watermark > v.watermark)
        .map(|(addr, v)| (addr, v.projected_watermark))
        .collect();
    let mut kinds = vec![None; seqs.len()];
    for (i, ev) in events {
        kinds[*i] = Some(ev.envelope.body.kind());
        if outcomes[*i] == Some(EventOutcome::Applied) {
            metrics::event_lag((crate::now_ms() - ev.envelope.occurred_at_ms).max(0) as f64 / 1000.0);
        }
    }
    let outcomes = outcomes.into_iter().map(|o| o.expect("every message has an outcome")).collect();
    let gaps = devices.iter().map(|d| d.gaps.len()).sum();
    Ok(Report { outcomes, kinds, gaps, watermarks })
}

/// What deciding and committing a batch produced.
struct Decided {
    verdicts: Vec<(DeviceAddr, DeviceVerdicts)>,
    /// Per committed candidate, its message's position in the batch.
    positions: Vec<usize>,
    devices: Vec<DeviceUpdate>,
    decisions: Vec<Decision>,
}

/// Has each device's actor decide its events (fast duplicates are settled in `outcomes`), then
/// commits the batch through the writer.
async fn decide_and_commit(
    engine: &Engine<'_>,
    seqs: &[u64],
    events: &[(usize, &Event)],
    by_device: &HashMap<DeviceAddr, Vec<usize>>,
    bad: &[BadRow],
    outcomes: &mut [Option<EventOutcome>],
) -> Result<Decided, IngestError> {
    let asks = by_device.iter().map(|(addr, ks)| {
        let batch = ks
            .iter()
            .map(|k| {
                let ev = events[*k].1;
                Incoming { event_id: ev.envelope.event_id.clone(), seq: ev.envelope.seq, hash: ev.hash }
            })
            .collect();
        async move { engine.actors.decide(addr, batch).await.map(|v| (addr.clone(), v)) }
    });
    let verdicts = futures::future::try_join_all(asks).await?;

    let mut cands: Vec<(usize, Candidate)> = Vec::new();
    let mut devices = Vec::new();
    for (addr, v) in &verdicts {
        let ks = &by_device[addr];
        for (k, fast) in ks.iter().zip(&v.fast) {
            let (i, ev) = events[*k];
            match fast {
                Some(Decision::Duplicate(layer)) => outcomes[i] = Some(EventOutcome::Duplicate(*layer)),
                _ => cands.push((i, Candidate { ev: &ev.envelope, hash: ev.hash, stream_seq: Some(seqs[i]) })),
            }
        }
        let max_seq = ks.iter().map(|k| events[*k].1.envelope.seq).max().unwrap_or(0);
        devices.push(DeviceUpdate {
            addr: addr.clone(),
            max_seq,
            projected_watermark: v.projected_watermark,
            gaps: v.gaps.clone(),
        });
    }
    cands.sort_by_key(|(i, _)| *i);
    let (positions, cands): (Vec<usize>, Vec<Candidate>) = cands.into_iter().unzip();

    let decisions = writer::commit(engine.pool, engine.fence, bad, &cands, &devices).await?;
    Ok(Decided { verdicts, positions, devices, decisions })
}

fn record(outcome: EventOutcome, kind: Option<&'static str>) {
    match outcome {
        EventOutcome::Applied => metrics::event_applied(kind.unwrap_or("unknown")),
        EventOutcome::Duplicate(l) => metrics::event_duplicate(l.as_str()),
        EventOutcome::Conflict => metrics::event_conflict("content_mismatch"),
        EventOutcome::Stale => metrics::event_conflict("stale"),
        EventOutcome::Quarantined(r) => metrics::event_quarantined(r.as_str()),
    }
}

/// Exports the actor system's counters as metrics.
pub fn export_actor_stats(ctx: &Ctx) {
    metrics::actor_stats(ctx.actors.stats());
}

/// The events consumers of the spine.
pub fn source(c: &crate::config::Config) -> Source {
    Source { stream: names::EVENTS, base: names::BROKER_EVENTS_CONSUMER, max_batch: c.batch_size, linger: c.linger() }
}

/// Commits one batch of a partition's events under its fence, then settles it.
pub async fn handle_batch(ctx: &Arc<Ctx>, fence: Fence, batch: Vec<jetstream::Message>) {
    spine::take(ctx, fence, &Events::taken_now(), batch).await
}

/// The events consumer: a batch's events are decided by their devices' actors and committed
/// in one transaction. Transient failures are retried in place, and a batch failing for
/// another reason is committed a message at a time, so exactly the poison message is
/// quarantined (`apply_failed`) and the rest go through.
pub struct Events {
    /// When the batch was taken off the stream (`tillsync_apply_latency_seconds` starts there).
    taken: Instant,
}

impl Events {
    pub fn taken_now() -> Events {
        Events { taken: Instant::now() }
    }
}

/// What a committed batch leaves to do once acked.
pub struct Applied {
    messages: usize,
    gaps: usize,
    watermarks: Vec<(DeviceAddr, u64)>,
}

impl Consumer for Events {
    type Item = Event;
    type After = Applied;
    const STREAM: &'static str = names::EVENTS;
    const NAME: &'static str = "ingest";
    const RETRIES: u32 = 4;
    const ISOLATE: bool = true;

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<Event, WireError> {
        let envelope = codec::decode_event(subject, payload)?;
        Ok(Event { hash: content_hash(&envelope), envelope })
    }

    fn tenant<'a>(&self, ev: &'a Event) -> &'a str {
        &ev.envelope.tenant_id
    }

    async fn received(&self, ctx: &Ctx, batch: &[jetstream::Message]) {
        metrics::events_received(batch.len() as u64);
        metrics::batch_size(batch.len());
        crate::flood::watch(ctx, batch).await;
    }

    async fn commit(
        &self,
        ctx: &Arc<Ctx>,
        fence: Fence,
        batch: &[Admitted<Event>],
    ) -> Result<Committed<Applied>, Failure> {
        let engine = Engine {
            pool: &ctx.pool,
            actors: &ctx.actors,
            tenants: &ctx.tenants,
            fence: Some(fence),
            partitions: Some(ctx.config.partitions),
        };
        let seqs: Vec<u64> = batch.iter().map(|a| a.msg.info().map(|i| i.stream_sequence).unwrap_or(0)).collect();
        let events: Vec<(usize, &Event)> = batch.iter().map(|a| &a.item).enumerate().collect();
        let report = apply(&engine, &seqs, &events, &[], vec![None; batch.len()]).await?;
        #[cfg(debug_assertions)]
        if ctx.config.fault_crash_after_commit {
            tracing::error!("Fault injection: aborting after commit, before ack.");
            std::process::abort();
        }
        let verdicts = report
            .outcomes
            .iter()
            .zip(&report.kinds)
            .map(|(o, kind)| {
                record(*o, *kind);
                match o {
                    // Invalid by the actor's decision: quarantined in the batch's transaction.
                    EventOutcome::Quarantined(_) => Verdict::Ended,
                    _ => Verdict::Done,
                }
            })
            .collect();
        let after = Applied { messages: batch.len(), gaps: report.gaps, watermarks: report.watermarks };
        Ok(Committed { verdicts, after })
    }

    /// Publishes the watermarks the batch advanced, once its messages are acked.
    async fn after(&self, ctx: &Arc<Ctx>, a: Applied) {
        for _ in 0..a.messages {
            metrics::apply_latency(self.taken.elapsed().as_secs_f64());
        }
        for _ in 0..a.gaps {
            metrics::event_gap();
        }
        publish_watermarks(ctx, &a.watermarks).await;
    }
}

impl From<IngestError> for Failure {
    fn from(e: IngestError) -> Failure {
        Failure::new(crate::error::Chain(&e), e.is_fenced(), e.is_transient())
    }
}

pub async fn publish_watermarks(ctx: &Ctx, watermarks: &[(DeviceAddr, u64)]) {
    for (addr, seq) in watermarks {
        let wm = Watermark {
            tenant_id: addr.tenant_id.clone(),
            store_id: addr.store_id.clone(),
            device_id: addr.device_id.clone(),
            seq: *seq,
            at_ms: crate::now_ms(),
        };
        if let Err(error) = ctx.nats.publish(subject::watermarks(addr), codec::encode(&wm).into()).await {
            tracing::warn!(%error, "Watermark publish failed; the next batch publishes a newer one.");
        }
    }
}
