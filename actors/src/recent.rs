//! The fast dedupe path: a bounded set of a device's recently committed event ids.
//!
//! Entries are two 64-bit hashes (of the id and of the content) rather than strings, so 100,000
//! resident device actors stay small. A hit answers "duplicate" only when both hashes match;
//! anything else goes to the Postgres ledger, which is the authority.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// Short content hash: the first 8 bytes of the full SHA-256 content hash.
pub fn short(hash: &[u8; 32]) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// A stable 64-bit hash of an event id (FNV-1a: the set lives only in memory, so stability
/// across builds is not needed, but determinism makes tests simple).
pub fn id_hash(event_id: &str) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    event_id.hash(&mut h);
    h.finish()
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[derive(Debug, Default)]
pub struct RecentIds {
    cap: usize,
    order: VecDeque<u64>,
    content: HashMap<u64, u64>,
}

impl RecentIds {
    pub fn new(cap: usize) -> Self {
        RecentIds { cap, order: VecDeque::new(), content: HashMap::new() }
    }

    /// Remembers a committed event, evicting the oldest past capacity.
    pub fn insert(&mut self, event_id: &str, content: u64) {
        let id = id_hash(event_id);
        if self.content.insert(id, content).is_none() {
            self.order.push_back(id);
            if self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.content.remove(&old);
                }
            }
        }
    }

    /// True when this exact event (id and content) was committed recently.
    pub fn is_duplicate(&self, event_id: &str, content: u64) -> bool {
        self.content.get(&id_hash(event_id)) == Some(&content)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_and_evicts() {
        let mut r = RecentIds::new(2);
        r.insert("a", 1);
        r.insert("b", 2);
        assert!(r.is_duplicate("a", 1));
        assert!(!r.is_duplicate("a", 9), "other content is not a fast duplicate");
        r.insert("c", 3);
        assert!(!r.is_duplicate("a", 1), "evicted");
        assert!(r.is_duplicate("c", 3));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn reinsert_does_not_grow() {
        let mut r = RecentIds::new(4);
        r.insert("a", 1);
        r.insert("a", 1);
        assert_eq!(r.len(), 1);
    }
}
