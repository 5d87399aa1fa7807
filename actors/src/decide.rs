//! What a device actor decides about each event: pure functions, unit-tested without servers.
//!
//! The broker calls them in order: [`fast_path`] in the actor (recent ids in memory), then
//! [`ledger`] against the Postgres ledger row, then [`is_stale`] against the read-model row the
//! event touches. Invalid events never reach an actor: decoding rejects them with a reason.

use tillsync_schemas::Reason;

use crate::recent::{short, RecentIds};
use crate::seqs::{Gap, SeqTracker};

/// The verdict on one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Apply it.
    New,
    /// Seen before with the same content: ack, no effect.
    Duplicate(DupLayer),
    /// Same event id, other content: record both hashes, do not apply.
    Conflict,
    /// Older (by device seq) than every fact it carries: record, do not apply.
    Stale,
    /// Refused at decode with a coded reason: quarantine.
    Invalid(Reason),
}

/// Which dedupe layer recognised a duplicate (JetStream's own layer drops publish retries
/// before the broker sees them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DupLayer {
    Memory,
    Ledger,
}

impl DupLayer {
    pub fn as_str(self) -> &'static str {
        match self {
            DupLayer::Memory => "memory",
            DupLayer::Ledger => "ledger",
        }
    }
}

/// One event as the actor sees it: enough to dedupe and order, not the payload.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub event_id: String,
    pub seq: u64,
    pub hash: [u8; 32],
}

/// The actor's answer for one device's share of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceVerdicts {
    /// Per incoming event, in the order given: `None` to go on to the ledger, or a fast duplicate.
    pub fast: Vec<Option<Decision>>,
    /// Gaps the candidates open, to record with the batch.
    pub gaps: Vec<Gap>,
    /// The watermark once every candidate commits.
    pub projected_watermark: u64,
    /// The watermark now, before this batch.
    pub watermark: u64,
}

/// Fast path: an exact repeat of a recently committed event.
pub fn fast_path(recent: &RecentIds, ev: &Incoming) -> Option<Decision> {
    recent.is_duplicate(&ev.event_id, short(&ev.hash)).then_some(Decision::Duplicate(DupLayer::Memory))
}

/// Decides a device's events (in stream order): fast duplicates, and the gaps the rest open.
pub fn decide_batch(recent: &RecentIds, seqs: &SeqTracker, batch: &[Incoming]) -> DeviceVerdicts {
    let mut max_seen = seqs.max_seq;
    let mut gaps = Vec::new();
    let mut candidates = Vec::new();
    let fast = batch
        .iter()
        .map(|ev| {
            let verdict = fast_path(recent, ev);
            if verdict.is_none() {
                gaps.extend(SeqTracker::gap_before(max_seen, ev.seq));
                max_seen = max_seen.max(ev.seq);
                candidates.push(ev.seq);
            }
            verdict
        })
        .collect();
    DeviceVerdicts { fast, gaps, projected_watermark: seqs.projected(candidates), watermark: seqs.watermark }
}

/// Holds a decided batch's candidates (every event `decide_batch` did not call a fast
/// duplicate) as committed: the caller commits them next and says so only if it could not
/// ([`crate::DeviceMsg::Forget`]). Every candidate counts, whatever the ledger then says
/// (applied, duplicate, conflict, stale): its seq is durably accounted for either way. Leaves
/// the watermark at `v.projected_watermark`.
pub fn hold(recent: &mut RecentIds, seqs: &mut SeqTracker, batch: &[Incoming], v: &DeviceVerdicts) {
    for (ev, fast) in batch.iter().zip(&v.fast) {
        if fast.is_none() {
            recent.insert(&ev.event_id, short(&ev.hash));
            seqs.commit(ev.seq);
        }
    }
}

/// The ledger is the authority: `existing` is the content hash already stored for this
/// `(device_id, event_id)`, if any.
pub fn ledger(existing: Option<&[u8]>, incoming: &[u8; 32]) -> Decision {
    match existing {
        None => Decision::New,
        Some(h) if h == incoming => Decision::Duplicate(DupLayer::Ledger),
        Some(_) => Decision::Conflict,
    }
}

/// The device is authoritative, and its seq orders its own events. Staleness is per fact, not
/// per row: `fact` is who last wrote one fact and at which seq, a whole row (a payment, a
/// receipt, an availability override) or one field group of an order or a line (the broker's
/// `ingest/plan.rs` keeps a seq per group). The fact is stale for this event when the same
/// device wrote it at the same or a later seq; one last written by another device is not
/// comparable by seq, so the event applies. An event is stale only when every fact it carries is.
pub fn is_stale(fact: Option<(&str, u64)>, device_id: &str, seq: u64) -> bool {
    matches!(fact, Some((d, s)) if d == device_id && s >= seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, seq: u64, h: u8) -> Incoming {
        Incoming { event_id: id.into(), seq, hash: [h; 32] }
    }

    #[test]
    fn fast_duplicates_and_gaps() {
        let mut recent = RecentIds::new(8);
        recent.insert("a", short(&[1; 32]));
        let seqs = SeqTracker::restore(1, []);
        let v = decide_batch(&recent, &seqs, &[ev("a", 1, 1), ev("b", 2, 2), ev("d", 5, 4)]);
        assert_eq!(v.fast, vec![Some(Decision::Duplicate(DupLayer::Memory)), None, None]);
        assert_eq!(v.gaps, vec![Gap { from: 3, to: 4 }]);
        assert_eq!((v.watermark, v.projected_watermark), (1, 2));
    }

    #[test]
    fn holding_a_decided_batch_takes_its_candidates_as_committed() {
        let mut recent = RecentIds::new(8);
        recent.insert("a", short(&[1; 32]));
        let mut seqs = SeqTracker::restore(1, []);
        let batch = [ev("a", 1, 1), ev("b", 2, 2), ev("d", 5, 4)];
        let v = decide_batch(&recent, &seqs, &batch);
        hold(&mut recent, &mut seqs, &batch, &v);
        assert_eq!(seqs.watermark, v.projected_watermark);
        assert_eq!(seqs.max_seq, 5);
        // The same batch again is all fast duplicates, opening no gap.
        let again = decide_batch(&recent, &seqs, &batch);
        assert!(again.fast.iter().all(|f| *f == Some(Decision::Duplicate(DupLayer::Memory))));
        assert!(again.gaps.is_empty());
        assert!(!recent.is_duplicate("b", 9), "other content under a held id goes to the ledger");
    }

    #[test]
    fn same_id_other_content_is_not_a_fast_duplicate() {
        let mut recent = RecentIds::new(8);
        recent.insert("a", short(&[1; 32]));
        assert_eq!(fast_path(&recent, &ev("a", 1, 2)), None);
    }

    #[test]
    fn ledger_decisions() {
        assert_eq!(ledger(None, &[1; 32]), Decision::New);
        assert_eq!(ledger(Some(&[1; 32]), &[1; 32]), Decision::Duplicate(DupLayer::Ledger));
        assert_eq!(ledger(Some(&[2; 32]), &[1; 32]), Decision::Conflict);
    }

    #[test]
    fn staleness() {
        assert!(!is_stale(None, "d1", 5));
        assert!(is_stale(Some(("d1", 7)), "d1", 5));
        assert!(is_stale(Some(("d1", 5)), "d1", 5));
        assert!(!is_stale(Some(("d1", 4)), "d1", 5));
        assert!(!is_stale(Some(("d2", 9)), "d1", 5), "other device's seq is not comparable");
    }
}
