//! Counters the actor system keeps; the broker exports them as metrics (this crate does not
//! know metric names).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct ActorStats {
    pub activations: AtomicU64,
    pub restarts: AtomicU64,
    pub passivations: AtomicU64,
}

/// A point-in-time copy of [`ActorStats`] plus the resident count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub resident: u64,
    pub activations: u64,
    pub restarts: u64,
    pub passivations: u64,
}

impl ActorStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self, resident: usize) -> StatsSnapshot {
        StatsSnapshot {
            resident: resident as u64,
            activations: self.activations.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            passivations: self.passivations.load(Ordering::Relaxed),
        }
    }
}
