//! Signed approvals: an approver is a registered identity of one tenant with its own nkey
//! (`tillsync approvers add`), and an approval is that key's signature over the command's
//! exact content. A portal credential can request a command; it cannot approve one, because
//! it holds no approver's key.
//!
//! The signed bytes are a version prefix, the decision, the approver id and the command
//! envelope encoded as on the wire with `approvals` empty, so a signature never verifies for
//! another command, another approver, the other decision or an altered field. The crypto is
//! the `nkeys` crate's.

use data_encoding::BASE64URL_NOPAD;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};

use crate::error::{Reason, WireError};
use crate::ids::check_id;
use crate::CommandEnvelope;

/// Prefix of the signed bytes: a version, so a signature of one scheme never verifies under
/// another (nor as a command signature, whose prefix differs).
const DOMAIN: &[u8] = b"tillsync-approval-v1\n";

/// Longest signature accepted: 64 bytes in base64 are 86 characters; a little slack.
pub const MAX_SIGNATURE_CHARS: usize = 128;

/// Two fixed approver seeds for tests, benchmarks and the chaos run only: they are public, so
/// an approval signed with them proves nothing outside a test. `(approver id, seed)`.
pub const TEST_APPROVERS: [(&str, &str); 2] = [
    ("approver-a", "SUAKS3DY7N4UQC35OAISBGICPI4VICOW3B7S74JCDRQXYCZRCEBKSAASHI"),
    ("approver-b", "SUAHACO3CSXGYR7MPAD3SNMO7QYH2UP5NNOREQY4UTPBY7GHTLZ7644X2Y"),
];

/// What an approver decides about a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }
}

/// An approver's decision about a command already recorded, on
/// `tillsync.intake.<tenant>.<store>._approve` ([`crate::subject::approve`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandDecision {
    pub schema_version: u16,
    pub command_id: String,
    pub tenant_id: String,
    pub store_id: String,
    pub approver: String,
    pub decision: Decision,
    /// [`sign`] of the command as recorded, by the approver's key.
    pub signature: String,
    pub at_ms: i64,
}

impl CommandDecision {
    pub fn validate(&self) -> Result<(), WireError> {
        if !crate::SUPPORTED_SCHEMA_VERSIONS.contains(&self.schema_version) {
            return Err(WireError::new(Reason::UnsupportedVersion, format!("schema_version {}", self.schema_version)));
        }
        crate::ids::check_uuid_or_ulid("command_id", &self.command_id)?;
        check_id("tenant_id", &self.tenant_id)?;
        check_id("store_id", &self.store_id)?;
        check_id("approver", &self.approver)?;
        if self.signature.len() > MAX_SIGNATURE_CHARS {
            return Err(WireError::new(Reason::InvalidField, "signature too long"));
        }
        Ok(())
    }
}

/// The bytes an approval signature covers.
pub fn signed_bytes(cmd: &CommandEnvelope, approver: &str, decision: Decision) -> Vec<u8> {
    let bare = CommandEnvelope { approvals: Vec::new(), ..cmd.clone() };
    let mut bytes = DOMAIN.to_vec();
    bytes.extend_from_slice(decision.as_str().as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(approver.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(&crate::codec::encode(&bare));
    bytes
}

/// The signature of `approver`'s `decision` about `cmd`, base64url without padding.
///
/// Panics if `key` has no seed: approvers sign with a key loaded from their seed file.
pub fn sign(key: &KeyPair, cmd: &CommandEnvelope, approver: &str, decision: Decision) -> String {
    let signature = key.sign(&signed_bytes(cmd, approver, decision)).expect("a key pair loaded from a seed signs");
    BASE64URL_NOPAD.encode(&signature)
}

/// Whether `signature` is `approver`'s `decision` about `cmd` under the public key
/// `public_key` (the approver's registered key).
pub fn verify(public_key: &str, cmd: &CommandEnvelope, approver: &str, decision: Decision, signature: &str) -> bool {
    let Ok(public) = KeyPair::from_public_key(public_key) else { return false };
    let Ok(sig) = BASE64URL_NOPAD.decode(signature.as_bytes()) else { return false };
    public.verify(&signed_bytes(cmd, approver, decision), &sig).is_ok()
}

/// A test approver's key pair (see [`TEST_APPROVERS`]).
pub fn test_key(index: usize) -> KeyPair {
    KeyPair::from_seed(TEST_APPROVERS[index].1).expect("the test approver seeds parse")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Approval, CommandBody, SCHEMA_VERSION};

    fn refund(amount_minor: i64) -> CommandEnvelope {
        CommandEnvelope {
            schema_version: SCHEMA_VERSION,
            command_id: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
            tenant_id: "acme".into(),
            store_id: "s1".into(),
            device_id: Some("till-1".into()),
            body: CommandBody::RefundOrder {
                order_id: "o-1".into(),
                payment_id: "p-1".into(),
                amount_minor,
                currency: "EUR".into(),
                reason: "cold".into(),
            },
            issued_at_ms: 1,
            expires_at_ms: 2,
            requested_by: "alice".into(),
            approvals: vec![],
            if_match: None,
        }
    }

    #[test]
    fn a_signature_covers_the_command_the_approver_and_the_decision() {
        let key = test_key(0);
        let public = key.public_key();
        let cmd = refund(350);
        let sig = sign(&key, &cmd, "approver-a", Decision::Approve);
        assert!(verify(&public, &cmd, "approver-a", Decision::Approve, &sig));
        // Approvals already attached do not change what is signed.
        let mut with = cmd.clone();
        with.approvals.push(Approval {
            approver: "x".into(),
            role: "r".into(),
            approved_at_ms: 3,
            signature: Some(sig.clone()),
        });
        assert!(verify(&public, &with, "approver-a", Decision::Approve, &sig));
        assert!(!verify(&public, &refund(9_999_900), "approver-a", Decision::Approve, &sig), "another amount");
        assert!(!verify(&public, &cmd, "approver-b", Decision::Approve, &sig), "another approver's name");
        assert!(!verify(&public, &cmd, "approver-a", Decision::Reject, &sig), "the other decision");
        assert!(!verify(&test_key(1).public_key(), &cmd, "approver-a", Decision::Approve, &sig), "another key");
        assert!(!verify(&public, &cmd, "approver-a", Decision::Approve, "not base64!"));
        assert!(!verify("not a key", &cmd, "approver-a", Decision::Approve, &sig));
    }
}
