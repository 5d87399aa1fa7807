//! Per-device sequence tracking: the ack watermark (highest contiguous committed seq) and gaps.

use std::collections::BTreeSet;

/// A run of seqs that were skipped: `from..=to` had not arrived when `to + 1` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub from: u64,
    pub to: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqTracker {
    /// Every seq in 1..=watermark is committed.
    pub watermark: u64,
    /// Highest seq committed.
    pub max_seq: u64,
    /// Committed seqs above the watermark (there is a gap below each).
    above: BTreeSet<u64>,
}

impl SeqTracker {
    /// Rebuilds from what Postgres holds: the watermark and the committed seqs above it.
    pub fn restore(watermark: u64, above: impl IntoIterator<Item = u64>) -> Self {
        let mut t = SeqTracker { watermark, max_seq: watermark, above: BTreeSet::new() };
        for s in above {
            t.commit(s);
        }
        t
    }

    /// The gap a new seq would open, given `max_seen` (the highest seq committed or already
    /// planned in the current batch). Does not change state.
    pub fn gap_before(max_seen: u64, seq: u64) -> Option<Gap> {
        (seq > max_seen + 1).then(|| Gap { from: max_seen + 1, to: seq - 1 })
    }

    /// Records a committed seq; returns the new watermark when it advanced.
    pub fn commit(&mut self, seq: u64) -> Option<u64> {
        self.max_seq = self.max_seq.max(seq);
        if seq <= self.watermark {
            return None;
        }
        self.above.insert(seq);
        let before = self.watermark;
        while self.above.remove(&(self.watermark + 1)) {
            self.watermark += 1;
        }
        (self.watermark > before).then_some(self.watermark)
    }

    /// Watermark after committing `seqs`, without changing state.
    pub fn projected(&self, seqs: impl IntoIterator<Item = u64>) -> u64 {
        let mut t = self.clone();
        for s in seqs {
            t.commit(s);
        }
        t.watermark
    }

    /// Seqs committed above the watermark (kept small: one entry per out-of-order seq).
    pub fn pending_above(&self) -> usize {
        self.above.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_advances() {
        let mut t = SeqTracker::default();
        assert_eq!(t.commit(1), Some(1));
        assert_eq!(t.commit(2), Some(2));
        assert_eq!(t.commit(2), None);
    }

    #[test]
    fn gap_holds_watermark_until_filled() {
        let mut t = SeqTracker::default();
        t.commit(1);
        assert_eq!(SeqTracker::gap_before(t.max_seq, 4), Some(Gap { from: 2, to: 3 }));
        assert_eq!(t.commit(4), None);
        assert_eq!(t.watermark, 1);
        assert_eq!(t.commit(3), None);
        assert_eq!(t.commit(2), Some(4));
        assert_eq!(t.pending_above(), 0);
    }

    #[test]
    fn restore_and_project() {
        let t = SeqTracker::restore(5, [7, 8]);
        assert_eq!(t.watermark, 5);
        assert_eq!(t.max_seq, 8);
        assert_eq!(t.projected([6]), 8);
        assert_eq!(SeqTracker::gap_before(8, 9), None);
    }
}
