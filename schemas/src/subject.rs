//! The subject hierarchy. Every subject is `tillsync.<family>.<tenant>.<store>.<device>`, so a
//! NATS account can confine a device to `tillsync.*.<tenant>.<store>.<device>` with plain
//! permissions. No other crate formats a subject by hand.

use crate::error::{Reason, WireError};
use crate::ids::check_id;

/// Root token of every tillsync subject.
pub const ROOT: &str = "tillsync";
/// Device token of a store-wide command on the intake subject.
pub const STORE_WIDE: &str = "_store";
/// Last token of a cancel request on the intake subject.
pub const CANCEL: &str = "_cancel";
/// Last token of an approver's decision on the intake subject.
pub const APPROVE: &str = "_approve";

/// What travels on a subject family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Events up, device to broker (JetStream).
    Events,
    /// Heartbeats up, device to broker.
    Heartbeats,
    /// Commands down, broker to device (JetStream).
    Commands,
    /// Command acks up, device to broker.
    CommandAcks,
    /// Ack watermark down: highest contiguous event seq committed for the device.
    Watermarks,
    /// Command intake from the portal; the device token may be [`STORE_WIDE`].
    Intake,
    /// Command status feedback to the portal; the last token is the command id.
    Status,
    /// Resend requests down, broker to device (core NATS): "send this seq range again".
    Resend,
    /// Configuration deltas down, one per store version (JetStream); the last token is `_store`.
    Config,
    /// The latest configuration snapshot of a store (JetStream, one per store).
    ConfigSnapshot,
    /// Configuration publish requests from the portal (request/reply); the last token is a
    /// store or `_store` for every store of the tenant.
    ConfigPublish,
    /// A bridge's catch-up request, device to broker (core NATS): "I am connected; hand me my
    /// unfinished commands again". It carries nothing the broker trusts but its subject.
    CommandSync,
    /// Copies of a device's unfinished commands handed again, broker to device (core NATS,
    /// no stream stores them), and the end marker of a catch-up.
    CommandCopies,
}

impl Family {
    pub const ALL: &'static [Family] = &[
        Family::Events,
        Family::Heartbeats,
        Family::Commands,
        Family::CommandAcks,
        Family::Watermarks,
        Family::Intake,
        Family::Status,
        Family::Resend,
        Family::Config,
        Family::ConfigSnapshot,
        Family::ConfigPublish,
        Family::CommandSync,
        Family::CommandCopies,
    ];

    pub fn token(self) -> &'static str {
        match self {
            Family::Events => "ev",
            Family::Heartbeats => "hb",
            Family::Commands => "cmd",
            Family::CommandAcks => "cack",
            Family::Watermarks => "wm",
            Family::Intake => "intake",
            Family::Status => "status",
            Family::Resend => "rs",
            Family::Config => "cfg",
            Family::ConfigSnapshot => "cfgsnap",
            Family::ConfigPublish => "cfgpub",
            Family::CommandSync => "csync",
            Family::CommandCopies => "ccopy",
        }
    }

    /// The last token named by its position and meaning, for refusals.
    fn last_token_name(self) -> &'static str {
        match self {
            Family::Status => "token 5 (command id)",
            Family::Config | Family::ConfigSnapshot => "token 5 (_store)",
            Family::ConfigPublish => "token 5 (store or _store)",
            _ => "token 5 (device)",
        }
    }

    /// Wildcard covering the whole family, for stream configs and broker subscriptions.
    pub fn all_subjects(self) -> String {
        format!("{ROOT}.{}.>", self.token())
    }

    /// Wildcard covering the subjects a device publishes on (exactly five tokens): what a
    /// partitioned stream takes in.
    pub fn published_subjects(self) -> String {
        format!("{ROOT}.{}.*.*.*", self.token())
    }

    /// Wildcard covering one partition's stored messages (the partition is the sixth token).
    pub fn partition_subjects(self, partition: u16) -> String {
        format!("{ROOT}.{}.*.*.*.{partition}", self.token())
    }

    /// Wildcard covering one tenant's part of the family.
    pub fn tenant_subjects(self, tenant: &str) -> String {
        format!("{ROOT}.{}.{tenant}.>", self.token())
    }

    /// Wildcard covering one store's part of the family.
    pub fn store_subjects(self, tenant: &str, store: &str) -> String {
        format!("{ROOT}.{}.{tenant}.{store}.>", self.token())
    }
}

/// Tenant, store and device: the three tokens that address a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceAddr {
    pub tenant_id: String,
    pub store_id: String,
    pub device_id: String,
}

impl DeviceAddr {
    pub fn new(tenant: impl Into<String>, store: impl Into<String>, device: impl Into<String>) -> Self {
        DeviceAddr { tenant_id: tenant.into(), store_id: store.into(), device_id: device.into() }
    }

    pub fn validate(&self) -> Result<(), WireError> {
        check_id("tenant_id", &self.tenant_id)?;
        check_id("store_id", &self.store_id)?;
        check_id("device_id", &self.device_id)
    }

