//! Which partitions an instance should take and give up: a pure decision over what it sees of
//! the lease bucket, so every instance reaches the same answer without talking to the others.
//!
//! The live instances, sorted by id, share the partitions round robin: partition `p` belongs
//! to `live[p % n]`, so each holds `P/n` or one more. An instance gives up the partitions that
//! belong to another live instance and takes free ones (no lease, or a lease not renewed
//! within the TTL) that belong to it. A partition left free longer than the TTL (its owner-to-be
//! is slow or failing) may be taken by any instance, so none stays unowned for long.

use std::collections::BTreeSet;
use std::time::Duration;

/// What an instance sees of one partition's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// Held by this instance id and renewed within the TTL.
    Held(String),
    /// No lease, or one not renewed within the TTL, for this long.
    Free(Duration),
}

/// What an instance sees of the bucket at one moment.
#[derive(Debug, Clone)]
pub struct View {
    /// Instances whose membership was renewed within the TTL, this one included.
    pub live: Vec<String>,
    /// One entry per partition.
    pub leases: Vec<Lease>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub acquire: Vec<u16>,
    pub release: Vec<u16>,
}

/// The live instance partition `p` belongs to.
pub fn owner_of(live: &[String], p: u16) -> Option<&str> {
    if live.is_empty() {
        return None;
    }
    Some(live[usize::from(p) % live.len()].as_str())
}

/// What `me`, holding `held`, should do now.
pub fn plan(me: &str, view: &View, held: &BTreeSet<u16>, ttl: Duration) -> Plan {
    let mut live = view.live.clone();
    if !live.iter().any(|m| m == me) {
        live.push(me.to_string());
    }
    live.sort();
    live.dedup();
    let mut out = Plan::default();
    for (p, lease) in view.leases.iter().enumerate() {
        let p = p as u16;
        let mine = owner_of(&live, p) == Some(me);
        match lease {
            Lease::Held(holder) if holder == me && held.contains(&p) => {
                if !mine {
                    out.release.push(p);
                }
            }
            // A lease under this instance's id that it does not run: an earlier process with the
            // same TILLSYNC_INSTANCE_ID. Taking it back at once is safe: the epoch fences it.
            Lease::Held(holder) if holder == me => {
                if mine {
                    out.acquire.push(p);
                }
            }
            Lease::Held(_) => {}
            Lease::Free(for_how_long) => {
                if mine || *for_how_long >= ttl {
                    out.acquire.push(p);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(5);

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn free(n: usize) -> Vec<Lease> {
        vec![Lease::Free(Duration::ZERO); n]
    }

    #[test]
    fn a_lone_instance_takes_everything() {
        let view = View { live: ids(&["a"]), leases: free(4) };
        assert_eq!(plan("a", &view, &BTreeSet::new(), TTL).acquire, vec![0, 1, 2, 3]);
    }

    #[test]
    fn instances_share_round_robin_and_converge() {
        // Simulate three instances acting on the same bucket until nothing changes.
        let me = ["b", "a", "c"];
        let mut leases = free(16);
        let mut held: Vec<BTreeSet<u16>> = vec![BTreeSet::new(); 3];
        for _ in 0..5 {
            for (i, m) in me.iter().enumerate() {
                let view = View { live: ids(&me), leases: leases.clone() };
                let p = plan(m, &view, &held[i], TTL);
                for r in p.release {
                    held[i].remove(&r);
                    leases[r as usize] = Lease::Free(Duration::ZERO);
                }
                for a in p.acquire {
                    held[i].insert(a);
                    leases[a as usize] = Lease::Held(m.to_string());
                }
            }
        }
        let sizes: Vec<usize> = held.iter().map(|h| h.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 16);
        assert!(sizes.iter().all(|s| (5..=6).contains(s)), "{sizes:?}");
        // Nobody holds what another holds.
        assert!(held[0].is_disjoint(&held[1]) && held[1].is_disjoint(&held[2]) && held[0].is_disjoint(&held[2]));
    }

    #[test]
    fn a_joining_instance_gets_its_share_handed_over() {
        let leases: Vec<Lease> = (0..4).map(|_| Lease::Held("a".into())).collect();
        let held_a: BTreeSet<u16> = (0..4).collect();
        let view = View { live: ids(&["a", "b"]), leases };
        let pa = plan("a", &view, &held_a, TTL);
        assert_eq!(pa.release, vec![1, 3], "a gives up b's share");
        let pb = plan("b", &view, &BTreeSet::new(), TTL);
        assert!(pb.acquire.is_empty(), "b waits until a lets go");
    }

    #[test]
    fn expired_leases_of_a_dead_instance_are_taken_by_the_survivors() {
        let mut leases: Vec<Lease> = (0..4).map(|_| Lease::Held("a".into())).collect();
        leases[1] = Lease::Free(Duration::from_secs(6));
        leases[3] = Lease::Free(Duration::from_secs(6));
        // b died: only a and c are live; b's partitions 1 and 3 expired.
        let view = View { live: ids(&["a", "c"]), leases };
        let pc = plan("c", &view, &BTreeSet::new(), TTL);
        assert_eq!(pc.acquire, vec![1, 3]);
    }

    #[test]
    fn a_partition_free_too_long_is_taken_by_anyone() {
        let view = View { live: ids(&["a", "b"]), leases: vec![Lease::Free(Duration::from_secs(1)), Lease::Free(TTL)] };
        // Partition 1 belongs to b, but has been free a whole TTL.
        assert_eq!(plan("a", &view, &BTreeSet::new(), TTL).acquire, vec![0, 1]);
    }

    #[test]
    fn a_restarted_instance_takes_back_its_own_leases_at_once() {
        let view = View { live: ids(&["a"]), leases: vec![Lease::Held("a".into()), Lease::Held("a".into())] };
        assert_eq!(plan("a", &view, &BTreeSet::from([0]), TTL).acquire, vec![1]);
    }
}
