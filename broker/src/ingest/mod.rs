//! Event ingest: from the events stream through the device actors into Postgres.
//!
//! Each owned partition's events consumer ([`crate::spine`]) hands over a batch (up to
//! `batch_size`, waiting at most `linger` for more); it is decoded, routed per device to the
//! actors (fast dedupe, gaps), committed in one transaction through the writer under the
//! partition's fence, and only then acked. Up to `ingest_lanes` batches commit at once across
//! the partitions. [`process`] is the part without JetStream, shared with `tillsync replay`.

pub mod plan;
mod rows;
pub mod writer;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::partitions::{fence, Fence};
use crate::quarantine::BadRow;
use crate::spine::{self, Settle, Source};
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

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate(DupLayer),
    Conflict,
    Stale,
    Quarantined(Reason),
}

/// The result of one committed batch.
#[derive(Debug, Default)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
    /// The event kind of each message, where it decoded.
    pub kinds: Vec<Option<&'static str>>,
    /// Gaps in device sequences this batch detected.
    pub gaps: usize,
    /// Devices whose ack watermark advanced, with the new value.
    pub watermarks: Vec<(DeviceAddr, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("Postgres: {0}")]
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

enum Classified {
    Event(Box<EventEnvelope>, [u8; 32]),
    Bad(WireError),
}

async fn classify(engine: &Engine<'_>, raw: &Raw) -> Result<Classified, sqlx::Error> {
    let gate = spine::Gate { pool: engine.pool, tenants: engine.tenants, partitions: engine.partitions };
    match spine::admit(&gate, &raw.subject, &raw.payload, codec::decode_event, |e| e.tenant_id.as_str()).await {
        Ok(ev) => {
            let h = content_hash(&ev);
            Ok(Classified::Event(Box::new(ev), h))
        }
        Err(spine::Refused::Bad(e)) => Ok(Classified::Bad(e)),
        Err(spine::Refused::Db(e)) => Err(e),
    }
}

fn bad_row(raw: &Raw, e: &WireError) -> BadRow {
    crate::quarantine::bad_row(names::EVENTS, &raw.subject, raw.stream_seq, &raw.payload, e)
}