    /// The subject of `family` for this device.
    pub fn subject(&self, family: Family) -> String {
        format!("{ROOT}.{}.{}.{}.{}", family.token(), self.tenant_id, self.store_id, self.device_id)
    }
}

pub fn events(addr: &DeviceAddr) -> String {
    addr.subject(Family::Events)
}
pub fn heartbeats(addr: &DeviceAddr) -> String {
    addr.subject(Family::Heartbeats)
}
pub fn commands(addr: &DeviceAddr) -> String {
    addr.subject(Family::Commands)
}
pub fn command_acks(addr: &DeviceAddr) -> String {
    addr.subject(Family::CommandAcks)
}
pub fn watermarks(addr: &DeviceAddr) -> String {
    addr.subject(Family::Watermarks)
}
pub fn resend_requests(addr: &DeviceAddr) -> String {
    addr.subject(Family::Resend)
}
pub fn command_sync(addr: &DeviceAddr) -> String {
    addr.subject(Family::CommandSync)
}
pub fn command_copies(addr: &DeviceAddr) -> String {
    addr.subject(Family::CommandCopies)
}

/// Intake subject for a command; `device` `None` is store-wide.
pub fn intake(tenant: &str, store: &str, device: Option<&str>) -> String {
    format!("{ROOT}.{}.{tenant}.{store}.{}", Family::Intake.token(), device.unwrap_or(STORE_WIDE))
}

/// Cancel subject of a store's commands: `tillsync.intake.<tenant>.<store>._cancel`. It is
/// on the intake stream, so a cancel is durable and ordered after the commands it cancels.
pub fn cancel(tenant: &str, store: &str) -> String {
    format!("{ROOT}.{}.{tenant}.{store}.{CANCEL}", Family::Intake.token())
}

/// Decision subject of a store's commands: `tillsync.intake.<tenant>.<store>._approve`, on the
/// intake stream like a cancel, so a decision is durable and ordered after its command.
pub fn approve(tenant: &str, store: &str) -> String {
    format!("{ROOT}.{}.{tenant}.{store}.{APPROVE}", Family::Intake.token())
}

/// Status subject of one command, for the portal: `tillsync.status.<tenant>.<store>.<command_id>`.
pub fn status(tenant: &str, store: &str, command_id: &str) -> String {
    format!("{ROOT}.{}.{tenant}.{store}.{command_id}", Family::Status.token())
}

/// A parsed subject: its family and its three address tokens (the last may be [`STORE_WIDE`]
/// on intake, or a command id on status), and the partition token a partitioned stream adds
/// when it stores a message ([`crate::partition`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub family: Family,
    pub tenant_id: String,
    pub store_id: String,
    pub last: String,
    pub partition: Option<u16>,
}

impl Parsed {
    pub fn device_addr(&self) -> DeviceAddr {
        DeviceAddr::new(&self.tenant_id, &self.store_id, &self.last)
    }

    /// The subject as its publisher sent it: without the partition token.
    pub fn published(&self) -> String {
        format!("{ROOT}.{}.{}.{}.{}", self.family.token(), self.tenant_id, self.store_id, self.last)
    }
}

/// Parses any tillsync subject, as published (five tokens) or as stored by a partitioned
/// stream (a sixth, numeric token), checking every token. A refusal quotes the subject as its
/// publisher sent it (without a partition token) and names the wrong token by its position
/// there: `token 5 (device) "till~1" must match ...`.
pub fn parse(subject: &str) -> Result<Parsed, WireError> {
    let published = crate::partition::published_subject(subject);
    let bad = |why: &str| WireError::new(Reason::BadSubject, format!("subject {published:?}: {why}"));
    let tokens: Vec<&str> = subject.split('.').collect();
    let (root, fam, tenant, store, last, partition) = match tokens[..] {
        [root, fam, tenant, store, last] => (root, fam, tenant, store, last, None),
        [root, fam, tenant, store, last, p] => {
            let p = p.parse::<u16>().map_err(|_| bad("the sixth token must be a partition number"))?;
            (root, fam, tenant, store, last, Some(p))
        }
        _ => return Err(bad(&format!("expected 5 tokens, not {}", tokens.len()))),
    };
    if root != ROOT {
        return Err(bad(&format!("token 1 must be {ROOT:?}")));
    }
    let family = Family::ALL
        .iter()
        .copied()
        .find(|f| f.token() == fam)
        .ok_or_else(|| bad(&format!("token 2 (family) {fam:?} is not a tillsync family")))?;
    check_id("token 3 (tenant)", tenant).map_err(|e| bad(&e.detail))?;
    check_id("token 4 (store)", store).map_err(|e| bad(&e.detail))?;
    let store_wide_ok =
        matches!(family, Family::Intake | Family::Config | Family::ConfigSnapshot | Family::ConfigPublish);
    if !((store_wide_ok && last == STORE_WIDE) || (family == Family::Intake && (last == CANCEL || last == APPROVE))) {
        check_id(family.last_token_name(), last).map_err(|e| bad(&e.detail))?;
    }
    Ok(Parsed { family, tenant_id: tenant.into(), store_id: store.into(), last: last.into(), partition })
}

