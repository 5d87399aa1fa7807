//! The SQLite outbox: an event is answered 202 only after its row, with its seq, is committed.
//! Seqs are assigned under one lock inside the insert's transaction, so they are contiguous
//! and survive any crash. Rows leave only when the broker's watermark covers them: until then
//! the outbox, not JetStream, is the source of truth, and a row marked sent can be rewound
//! (marked unsent again) so the publisher sends it once more.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqlitePool;
use tillsync_schemas::{codec, streams, DeviceAddr};
use tokio::sync::{Mutex, Notify};

use crate::error::{BridgeError, SubmitError};
use crate::events::draft::EventDraft;
use crate::metrics::{Metrics, WATERMARK_AHEAD};
use crate::now_ms;

/// What became of a watermark: taken (newer or not), or refused and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermarked {
    Taken,
    Refused,
}

/// Where an accepted event went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub seq: u64,
    pub event_id: String,
    /// True when the POS resubmitted an event_id the bridge already holds: same seq, nothing new written.
    pub duplicate: bool,
}

/// Size limits and retention of the outbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_rows: u64,
    pub max_bytes: u64,
    /// Rows covered by the watermark stay this long (0: pruned at once).
    pub retention_ms: i64,
    /// POS-chosen event ids are remembered this long for idempotent retries.
    pub event_id_retention_ms: i64,
}

/// One row waiting to be published.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: u64,
    pub event_id: String,
    pub envelope: Vec<u8>,
    /// How often the row was rewound for a resend; part of its `Nats-Msg-Id`.
    pub resends: u32,
}

/// Counters of the outbox, for status and heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStats {
    pub rows: u64,
    pub bytes: u64,
    /// Events not yet covered by the watermark.
    pub unacked: u64,
    /// Events not yet acked by JetStream.
    pub unsent: u64,
    pub oldest_unsent_age_s: u64,
    pub last_seq: u64,
    pub watermark: u64,
    /// Rows rewound for a resend since the file was created.
    #[serde(default)]
    pub resent: u64,
    /// Watermarks refused since the bridge started ([`crate::metrics::WATERMARK_REFUSALS`]); reported in
    /// heartbeats so the cloud sees them.
    #[serde(default)]
    pub watermarks_refused: u64,
}

#[derive(Debug)]
struct Counts {
    rows: u64,
    bytes: u64,
    last_seq: u64,
}

pub struct Outbox {
    pool: SqlitePool,
    addr: DeviceAddr,
    /// The start of this device's `Nats-Msg-Id`s ([`streams::msg_id_prefix`]).
    msg_id_prefix: String,
    limits: Limits,
    counts: Mutex<Counts>,
    watermark: AtomicU64,
    /// When the watermark last moved (or the outbox opened): a stall is counted from here.
    advanced_at_ms: AtomicI64,
    /// Watermarks refused since start, for heartbeats (the metric has them by reason).
    watermarks_refused: AtomicU64,
    /// Woken on every accepted event, so the publisher never polls.
    pub new_rows: Notify,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("addr", &self.addr).finish()
    }
}