/// Decides and commits one batch. Nothing is acked here; the caller acks after this returns.
pub async fn process(engine: &Engine<'_>, raws: &[Raw]) -> Result<Report, IngestError> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; raws.len()];
    let mut bad = Vec::new();
    let mut events: Vec<(usize, Box<EventEnvelope>, [u8; 32])> = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        match classify(engine, raw).await? {
            Classified::Bad(e) => {
                outcomes[i] = Some(Outcome::Quarantined(e.reason));
                bad.push(bad_row(raw, &e));
            }
            Classified::Event(ev, h) => events.push((i, ev, h)),
        }
    }

    // Per device, in stream order: the actor's fast path and gap detection.
    let mut by_device: HashMap<DeviceAddr, Vec<usize>> = HashMap::new();
    for (k, (_, ev, _)) in events.iter().enumerate() {
        by_device.entry(ev.addr()).or_default().push(k);
    }
    // The actors hold what they decide as committed; if the batch does not commit, they must
    // drop it before any retry, or the retry would take these events for duplicates.
    let Decided { verdicts, positions, devices, decisions } =
        match decide_and_commit(engine, raws, &events, &by_device, &bad, &mut outcomes).await {
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
            Decision::New => Outcome::Applied,
            Decision::Duplicate(l) => Outcome::Duplicate(*l),
            Decision::Conflict => Outcome::Conflict,
            Decision::Stale => Outcome::Stale,
            Decision::Invalid(r) => Outcome::Quarantined(*r),
        });
    }
    // Every candidate counts as committed (conflicts too: their seq is durably accounted for,
    // in `conflicts` with the bytes), so the new watermark is the one `decide` projected.
    let watermarks = verdicts
        .into_iter()
        .filter(|(_, v)| v.projected_watermark > v.watermark)
        .map(|(addr, v)| (addr, v.projected_watermark))
        .collect();
    let mut kinds = vec![None; raws.len()];
    for (i, ev, _) in &events {
        kinds[*i] = Some(ev.body.kind());
    }
    for (k, (_, ev, _)) in events.iter().enumerate() {
        if outcomes[events[k].0] == Some(Outcome::Applied) {
            metrics::event_lag((crate::now_ms() - ev.occurred_at_ms).max(0) as f64 / 1000.0);
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
    raws: &[Raw],
    events: &[(usize, Box<EventEnvelope>, [u8; 32])],
    by_device: &HashMap<DeviceAddr, Vec<usize>>,
    bad: &[BadRow],
    outcomes: &mut [Option<Outcome>],
) -> Result<Decided, IngestError> {
    let asks = by_device.iter().map(|(addr, ks)| {
        let batch = ks
            .iter()
            .map(|k| Incoming { event_id: events[*k].1.event_id.clone(), seq: events[*k].1.seq, hash: events[*k].2 })
            .collect();
        async move { engine.actors.decide(addr, batch).await.map(|v| (addr.clone(), v)) }
    });
    let verdicts = futures::future::try_join_all(asks).await?;

    let mut cands: Vec<(usize, Candidate)> = Vec::new();
    let mut devices = Vec::new();
    for (addr, v) in &verdicts {
        let ks = &by_device[addr];
        for (k, fast) in ks.iter().zip(&v.fast) {
            let (i, ev, h) = &events[*k];
            match fast {
                Some(Decision::Duplicate(layer)) => outcomes[*i] = Some(Outcome::Duplicate(*layer)),
                _ => cands.push((*i, Candidate { ev, hash: *h, stream_seq: Some(raws[*i].stream_seq) })),
            }
        }
        let max_seq = ks.iter().map(|k| events[*k].1.seq).max().unwrap_or(0);
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

fn record(outcome: Outcome, kind: Option<&'static str>) {
    match outcome {
        Outcome::Applied => metrics::event_applied(kind.unwrap_or("unknown")),
        Outcome::Duplicate(l) => metrics::event_duplicate(l.as_str()),
        Outcome::Conflict => metrics::event_conflict("content_mismatch"),
        Outcome::Stale => metrics::event_conflict("stale"),
        Outcome::Quarantined(r) => metrics::event_quarantined(r.as_str()),
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
pub async fn handle_batch(ctx: &Ctx, fence: Fence, batch: Vec<jetstream::Message>) {
    let started = Instant::now();
    let raws: Vec<Raw> = batch
        .iter()
        .map(|m| Raw {
            stream_seq: m.info().map(|i| i.stream_sequence).unwrap_or(0),
            subject: m.subject.to_string(),
            payload: m.payload.clone(),
        })
        .collect();
    metrics::events_received(raws.len() as u64);
    metrics::batch_size(raws.len());
    crate::flood::watch(ctx, &batch).await;
    let engine = Engine {
        pool: &ctx.pool,
        actors: &ctx.actors,
        tenants: &ctx.tenants,
        fence: Some(fence),
        partitions: Some(ctx.config.partitions),
    };
    let mut attempt = 0u32;
    let report = loop {
        match process(&engine, &raws).await {
            Ok(r) => break Some(r),
            Err(e) if e.is_fenced() => {
                // Another instance owns the partition now: leave the batch to it.
                ctx.partitions.report_fenced(fence);
                break None;
            }
            Err(e) if e.is_transient() && attempt < 4 => {
                metrics::db_retry("ingest");
                attempt += 1;
                tracing::warn!(error = %e, attempt, "Transient failure committing a batch; retrying.");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            Err(e) if e.is_transient() => {
                tracing::error!(error = %e, "Batch still failing; handing it back to JetStream for redelivery.");
                break None;
            }
            Err(e) => {
                tracing::error!(error = %e, "Batch failed; applying its messages one by one to isolate the cause.");
                isolate(ctx, &engine, &batch, &raws).await;
                return;
            }
        }
    };
    #[cfg(debug_assertions)]
    if ctx.config.fault_crash_after_commit && report.is_some() {
        tracing::error!("Fault injection: aborting after commit, before ack.");
        std::process::abort();
    }
    let Some(report) = report else {
        for m in &batch {
            spine::settle(m, Settle::RETRY).await;
        }
        return;
    };
    settle(ctx, &batch, &report, started).await;
}

/// Acks (or terminates, for quarantined messages) a committed batch and publishes watermarks.
async fn settle(ctx: &Ctx, batch: &[jetstream::Message], report: &Report, started: Instant) {
    for ((m, o), kind) in batch.iter().zip(&report.outcomes).zip(&report.kinds) {
        record(*o, *kind);
        spine::settle(m, if matches!(o, Outcome::Quarantined(_)) { Settle::Term } else { Settle::Ack }).await;
        metrics::apply_latency(started.elapsed().as_secs_f64());
    }
    for _ in 0..report.gaps {
        metrics::event_gap();
    }
    publish_watermarks(ctx, &report.watermarks).await;
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

/// A batch failed for a reason retries cannot fix: process each message alone, quarantining
/// (reason `apply_failed`) exactly the ones that fail, so one poison message never blocks others.
async fn isolate(ctx: &Ctx, engine: &Engine<'_>, batch: &[jetstream::Message], raws: &[Raw]) {
    for (m, raw) in batch.iter().zip(raws) {
        let started = Instant::now();
        match process(engine, std::slice::from_ref(raw)).await {
            Ok(report) => settle(ctx, std::slice::from_ref(m), &report, started).await,
            Err(e) if e.is_transient() || e.is_fenced() => spine::settle(m, Settle::RETRY).await,
            Err(e) => {
                let row = bad_row(raw, &WireError::new(Reason::ApplyFailed, e.to_string()));
                match writer::commit(engine.pool, engine.fence, &[row], &[], &[]).await {
                    Ok(_) => {
                        metrics::event_quarantined(Reason::ApplyFailed.as_str());
                        spine::settle(m, Settle::Term).await;
                    }
                    Err(error) => {
                        tracing::error!(%error, "Cannot quarantine; leaving the message for redelivery.");
                        spine::settle(m, Settle::Nak(Duration::from_secs(5))).await;
                    }
                }
            }
        }
    }
}
