//! A command that does not decode (unknown kind, bad field, ...) but can still be rejected as a
//! command, so the portal hears why: its id, tenant and store read, and agree with its own
//! subject. Anything less readable is quarantined: no status goes to a tenant the subject does
//! not prove.

use serde::Deserialize;
use tillsync_schemas::ids::check_uuid_or_ulid;
use tillsync_schemas::{codec, subject, Reason, WireError};

use super::sql::CommandRow;

/// The fields read from a command that does not fully decode.
#[derive(Deserialize)]
pub struct Probe {
    command_id: String,
    pub tenant_id: String,
    store_id: String,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    requested_by: String,
    #[serde(default)]
    approvals: Vec<ProbeApproval>,
    #[serde(default)]
    issued_at_ms: i64,
    #[serde(default)]
    expires_at_ms: i64,
    #[serde(default)]
    body: Option<ProbeBody>,
}

#[derive(Deserialize)]
struct ProbeApproval {
    approver: String,
}

#[derive(Deserialize)]
struct ProbeBody {
    kind: String,
}

/// What can be read of a command on `subj` that failed to decode with `e`, if enough to reject
/// it as a command. Not when the subject itself is in doubt, or the payload too large to read.
pub fn probe(subj: &str, payload: &[u8], e: &WireError) -> Option<Probe> {
    if matches!(e.reason, Reason::BadSubject | Reason::SubjectMismatch | Reason::Oversize) {
        return None;
    }
    codec::decode::<Probe>(payload).ok().filter(|p| {
        let parsed = subject::parse(subj).ok();
        check_uuid_or_ulid("command_id", &p.command_id).is_ok()
            && parsed.is_some_and(|s| {
                s.family == subject::Family::Intake
                    && s.tenant_id == p.tenant_id
                    && s.store_id == p.store_id
                    && s.last == p.device_id.as_deref().unwrap_or(subject::STORE_WIDE)
            })
    })
}

impl Probe {
    /// The rejected command's row, with the message's bytes as its envelope.
    pub fn row<'a>(&'a self, envelope: &'a [u8]) -> CommandRow<'a> {
        CommandRow {
            tenant_id: &self.tenant_id,
            store_id: &self.store_id,
            command_id: &self.command_id,
            device_id: self.device_id.as_deref(),
            kind: self.body.as_ref().map_or("unknown", |b| b.kind.as_str()),
            envelope,
            requested_by: &self.requested_by,
            approvers: self.approvals.iter().map(|a| a.approver.clone()).collect(),
            issued_at_ms: self.issued_at_ms,
            expires_at_ms: self.expires_at_ms,
        }
    }
}
