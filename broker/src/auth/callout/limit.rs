//! The callout's budget per source address: refused attempts and activation connects spend it,
//! live credentials never do (docs/security.md, "Limits").
//!
//! Fresh nkeys cost a stranger nothing, so without a bound every try buys a Postgres lookup,
//! an audit upsert and, through the activation user, the whole activation path. The budget is
//! per address as nats-server reports it (`client_info.host`), because that is the one thing a
//! stranger cannot mint per try. Once an address has spent it, its activation connects and its
//! attempts with keys tillsync does not know are refused as `rate_limited`. A live credential
//! from the same address still connects and spends nothing: a store's tills share one WAN
//! address behind NAT, one broken or stolen till there must not lock the others out, and a
//! reconnect storm after a restart is all live credentials.
//!
//! The decision ([`refusal`]) is pure; [`AddressBudget`] keeps the per-address state.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// The refusal reason of an attempt its address could not pay for.
pub const RATE_LIMITED: &str = "rate_limited";

/// What a connection attempt turned out to be, before its address pays for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A live credential: goes on, spends nothing. The callout lets one in without asking;
    /// the tests keep the rule.
    #[cfg(test)]
    Known,
    /// A revoked credential. It spends (a revoked till retrying all night is no reason to give
    /// strangers at its address more tries) but is answered `revoked` whatever the budget: the
    /// key is known, the lookup that found it is done, and its refusals are already one audit
    /// row per key a minute.
    Revoked,
    /// The activation user with a code-shaped password: spends; goes on while it can.
    Activation,
    /// Refused for this reason whatever the budget (no proven key, a bad signature, a password
    /// that is no code, an unknown key); spends, and is `rate_limited` once it cannot.
    Refused(&'static str),
}

/// The reason to refuse `attempt` with, or `None` to go on with it. `spend` takes one attempt
/// from the address's budget and says whether there was one; it is called only for attempts
/// that cost.
pub fn refusal(attempt: Attempt, spend: impl FnOnce() -> bool) -> Option<&'static str> {
    match attempt {
        #[cfg(test)]
        Attempt::Known => None,
        Attempt::Revoked => {
            spend();
            Some("revoked")
        }
        Attempt::Activation => (!spend()).then_some(RATE_LIMITED),
        Attempt::Refused(reason) => Some(if spend() { reason } else { RATE_LIMITED }),
    }
}

type Limiter<C> = RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Attempts each address may make per minute: a burst of that many, then one every `60/n` s
/// (governor's GCRA, one state per address in a `DashMap`).
///
/// Memory: a million addresses trying once must not leave a million entries.
/// [`Self::forget_refilled`] (every second, the callout's upkeep task) drops each address whose
/// budget is full again, which for one try is `2 x 60/n` s after it (governor's
/// `retain_recent`), and gives the room back (`shrink_to_fit`). So the map holds only the addresses that tried within about the last
/// minute, which the callout's own throughput (a bounded number of decisions in flight, each
/// waiting on Postgres) bounds, not the number of addresses there are. An address over budget
/// adds nothing: a refused check does not change its state. `governor` was chosen over a
/// hand-written bucket in a `DashMap` for exactly this: the eviction test ("indistinguishable
/// from a fresh address") comes with it.
pub struct AddressBudget<C: Clock = DefaultClock> {
    limiter: Option<Limiter<C>>,
}

impl AddressBudget {
    /// `per_minute` attempts per address; 0: unlimited.
    pub fn new(per_minute: u32) -> AddressBudget {
        AddressBudget::with_clock(per_minute, DefaultClock::default())
    }
}

impl<C: Clock> AddressBudget<C> {
    pub fn with_clock(per_minute: u32, clock: C) -> AddressBudget<C> {
        let limiter = NonZeroU32::new(per_minute).map(|n| RateLimiter::dashmap_with_clock(Quota::per_minute(n), clock));
        AddressBudget { limiter }
    }

    /// Takes one attempt from `host`'s budget: false when it had none left (never when off).
    pub fn spend(&self, host: &str) -> bool {
        self.limiter.as_ref().is_none_or(|l| l.check_key(&address(host)).is_ok())
    }

