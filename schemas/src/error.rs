//! Coded validation errors. A [`Reason`] leaves the process (quarantine rows, command
//! rejections, metrics labels), so its string codes are stable: a retired code is never reused.

use std::fmt;

/// Why a message was refused. `as_str` gives the stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Oversize,
    Undecodable,
    UnknownKind,
    UnsupportedVersion,
    BadSubject,
    SubjectMismatch,
    InvalidId,
    InvalidAmount,
    InvalidField,
    UnknownTenant,
    UnknownDevice,
    Expired,
    TtlTooLong,
    MissingApproval,
    SelfApproval,
    DuplicateApprover,
    /// Decoded fine but applying it failed for a reason retrying cannot fix.
    ApplyFailed,
    /// A cancel names a command the broker does not know in that store.
    UnknownCommand,
    /// An approval without a signature: the names-only envelope of protocol 1.x.
    UnsignedApproval,
    /// An approval by someone who is not a registered, unrevoked approver of the tenant.
    UnknownApprover,
    /// An approval whose signature does not verify with the approver's registered key over
    /// this very command.
    BadApprovalSignature,
    /// A registered approver rejected the command.
    ApprovalRejected,
    /// An approval decision for a command that no longer waits for one.
    NotPendingApproval,
}

impl Reason {
    /// Every reason, in code order: used to pre-register metric label values.
    pub const ALL: &'static [Reason] = &[
        Reason::Oversize,
        Reason::Undecodable,
        Reason::UnknownKind,
        Reason::UnsupportedVersion,
        Reason::BadSubject,
        Reason::SubjectMismatch,
        Reason::InvalidId,
        Reason::InvalidAmount,
        Reason::InvalidField,
        Reason::UnknownTenant,
        Reason::UnknownDevice,
        Reason::Expired,
        Reason::TtlTooLong,
        Reason::MissingApproval,
        Reason::SelfApproval,
        Reason::DuplicateApprover,
        Reason::ApplyFailed,
        Reason::UnknownCommand,
        Reason::UnsignedApproval,
        Reason::UnknownApprover,
        Reason::BadApprovalSignature,
        Reason::ApprovalRejected,
        Reason::NotPendingApproval,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Oversize => "oversize",
            Reason::Undecodable => "undecodable",
            Reason::UnknownKind => "unknown_kind",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::BadSubject => "bad_subject",
            Reason::SubjectMismatch => "subject_mismatch",
            Reason::InvalidId => "invalid_id",
            Reason::InvalidAmount => "invalid_amount",
            Reason::InvalidField => "invalid_field",
            Reason::UnknownTenant => "unknown_tenant",
            Reason::UnknownDevice => "unknown_device",
            Reason::Expired => "expired",
            Reason::TtlTooLong => "ttl_too_long",
            Reason::MissingApproval => "missing_approval",
            Reason::SelfApproval => "self_approval",
            Reason::DuplicateApprover => "duplicate_approver",
            Reason::ApplyFailed => "apply_failed",
            Reason::UnknownCommand => "unknown_command",
            Reason::UnsignedApproval => "unsigned_approval",
            Reason::UnknownApprover => "unknown_approver",
            Reason::BadApprovalSignature => "bad_approval_signature",
            Reason::ApprovalRejected => "approval_rejected",
            Reason::NotPendingApproval => "not_pending_approval",
        }
    }

    pub fn parse(code: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused message: the coded reason plus a human detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct WireError {
    pub reason: Reason,
    pub detail: String,
}

impl WireError {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        WireError { reason, detail: detail.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate code {r}");
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
        }
    }
}