/// Checks that a subject of `family` names exactly the envelope's tenant, store and device.
pub fn check_matches(subject: &str, family: Family, addr: &DeviceAddr) -> Result<(), WireError> {
    let parsed = parse(subject)?;
    if parsed.family != family {
        let published = crate::partition::published_subject(subject);
        return Err(WireError::new(Reason::BadSubject, format!("{published:?} is not a {family:?} subject")));
    }
    if parsed.device_addr() != *addr {
        return Err(WireError::new(
            Reason::SubjectMismatch,
            format!(
                "subject names {}/{}/{} but envelope names {}/{}/{}",
                parsed.tenant_id, parsed.store_id, parsed.last, addr.tenant_id, addr.store_id, addr.device_id
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses() {
        let a = DeviceAddr::new("acme", "s1", "till-1");
        assert_eq!(events(&a), "tillsync.ev.acme.s1.till-1");
        assert_eq!(intake("acme", "s1", None), "tillsync.intake.acme.s1._store");
        let p = parse(&commands(&a)).unwrap();
        assert_eq!(p.family, Family::Commands);
        assert_eq!(p.device_addr(), a);
        assert_eq!(Family::Events.all_subjects(), "tillsync.ev.>");
        assert_eq!(resend_requests(&a), "tillsync.rs.acme.s1.till-1");
        assert_eq!(parse(&resend_requests(&a)).unwrap().family, Family::Resend);
        assert_eq!(command_sync(&a), "tillsync.csync.acme.s1.till-1");
        assert_eq!(parse(&command_copies(&a)).unwrap().family, Family::CommandCopies);
    }

    #[test]
    fn rejects_bad_subjects() {
        for s in
            ["x.ev.a.b.c", "tillsync.ev.a.b", "tillsync.nope.a.b.c", "tillsync.ev._x.b.c", "tillsync.ev.a.b._store"]
        {
            assert_eq!(parse(s).unwrap_err().reason, Reason::BadSubject, "{s}");
        }
        assert!(parse("tillsync.intake.a.b._store").is_ok());
        assert_eq!(parse(&cancel("a", "b")).unwrap().last, CANCEL);
        assert_eq!(parse("tillsync.ev.a.b._cancel").unwrap_err().reason, Reason::BadSubject);
    }

    #[test]
    fn reads_the_partition_token_of_stored_subjects() {
        let p = parse("tillsync.ev.acme.s1.till-1.15").unwrap();
        assert_eq!(p.partition, Some(15));
        assert_eq!(p.published(), "tillsync.ev.acme.s1.till-1");
        assert_eq!(parse("tillsync.ev.acme.s1.till-1").unwrap().partition, None);
        assert_eq!(parse("tillsync.ev.acme.s1.till-1.x").unwrap_err().reason, Reason::BadSubject);
        assert_eq!(Family::Events.partition_subjects(3), "tillsync.ev.*.*.*.3");
        assert_eq!(Family::Events.published_subjects(), "tillsync.ev.*.*.*");
    }

    #[test]
    fn a_refusal_quotes_the_publishers_subject_and_names_the_token_by_its_place_there() {
        let detail = |s: &str| parse(s).unwrap_err().detail;
        let want = r#"subject "tillsync.ev.acme.s1.till~1": token 5 (device) "till~1" must match [A-Za-z0-9][A-Za-z0-9_-]{0,63}"#;
        assert_eq!(detail("tillsync.ev.acme.s1.till~1.4"), want);
        assert_eq!(detail("tillsync.ev.acme.s1.till~1"), want);
        assert!(detail("tillsync.ev._store.S.till-bad.4")
            .starts_with(r#"subject "tillsync.ev._store.S.till-bad": token 3 (tenant) "_store""#));
        assert!(detail("tillsync.ev.acme.s~1.d.4").contains(r#"token 4 (store) "s~1""#));
        assert!(detail("tillsync.status.acme.s1.c~1").contains("token 5 (command id)"));
        assert!(detail("tillsync.nope.a.b.c.4").ends_with(r#"token 2 (family) "nope" is not a tillsync family"#));
        assert!(detail("tillsync.ev.acme.s1").ends_with("expected 5 tokens, not 4"));
        let e = check_matches("tillsync.hb.acme.s1.d1.3", Family::Events, &DeviceAddr::new("acme", "s1", "d1"));
        assert_eq!(e.unwrap_err().detail, r#""tillsync.hb.acme.s1.d1" is not a Events subject"#);
    }

    #[test]
    fn mismatch_is_coded() {
        let a = DeviceAddr::new("acme", "s1", "d1");
        let err = check_matches("tillsync.ev.other.s1.d1", Family::Events, &a).unwrap_err();
        assert_eq!(err.reason, Reason::SubjectMismatch);
        assert!(check_matches(&events(&a), Family::Events, &a).is_ok());
    }
}