    /// Drops the addresses whose budget is full again and frees their room.
    pub fn forget_refilled(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Addresses currently remembered.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// The key an address is budgeted under. An IPv6 client gets its /64 (a host is commonly handed
/// a whole /64 and can pick any address in it per try); an IPv4-mapped one its IPv4 address. A
/// host nats-server did not report as an address shares one budget with every other such.
pub fn address(host: &str) -> IpAddr {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        },
        Ok(v4) => v4,
        Err(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn never() -> bool {
        panic!("a live credential must not spend the budget")
    }

    #[test]
    fn live_credentials_never_pay_and_everything_else_does() {
        assert_eq!(refusal(Attempt::Known, never), None);
        assert_eq!(refusal(Attempt::Activation, || true), None);
        assert_eq!(refusal(Attempt::Activation, || false), Some(RATE_LIMITED));
        assert_eq!(refusal(Attempt::Refused("unknown_key"), || true), Some("unknown_key"));
        assert_eq!(refusal(Attempt::Refused("unknown_key"), || false), Some(RATE_LIMITED));
        assert_eq!(refusal(Attempt::Refused("bad_signature"), || false), Some(RATE_LIMITED));
        let mut spent = false;
        assert_eq!(refusal(Attempt::Revoked, || std::mem::replace(&mut spent, true)), Some("revoked"));
        assert!(spent, "a revoked key spends");
        assert_eq!(refusal(Attempt::Revoked, || false), Some("revoked"), "known, so said as it is");
    }

    #[test]
    fn an_address_over_its_budget_is_refused_until_it_refills_and_others_are_not() {
        let clock = FakeRelativeClock::default();
        let budget = AddressBudget::with_clock(5, clock.clone());
        let try_from = |host: &str| refusal(Attempt::Refused("unknown_key"), || budget.spend(host));
        for _ in 0..5 {
            assert_eq!(try_from("203.0.113.7"), Some("unknown_key"));
        }
        assert_eq!(try_from("203.0.113.7"), Some(RATE_LIMITED));
        assert_eq!(refusal(Attempt::Activation, || budget.spend("203.0.113.7")), Some(RATE_LIMITED));
        assert_eq!(refusal(Attempt::Known, || budget.spend("203.0.113.7")), None, "its tills still get in");
        assert_eq!(try_from("203.0.113.8"), Some("unknown_key"), "another address has its own budget");
        assert_eq!(try_from("::ffff:203.0.113.7"), Some(RATE_LIMITED), "IPv4-mapped is the same address");
        clock.advance(Duration::from_secs(12));
        assert_eq!(try_from("203.0.113.7"), Some("unknown_key"), "one try back every 60/5 s");
        assert_eq!(try_from("203.0.113.7"), Some(RATE_LIMITED));
    }

    #[test]
    fn an_ipv6_host_is_budgeted_by_its_64() {
        let clock = FakeRelativeClock::default();
        let budget = AddressBudget::with_clock(2, clock);
        assert!(budget.spend("2001:db8:1:2::1"));
        assert!(budget.spend("2001:db8:1:2:ffff::9"));
        assert!(!budget.spend("2001:db8:1:2:abcd::1"), "same /64");
        assert!(budget.spend("2001:db8:1:3::1"), "next /64");
        assert_eq!(address("not an address"), address("neither"));
    }

    #[test]
    fn off_never_refuses_and_remembers_nothing() {
        let budget = AddressBudget::new(0);
        assert!((0..1_000).all(|_| budget.spend("203.0.113.7")));
        assert_eq!(budget.tracked(), 0);
    }

    /// A million addresses trying once each (a tenth of them here): the map forgets each a few
    /// seconds after its try, so what it holds follows the rate of tries, not their number.
    #[test]
    fn addresses_that_tried_once_are_forgotten_once_refilled() {
        let clock = FakeRelativeClock::default();
        let budget = AddressBudget::with_clock(60, clock.clone());
        for second in 0..10u32 {
            for i in 0..10_000u32 {
                let n = second * 10_000 + i;
                assert!(budget.spend(&std::net::Ipv4Addr::from(0x0a00_0000 + n).to_string()));
            }
            clock.advance(Duration::from_secs(1));
            budget.forget_refilled();
            assert_eq!(budget.tracked(), 10_000, "only the last second's addresses held after second {second}");
        }
        clock.advance(Duration::from_secs(3));
        budget.forget_refilled();
        assert_eq!(budget.tracked(), 0);
        // One over budget stays remembered until refilled, and only that long.
        while budget.spend("203.0.113.7") {}
        clock.advance(Duration::from_secs(30));
        budget.forget_refilled();
        assert_eq!(budget.tracked(), 1);
        clock.advance(Duration::from_secs(62));
        budget.forget_refilled();
        assert_eq!(budget.tracked(), 0);
    }
}
