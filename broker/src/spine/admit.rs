//! The admit step: the same for every message of every consumer, live or replayed.

use sqlx::PgPool;
use tillsync_schemas::{partition, subject, Reason, WireError};

use super::Consumer;
use crate::tenants::Tenants;
use crate::Ctx;

/// Why a message was not admitted.
#[derive(Debug)]
pub enum Refused {
    /// Refused for good: quarantine it with this coded reason.
    Bad(WireError),
    /// Postgres could not answer: redeliver.
    Db(sqlx::Error),
}

/// What admitting a message consults: the tenant list, and the partition count when the
/// subject must carry its store's partition (the live broker; replay reads what was admitted).
pub struct Gate<'a> {
    pub pool: &'a PgPool,
    pub tenants: &'a Tenants,
    pub partitions: Option<u16>,
}

impl Ctx {
    pub fn gate(&self) -> Gate<'_> {
        Gate { pool: &self.pool, tenants: &self.tenants, partitions: Some(self.config.partitions) }
    }
}

/// Admits one message for `consumer`: the partition token the stream added must be the
/// store's partition (anything else was published around the stream's transform, and is not
/// this partition's owner's to handle), the payload must decode for its subject, and the
/// tenant must be provisioned.
pub async fn admit<C: Consumer>(
    gate: &Gate<'_>,
    consumer: &C,
    subject_str: &str,
    payload: &[u8],
) -> Result<C::Item, Refused> {
    if let Some(n) = gate.partitions {
        check_partition(subject_str, n).map_err(Refused::Bad)?;
    }
    let item = consumer.decode(subject_str, payload).map_err(Refused::Bad)?;
    match gate.tenants.exists(gate.pool, consumer.tenant(&item)).await {
        Ok(true) => Ok(item),
        Ok(false) => Err(Refused::Bad(consumer.unknown_tenant(&item))),
        Err(e) => Err(Refused::Db(e)),
    }
}

/// The refusal of a message whose tenant is not provisioned.
pub fn unknown_tenant(tenant: &str) -> WireError {
    WireError::new(Reason::UnknownTenant, format!("tenant {tenant:?} is not provisioned"))
}

/// The subject's partition token names its store's partition.
pub fn check_partition(subject_str: &str, partitions: u16) -> Result<(), WireError> {
    let parsed = subject::parse(subject_str)?;
    let want = partition::of(&parsed.tenant_id, &parsed.store_id, partitions);
    match parsed.partition {
        Some(p) if p == want => Ok(()),
        got => Err(WireError::new(
            Reason::BadSubject,
            format!("subject {subject_str:?}: partition token {got:?}, but the store's partition is {want}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stores_own_partition_is_admitted() {
        let p = partition::of("acme", "s1", 16);
        assert!(check_partition(&format!("tillsync.ev.acme.s1.d1.{p}"), 16).is_ok());
        let wrong = (p + 1) % 16;
        let e = check_partition(&format!("tillsync.ev.acme.s1.d1.{wrong}"), 16).unwrap_err();
        assert_eq!(e.reason, Reason::BadSubject);
        assert_eq!(check_partition("tillsync.ev.acme.s1.d1", 16).unwrap_err().reason, Reason::BadSubject);
        // Cancels and decisions are intake messages like any other.
        let e = check_partition(&format!("tillsync.intake.acme.s1._cancel.{wrong}"), 16).unwrap_err();
        assert_eq!(e.reason, Reason::BadSubject);
    }
}
