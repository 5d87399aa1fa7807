//! Lanes: stores split over a few workers that commit concurrently, for `tillsync replay`
//! (`ops/src/replay/lanes.rs`), which reads one stream in order and has no partitions.
//!
//! One worker processing one batch at a time leaves the machine idle while it waits on
//! Postgres, and one WAL flush per transaction caps it. Several lanes keep several
//! transactions in flight. A store always maps to the same lane, so the order of one device's
//! events is kept, and two lanes never touch the same store's read-model rows, so they do not
//! contend for row locks.
//!
//! The live broker does not route by lane: stores are split into partitions, each with its
//! own consumers ([`crate::partitions`]), which gives the same guarantees.
//! `TILLSYNC_INGEST_LANES` and `TILLSYNC_MESSAGE_LANES` only bound how many of the partitions'
//! batches commit at once ([`crate::Slots`]).

/// The part of a subject that names its store: `tenant.store` of
/// `tillsync.<family>.<tenant>.<store>.<last>`; the whole subject when it has fewer tokens.
pub fn store_key(subject: &str) -> &str {
    let mut dots = subject.match_indices('.').map(|(i, _)| i);
    match (dots.next(), dots.next(), dots.nth(1)) {
        (Some(_), Some(family_end), Some(store_end)) => &subject[family_end + 1..store_end],
        _ => subject,
    }
}

/// The lane (of `lanes`) that the messages on `subject` belong to: the store's partition among
/// `lanes` ([`tillsync_schemas::partition::of`], a stable hash), so a store's lane is the same
/// in every process and every build.
pub fn lane_of(subject: &str, lanes: usize) -> usize {
    if lanes <= 1 {
        return 0;
    }
    let key = store_key(subject);
    let (tenant, store) = key.split_once('.').unwrap_or((key, ""));
    usize::from(tillsync_schemas::partition::of(tenant, store, lanes.min(usize::from(u16::MAX)) as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_key_ignores_family_and_device() {
        assert_eq!(store_key("tillsync.ev.acme.s1.till-1"), "acme.s1");
        assert_eq!(store_key("tillsync.cmdack.acme.s1.till-2"), "acme.s1");
        assert_eq!(store_key("tillsync.intake.acme.s1._store"), "acme.s1");
        assert_eq!(store_key("garbage"), "garbage");
        assert_eq!(store_key("a.b.c"), "a.b.c");
    }

    #[test]
    fn a_store_keeps_its_lane_and_stores_spread() {
        let a = lane_of("tillsync.ev.acme.s1.till-1", 8);
        assert_eq!(a, lane_of("tillsync.ev.acme.s1.till-2", 8));
        assert_eq!(a, lane_of("tillsync.cmdack.acme.s1.till-9", 8));
        assert_eq!(lane_of("tillsync.ev.acme.s1.till-1", 1), 0);
        let used: std::collections::HashSet<usize> =
            (0..200).map(|s| lane_of(&format!("tillsync.ev.acme.s{s}.d"), 8)).collect();
        assert_eq!(used.len(), 8, "200 stores should use all 8 lanes");
        assert!((0..200).all(|s| lane_of(&format!("tillsync.ev.t.s{s}.d"), 8) < 8));
    }
}
