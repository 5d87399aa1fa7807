//! Partitions: the broker's work is split by store into a fixed number of partitions, each
//! consumed by one broker instance at a time.
//!
//! The streams add the partition as a sixth subject token when they store a message (a stream
//! subject transform, `{{partition(P,1,2)}}` over tenant and store), so a durable consumer per
//! partition filters on it. [`of`] computes the same number outside NATS: it is the server's
//! function, FNV-1a (32-bit) of the tenant and store tokens written one after the other, modulo P.
//! A test against a real nats-server keeps the two in step.

use std::hash::Hasher as _;

/// Partitions a deployment runs with unless configured otherwise.
pub const DEFAULT_PARTITIONS: u16 = 16;
/// Most partitions a deployment may have (each is a durable consumer per stream).
pub const MAX_PARTITIONS: u16 = 1024;

/// The partition (of `partitions`) that a store's messages belong to.
pub fn of(tenant: &str, store: &str, partitions: u16) -> u16 {
    let mut h = hash32::FnvHasher::default();
    h.write(tenant.as_bytes());
    h.write(store.as_bytes());
    (h.finish() % u64::from(partitions.max(1))) as u16
}

/// The destination of the stream transform that appends the partition token to
/// `tillsync.<family>.<tenant>.<store>.<last>`.
pub fn transform_destination(family_token: &str, partitions: u16) -> String {
    format!(
        "{}.{family_token}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}.{{{{partition({partitions},1,2)}}}}",
        crate::subject::ROOT
    )
}

/// The subject a partitioned stream stores a message published on `published` under.
pub fn stored_subject(published: &str, tenant: &str, store: &str, partitions: u16) -> String {
    format!("{published}.{}", of(tenant, store, partitions))
}

/// The subject a message was published on, from the subject a partitioned stream stored it
/// under: without the sixth, numeric token the transform appended. Publishers never see that
/// token, so whatever is shown to an operator or published again uses this. Only the shape is
/// looked at (six tokens, the root, a number last), so a subject the broker refuses for one of
/// its other tokens comes back as its publisher sent it too; any other subject is returned as
/// it is.
pub fn published_subject(stored: &str) -> &str {
    let Some((head, last)) = stored.rsplit_once('.') else { return stored };
    let partition = !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) && last.parse::<u16>().is_ok();
    let five_tokens = head.split('.').count() == 5 && head.split('.').next() == Some(crate::subject::ROOT);
    if partition && five_tokens {
        head
    } else {
        stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_server_for_known_stores() {
        // Stored subjects read back from nats-server 2.15.1 with P = 16.
        assert_eq!(of("acme", "s1", 16), 15);
        assert_eq!(of("acme", "s2", 16), 2);
        assert_eq!(of("acme", "s3", 16), 5);
        assert_eq!(of("t-1", "store-7", 16), 6);
    }

    #[test]
    fn stays_in_range_and_spreads() {
        let used: std::collections::HashSet<u16> = (0..400).map(|s| of("acme", &format!("s{s}"), 16)).collect();
        assert_eq!(used.len(), 16);
        assert_eq!(of("acme", "s1", 1), 0);
    }

    #[test]
    fn the_published_subject_drops_only_the_partition_token() {
        let stored = stored_subject("tillsync.ev.acme.s1.till-1", "acme", "s1", 16);
        assert_eq!(published_subject(&stored), "tillsync.ev.acme.s1.till-1");
        // Tokens the broker refuses stay as the publisher sent them.
        assert_eq!(published_subject("tillsync.ev.acme.s1.till~1.4"), "tillsync.ev.acme.s1.till~1");
        assert_eq!(published_subject("tillsync.ev._store.S.till-bad.4"), "tillsync.ev._store.S.till-bad");
        for unchanged in [
            "tillsync.ev.acme.s1.till-1",
            "tillsync.ev.acme.s1.12",
            "tillsync.ev.acme.s1.till-1.x",
            "tillsync.ev.acme.s1.till-1.+4",
            "tillsync.ev.acme.s1.till-1.70000",
            "tillsync.ev.acme.s1.till-1.",
            "other.ev.acme.s1.till-1.4",
            "tillsync.ev.acme.s1.d.x.4",
            "tillsync",
            "",
        ] {
            assert_eq!(published_subject(unchanged), unchanged);
        }
    }

    #[test]
    fn transform_names_every_token() {
        assert_eq!(
            transform_destination("ev", 16),
            "tillsync.ev.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}.{{partition(16,1,2)}}"
        );
    }
}