impl Outbox {
    pub async fn open(
        pool: SqlitePool,
        addr: DeviceAddr,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Result<Outbox, BridgeError> {
        let (rows, bytes): (i64, i64) =
            sqlx::query_as("SELECT count(*), coalesce(sum(length(envelope)), 0) FROM outbox").fetch_one(&pool).await?;
        let (last_seq, watermark, mut nonce): (i64, i64, String) =
            sqlx::query_as("SELECT last_seq, watermark, msg_id_nonce FROM bridge_state WHERE id = 1")
                .fetch_one(&pool)
                .await?;
        if nonce.is_empty() {
            // Drawn once per file and kept: a retry after a restart must reuse its msg id.
            nonce = uuid::Uuid::new_v4().simple().to_string();
            sqlx::query("UPDATE bridge_state SET msg_id_nonce = ? WHERE id = 1").bind(&nonce).execute(&pool).await?;
        }
        let msg_id_prefix = streams::msg_id_prefix(&addr, &nonce);
        let outbox = Outbox {
            pool,
            addr,
            msg_id_prefix,
            limits,
            counts: Mutex::new(Counts { rows: rows as u64, bytes: bytes as u64, last_seq: last_seq as u64 }),
            watermark: AtomicU64::new(watermark as u64),
            advanced_at_ms: AtomicI64::new(now_ms()),
            watermarks_refused: AtomicU64::new(0),
            new_rows: Notify::new(),
            metrics,
        };
        outbox.metrics.last_seq.set(last_seq as f64);
        outbox.metrics.watermark.set(watermark as f64);
        outbox.publish_gauges(rows as u64, bytes as u64, last_seq as u64);
        Ok(outbox)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn msg_id_prefix(&self) -> &str {
        &self.msg_id_prefix
    }

    pub fn addr(&self) -> &DeviceAddr {
        &self.addr
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub fn watermark(&self) -> u64 {
        self.watermark.load(Ordering::Acquire)
    }

    /// Validates, assigns the seq, commits the row; only then returns.
    pub async fn submit(&self, draft: EventDraft) -> Result<Accepted, SubmitError> {
        self.submit_unless(draft, None).await
    }

    /// As [`Outbox::submit`], but a new event is refused with `refuse_new` when given (a
    /// revoked device): an event the outbox already holds is still answered as a duplicate.
    pub async fn submit_unless(
        &self,
        draft: EventDraft,
        refuse_new: Option<SubmitError>,
    ) -> Result<Accepted, SubmitError> {
        let result = self.submit_inner(draft, refuse_new).await;
        match &result {
            Ok(a) if !a.duplicate => self.metrics.accepted.increment(1),
            Ok(_) => {}
            Err(e) => {
                self.metrics.refused(e.code()).increment(1);
                match e {
                    SubmitError::OutboxFull { rows, bytes, .. } => {
                        tracing::error!(rows, bytes, device_id = %self.addr.device_id, "Outbox full: refusing event.")
                    }
                    // Logged once, when the bridge learnt it is revoked (crate::cutoff).
                    SubmitError::Revoked(_) | SubmitError::Decommissioned(_) => {
                        tracing::debug!(code = e.code(), "Event refused.")
                    }
                    _ => tracing::warn!(error = %e, code = e.code(), "Event refused."),
                }
            }
        }
        result
    }

    async fn submit_inner(&self, draft: EventDraft, refuse_new: Option<SubmitError>) -> Result<Accepted, SubmitError> {
        let storage = |e: sqlx::Error| SubmitError::Storage(e.to_string());
        let mut counts = self.counts.lock().await;
        // What the POS sent, so a resubmit is told from another event under the same id.
        let content = draft.content_hash();
        if let Some(id) = &draft.event_id {
            let known: Option<(i64, Option<Vec<u8>>)> =
                sqlx::query_as("SELECT seq, content_hash FROM event_ids WHERE event_id = ?")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(storage)?;
            match known {
                // Ids remembered before content was (migration 0020) cannot be compared.
                Some((seq, held)) if held.as_deref().is_none_or(|h| h == content) => {
                    return Ok(Accepted { seq: seq as u64, event_id: id.clone(), duplicate: true });
                }
                Some((seq, _)) => return Err(SubmitError::EventIdReused { event_id: id.clone(), seq: seq as u64 }),
                None => {}
            }
        }
        if let Some(refusal) = refuse_new {
            return Err(refusal);
        }
        let now = now_ms();
        let seq = counts.last_seq + 1;
        let pos_chose_id = draft.event_id.is_some();
        let event_id = draft.event_id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let ev = draft.into_envelope(&self.addr, seq, event_id.clone(), now)?;
        let envelope = codec::encode(&ev);
        let size = envelope.len() as u64;
        if counts.rows + 1 > self.limits.max_rows || counts.bytes + size > self.limits.max_bytes {
            // Rows kept only for retention are safe to drop early rather than refuse a sale.
            self.prune_locked(&mut counts, self.watermark(), i64::MAX).await.map_err(storage)?;
            if counts.rows + 1 > self.limits.max_rows || counts.bytes + size > self.limits.max_bytes {
                return Err(SubmitError::OutboxFull {
                    rows: counts.rows,
                    bytes: counts.bytes,
                    max_rows: self.limits.max_rows,
                    max_bytes: self.limits.max_bytes,
                });
            }
        }
        let mut tx = crate::db::begin_write(&self.pool).await.map_err(storage)?;
        sqlx::query("UPDATE bridge_state SET last_seq = ? WHERE id = 1")
            .bind(seq as i64)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
        sqlx::query("INSERT INTO outbox (seq, event_id, kind, envelope, accepted_at_ms) VALUES (?, ?, ?, ?, ?)")
            .bind(seq as i64)
            .bind(&event_id)
            .bind(ev.body.kind())
            .bind(&envelope)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
        if pos_chose_id {
            sqlx::query("INSERT INTO event_ids (event_id, seq, accepted_at_ms, content_hash) VALUES (?, ?, ?, ?)")
                .bind(&event_id)
                .bind(seq as i64)
                .bind(now)
                .bind(&content[..])
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
        }
        tx.commit().await.map_err(storage)?;
        counts.last_seq = seq;
        counts.rows += 1;
        counts.bytes += size;
        self.publish_gauges(counts.rows, counts.bytes, seq);
        drop(counts);
        self.new_rows.notify_one();
        Ok(Accepted { seq, event_id, duplicate: false })
    }

    /// The next rows to publish, in seq order, skipping what the watermark already covers.
    pub async fn unsent(&self, limit: usize) -> Result<Vec<Pending>, sqlx::Error> {
        let rows: Vec<(i64, String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT seq, event_id, envelope, resends FROM outbox WHERE sent_at_ms IS NULL AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(self.watermark() as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, event_id, envelope, resends)| Pending {
                seq: seq as u64,
                event_id,
                envelope,
                resends: resends as u32,
            })
            .collect())
    }

    /// Marks the given seqs (ascending) as acked by JetStream. Only these: a row between them
    /// that was rewound while they were in flight must stay unsent.
    pub async fn mark_sent(&self, seqs: &[u64]) -> Result<(), sqlx::Error> {
        let now = now_ms();
        let mut tx = crate::db::begin_write(&self.pool).await?;
        for (from, to) in runs(seqs) {
            sqlx::query("UPDATE outbox SET sent_at_ms = ? WHERE seq BETWEEN ? AND ? AND sent_at_ms IS NULL")
                .bind(now)
                .bind(from as i64)
                .bind(to as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Marks rows sent but not covered by the watermark, with seq in `from..=to`, unsent again
    /// so the publisher resends them under a new msg id. Returns how many.
    pub async fn rewind(&self, from: u64, to: u64, reason: &'static str) -> Result<u64, sqlx::Error> {
        let Some((from, to)) = clamp(from, to, self.watermark(), self.last_seq().await) else {
            return Ok(0);
        };
        self.rewind_where("seq BETWEEN ? AND ?", &[from as i64, to as i64], reason).await
    }

    /// Rewinds the rows the watermark has not covered within the stall bound: `after_ms` since
    /// they were sent and since the watermark last moved, doubled per earlier resend of the row
    /// (up to 32x) so a broker that stays down is not flooded with copies.
    pub async fn rewind_stalled(&self, after_ms: i64, now_ms: i64) -> Result<u64, sqlx::Error> {
        let since = self.advanced_at_ms.load(Ordering::Acquire);
        let cond = "max(sent_at_ms, ?) + ? * (1 << min(resends, 5)) <= ?";
        self.rewind_where(cond, &[since, after_ms, now_ms], "stall").await
    }

    async fn rewind_where(&self, cond: &str, binds: &[i64], reason: &'static str) -> Result<u64, sqlx::Error> {
        let sql = format!(
            "UPDATE outbox SET sent_at_ms = NULL, resends = resends + 1
             WHERE sent_at_ms IS NOT NULL AND seq > ? AND {cond}"
        );
        let mut tx = crate::db::begin_write(&self.pool).await?;
        let mut q = sqlx::query(&sql).bind(self.watermark() as i64);
        for b in binds {
            q = q.bind(*b);
        }
        let n = q.execute(&mut *tx).await?.rows_affected();
        if n > 0 {
            sqlx::query("UPDATE bridge_state SET events_resent = events_resent + ? WHERE id = 1")
                .bind(n as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if n > 0 {
            self.metrics.resent(reason).increment(n);
            tracing::info!(rows = n, reason, device_id = %self.addr.device_id, "Resending events the watermark has not covered.");
            self.new_rows.notify_one();
        }
        Ok(n)
    }

    async fn last_seq(&self) -> u64 {
        self.counts.lock().await.last_seq
    }

    /// Takes a newer watermark from the broker: persists it and prunes what it covers. A
    /// watermark above the last seq this file assigned while it still holds rows the current
    /// watermark does not cover is refused: taking it would delete sales nobody has.
    pub async fn apply_watermark(&self, seq: u64) -> Result<Watermarked, sqlx::Error> {
        let mut counts = self.counts.lock().await;
        let current = self.watermark();
        if seq > current {
            if seq > counts.last_seq {
                let (uncovered,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox WHERE seq > ?")
                    .bind(current as i64)
                    .fetch_one(&self.pool)
                    .await?;
                if uncovered > 0 {
                    tracing::error!(
                        watermark = seq,
                        last_seq = counts.last_seq,
                        uncovered,
                        "Refused a watermark above every seq this bridge assigned while it holds events the \
                         broker has not confirmed: it did not come from the broker about these events."
                    );
                    self.refuse_watermark(WATERMARK_AHEAD);
                    return Ok(Watermarked::Refused);
                }
                // The broker has seen seqs this file never assigned and the file holds nothing
                // unconfirmed: it was lost or replaced. Continuing above the watermark keeps new
                // events from colliding.
                tracing::error!(
                    watermark = seq,
                    last_seq = counts.last_seq,
                    "Broker watermark is ahead of the local outbox; continuing seqs after it."
                );
                counts.last_seq = seq;
                sqlx::query("UPDATE bridge_state SET last_seq = ? WHERE id = 1")
                    .bind(seq as i64)
                    .execute(&self.pool)
                    .await?;
            }
            sqlx::query("UPDATE bridge_state SET watermark = ? WHERE id = 1 AND watermark < ?")
                .bind(seq as i64)
                .bind(seq as i64)
                .execute(&self.pool)
                .await?;
            self.watermark.store(seq, Ordering::Release);
            self.advanced_at_ms.store(now_ms(), Ordering::Release);
            self.metrics.watermark.set(seq as f64);
        }
        let cutoff = now_ms().saturating_sub(self.limits.retention_ms);
        self.prune_locked(&mut counts, self.watermark(), cutoff).await?;
        Ok(Watermarked::Taken)
    }

    /// Deletes rows with seq <= `watermark` accepted before `cutoff_ms`, and old event ids.
    async fn prune_locked(&self, counts: &mut Counts, watermark: u64, cutoff_ms: i64) -> Result<(), sqlx::Error> {
        let mut tx = crate::db::begin_write(&self.pool).await?;
        let (n, bytes): (i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(length(envelope)), 0) FROM outbox WHERE seq <= ? AND accepted_at_ms <= ?",
        )
        .bind(watermark as i64)
        .bind(cutoff_ms)
        .fetch_one(&mut *tx)
        .await?;
        if n > 0 {
            sqlx::query("DELETE FROM outbox WHERE seq <= ? AND accepted_at_ms <= ?")
                .bind(watermark as i64)
                .bind(cutoff_ms)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM event_ids WHERE accepted_at_ms < ?")
            .bind(now_ms().saturating_sub(self.limits.event_id_retention_ms))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        counts.rows = counts.rows.saturating_sub(n as u64);
        counts.bytes = counts.bytes.saturating_sub(bytes as u64);
        self.publish_gauges(counts.rows, counts.bytes, counts.last_seq);
        Ok(())
    }

    /// Counts a refused watermark, by `reason` ([`crate::metrics::WATERMARK_REFUSALS`]).
    pub fn refuse_watermark(&self, reason: &'static str) {
        self.metrics.watermark_refused(reason).increment(1);
        self.watermarks_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub async fn stats(&self) -> Result<OutboxStats, sqlx::Error> {
        let (rows, bytes, last_seq) = {
            let c = self.counts.lock().await;
            (c.rows, c.bytes, c.last_seq)
        };
        let watermark = self.watermark();
        let (unsent, oldest): (i64, Option<i64>) =
            sqlx::query_as("SELECT count(*), min(accepted_at_ms) FROM outbox WHERE sent_at_ms IS NULL AND seq > ?")
                .bind(watermark as i64)
                .fetch_one(&self.pool)
                .await?;
        let oldest_unsent_age_s = oldest.map_or(0, |t| (now_ms() - t).max(0) as u64 / 1000);
        self.metrics.oldest_unsent.set(oldest_unsent_age_s as f64);
        let resent: i64 =
            sqlx::query_scalar("SELECT events_resent FROM bridge_state WHERE id = 1").fetch_one(&self.pool).await?;
        Ok(OutboxStats {
            rows,
            bytes,
            unacked: last_seq.saturating_sub(watermark),
            unsent: unsent as u64,
            oldest_unsent_age_s,
            last_seq,
            watermark,
            resent: resent as u64,
            watermarks_refused: self.watermarks_refused.load(Ordering::Relaxed),
        })
    }

    fn publish_gauges(&self, rows: u64, bytes: u64, last_seq: u64) {
        self.metrics.outbox_rows.set(rows as f64);
        self.metrics.outbox_bytes.set(bytes as f64);
        self.metrics.last_seq.set(last_seq as f64);
        self.metrics.outbox_unacked.set(last_seq.saturating_sub(self.watermark()) as f64);
    }
}

/// The part of `from..=to` the bridge can resend ([`crate::events::resend`]): above its
/// watermark, at most its last seq.
fn clamp(from: u64, to: u64, watermark: u64, last_seq: u64) -> Option<(u64, u64)> {
    // A watermark at u64::MAX covers everything: nothing lies above it.
    let from = from.max(watermark.checked_add(1)?);
    let to = to.min(last_seq);
    (from <= to).then_some((from, to))
}

/// Ascending seqs grouped into contiguous inclusive runs.
fn runs(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some((_, to)) if *to + 1 == s => *to = s,
            _ => out.push((s, s)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillsync_schemas::event::OrderOpened;
    use tillsync_schemas::EventBody;

    #[test]
    fn a_request_is_clamped_to_rows_above_the_watermark() {
        assert_eq!(clamp(4, 9, 0, 20), Some((4, 9)));
        assert_eq!(clamp(4, 9, 6, 20), Some((7, 9)));
        assert_eq!(clamp(4, 9, 5, 7), Some((6, 7)));
        assert_eq!(clamp(4, 9, 9, 20), None);
        assert_eq!(clamp(1, u64::MAX, 3, 3), None);
        assert_eq!(clamp(1, u64::MAX, u64::MAX, u64::MAX), None);
    }

    #[test]
    fn seqs_group_into_runs() {
        assert_eq!(runs(&[3, 4, 5, 8, 10, 11]), vec![(3, 5), (8, 8), (10, 11)]);
        assert!(runs(&[]).is_empty());
    }

    fn opened(order: &str) -> EventDraft {
        EventDraft::new(EventBody::OrderOpened(OrderOpened {
            order_id: order.into(),
            currency: "EUR".into(),
            table: None,
        }))
    }

    async fn outbox(dir: &std::path::Path, max_rows: u64) -> Outbox {
        let pool = crate::db::open(&dir.join("edge.db"), false).await.unwrap();
        let limits = Limits { max_rows, max_bytes: 1 << 30, retention_ms: 0, event_id_retention_ms: 86_400_000 };
        Outbox::open(pool, DeviceAddr::new("acme", "s1", "till-1"), limits, Arc::new(Metrics::new())).await.unwrap()
    }

    #[tokio::test]
    async fn seqs_are_contiguous_and_survive_reopen_and_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let ob = outbox(dir.path(), 100).await;
        for i in 1..=3 {
            assert_eq!(ob.submit(opened(&format!("o-{i}"))).await.unwrap().seq, i);
        }
        let pending = ob.unsent(10).await.unwrap();
        assert_eq!(pending.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        ob.mark_sent(&[1, 2]).await.unwrap();
        assert_eq!(ob.unsent(10).await.unwrap()[0].seq, 3);
        ob.apply_watermark(2).await.unwrap();
        let s = ob.stats().await.unwrap();
        assert_eq!((s.rows, s.unacked, s.unsent, s.watermark), (1, 1, 1, 2));
        ob.pool().close().await;
        let ob = outbox(dir.path(), 100).await;
        assert_eq!(ob.submit(opened("o-4")).await.unwrap().seq, 4);
        assert_eq!(ob.watermark(), 2);
    }

    #[tokio::test]
    async fn pos_retries_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let ob = outbox(dir.path(), 100).await;
        let id = uuid::Uuid::now_v7().to_string();
        let mut d = opened("o-1");
        d.event_id = Some(id.clone());
        let first = ob.submit(d.clone()).await.unwrap();
        let again = ob.submit(d).await.unwrap();
        assert_eq!((first.seq, again.seq, again.duplicate), (1, 1, true));
        assert_eq!(ob.stats().await.unwrap().rows, 1);
    }

    #[tokio::test]
    async fn a_reused_event_id_with_other_content_is_refused_and_the_original_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ob = outbox(dir.path(), 100).await;
        let id = uuid::Uuid::now_v7().to_string();
        let with_id = |order: &str, at: Option<i64>| {
            let mut d = opened(order);
            d.event_id = Some(id.clone());
            d.occurred_at_ms = at;
            d
        };
        assert_eq!(ob.submit(with_id("o-1", Some(5))).await.unwrap().seq, 1);
        for other in [with_id("o-2", Some(5)), with_id("o-1", Some(6)), with_id("o-1", None)] {
            let err = ob.submit(other).await.unwrap_err();
            assert_eq!((err.code(), err.http_status()), ("event_id_reused", 409));
            assert!(err.to_string().contains("seq 1"), "{err}");
        }
        assert!(ob.submit(with_id("o-1", Some(5))).await.unwrap().duplicate, "the same content is a retry");
        assert_eq!(ob.stats().await.unwrap().rows, 1);
        let held = ob.unsent(10).await.unwrap();
        let ev: tillsync_schemas::EventEnvelope = codec::decode(&held[0].envelope).unwrap();
        assert_eq!(ev.body, opened("o-1").body, "the original is kept");
        assert!(ob.metrics.render().contains(r#"tillsync_edge_events_refused_total{code="event_id_reused"} 3"#));
        // An id remembered before contents were (migration 0020) still answers duplicate.
        sqlx::query("UPDATE event_ids SET content_hash = NULL").execute(ob.pool()).await.unwrap();
        assert!(ob.submit(with_id("o-2", None)).await.unwrap().duplicate);
    }

    #[tokio::test]
    async fn a_revoked_device_refuses_new_events_answers_retries_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let ob = outbox(dir.path(), 100).await;
        let mut held = opened("o-1");
        held.event_id = Some(uuid::Uuid::now_v7().to_string());
        ob.submit(held.clone()).await.unwrap();
        let revoked = || Some(SubmitError::Revoked("revoked".into()));
        let err = ob.submit_unless(opened("o-2"), revoked()).await.unwrap_err();
        assert_eq!((err.code(), err.http_status()), ("revoked", 403));
        assert!(ob.submit_unless(held, revoked()).await.unwrap().duplicate);
        assert_eq!(ob.stats().await.unwrap().rows, 1);
        assert!(ob.metrics.render().contains(r#"tillsync_edge_events_refused_total{code="revoked"} 1"#));
    }

    #[tokio::test]
    async fn full_outbox_refuses_with_a_code_until_the_watermark_frees_room() {
        let dir = tempfile::tempdir().unwrap();
        let ob = outbox(dir.path(), 2).await;
        ob.submit(opened("o-1")).await.unwrap();
        ob.submit(opened("o-2")).await.unwrap();
        let err = ob.submit(opened("o-3")).await.unwrap_err();
        assert_eq!((err.code(), err.http_status()), ("outbox_full", 507));
        assert!(ob.metrics.render().contains(r#"tillsync_edge_events_refused_total{code="outbox_full"} 1"#));
        ob.apply_watermark(1).await.unwrap();
        assert_eq!(ob.submit(opened("o-3")).await.unwrap().seq, 3);
    }

    #[tokio::test]
    async fn a_watermark_ahead_of_the_file_moves_seqs_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let ob = outbox(dir.path(), 10).await;
        ob.apply_watermark(40).await.unwrap();
        assert_eq!(ob.submit(opened("o-1")).await.unwrap().seq, 41);
    }

    #[tokio::test]
    async fn a_watermark_ahead_of_unconfirmed_rows_is_refused_and_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ob = outbox(dir.path(), 10).await;
        for i in 1..=3 {
            ob.submit(opened(&format!("o-{i}"))).await.unwrap();
        }
        assert_eq!(ob.apply_watermark(1).await.unwrap(), Watermarked::Taken);
        assert_eq!(ob.apply_watermark(1_500).await.unwrap(), Watermarked::Refused);
        assert_eq!(ob.watermark(), 1);
        assert_eq!(ob.unsent(10).await.unwrap().len(), 2, "seqs 2 and 3 are kept");
        assert_eq!(ob.submit(opened("o-4")).await.unwrap().seq, 4, "the counter did not jump");
        assert!(ob.metrics.render().contains(r#"tillsync_edge_watermarks_refused_total{reason="ahead_of_outbox"} 1"#));
        assert_eq!(ob.apply_watermark(3).await.unwrap(), Watermarked::Taken);
        assert_eq!(ob.unsent(10).await.unwrap().len(), 1, "only seq 4 is left");
    }

    #[tokio::test]
    async fn sent_rows_are_rewound_only_above_the_watermark_and_with_a_new_resend_count() {
        let dir = tempfile::tempdir().unwrap();
        let ob = outbox(dir.path(), 100).await;
        for i in 1..=5 {
            ob.submit(opened(&format!("o-{i}"))).await.unwrap();
        }
        ob.mark_sent(&[1, 2, 3, 4]).await.unwrap();
        ob.apply_watermark(1).await.unwrap();
        // A request for 1..=9: seq 1 is covered, 5 is still unsent, 2..=4 come back.
        assert_eq!(ob.rewind(1, 9, "request").await.unwrap(), 3);
        let again = ob.unsent(10).await.unwrap();
        let got: Vec<(u64, u32)> = again.iter().map(|p| (p.seq, p.resends)).collect();
        assert_eq!(got, vec![(2, 1), (3, 1), (4, 1), (5, 0)]);
        assert_eq!(ob.rewind(1, 9, "request").await.unwrap(), 0, "unsent rows are not rewound twice");
        assert_eq!(ob.stats().await.unwrap().resent, 3);
        assert!(ob.metrics.render().contains(r#"tillsync_edge_events_resent_total{reason="request"} 3"#));
    }

    #[tokio::test]
    async fn stalled_rows_are_rewound_after_the_bound_doubling_per_resend() {
        let dir = tempfile::tempdir().unwrap();
        let ob = outbox(dir.path(), 100).await;
        ob.submit(opened("o-1")).await.unwrap();
        ob.mark_sent(&[1]).await.unwrap();
        let sent = now_ms();
        assert_eq!(ob.rewind_stalled(1_000, sent + 500).await.unwrap(), 0, "within the bound");
        assert_eq!(ob.rewind_stalled(1_000, sent + 1_500).await.unwrap(), 1);
        ob.mark_sent(&[1]).await.unwrap();
        let sent = now_ms();
        assert_eq!(ob.rewind_stalled(1_000, sent + 1_500).await.unwrap(), 0, "second resend waits twice as long");
        assert_eq!(ob.rewind_stalled(1_000, sent + 2_500).await.unwrap(), 1);
        ob.mark_sent(&[1]).await.unwrap();
        ob.apply_watermark(1).await.unwrap();
        assert_eq!(ob.rewind_stalled(1_000, now_ms() + 60_000).await.unwrap(), 0, "covered rows stay");
    }
}
