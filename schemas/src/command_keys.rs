//! Command keys on request: a bridge asks the broker which public keys sign commands, so a
//! key rotation (docs/security.md) reaches every bridge without touching its settings.
//!
//! The answer is signed by one of the broker's keys over the asking device's subject, and a
//! bridge takes it only when it already trusts that signer: trust moves from key to key
//! (current, then current and next, then next), never to a key no trusted key vouched for.

use serde::{Deserialize, Serialize};

use crate::signature;
use crate::subject::ROOT;
use crate::DeviceAddr;

/// Where a device asks: `tillsync.keys.<tenant>.<store>.<device>` (request/reply).
pub fn subject(addr: &DeviceAddr) -> String {
    format!("{ROOT}.keys.{}.{}.{}", addr.tenant_id, addr.store_id, addr.device_id)
}

/// Every device's subject, for the broker's responder.
pub const ALL: &str = "tillsync.keys.*.*.*";

/// Why a bridge refuses the broker's answer and keeps the keys it trusts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysRefused {
    /// An empty list would leave the bridge trusting nothing, so no command would verify.
    #[error("the answer names no key")]
    NoKey,
    #[error(transparent)]
    NotAPublicKey(#[from] signature::NotAPublicKey),
    /// The answer's own signature: an unknown signer, another device's subject, a changed list.
    #[error(transparent)]
    Signature(#[from] signature::SignatureError),
}

/// The broker's answer (MessagePack).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandKeys {
    /// The public keys whose command signatures to accept from now on.
    pub keys: Vec<String>,
    /// The key that signed this answer.
    pub signer: String,
    /// Over [`CommandKeys::signed`] on the asking device's subject ([`signature::sign`]).
    pub signature: String,
}

impl CommandKeys {
    /// The bytes the signature covers: the keys, comma separated.
    pub fn signed(keys: &[String]) -> Vec<u8> {
        keys.join(",").into_bytes()
    }

    /// The keys to trust from now on, if a key in `trusted` signed them for `subject`.
    pub fn accept(&self, trusted: &[String], subject: &str) -> Result<Vec<String>, KeysRefused> {
        if self.keys.is_empty() {
            return Err(KeysRefused::NoKey);
        }
        for key in &self.keys {
            signature::check_public_key(key)?;
        }
        signature::verify(trusted, Some(&self.signer), Some(&self.signature), subject, &Self::signed(&self.keys))?;
        Ok(self.keys.clone())
    }
}

#[cfg(test)]
mod tests {
    use nkeys::KeyPair;

    use super::*;
    use crate::signature::{SignatureError, TEST_PUBLIC_KEY, TEST_SEED};

    fn answer(signer: &KeyPair, keys: Vec<String>, subject: &str) -> CommandKeys {
        let signature = signature::sign(signer, subject, &CommandKeys::signed(&keys));
        CommandKeys { keys, signer: signer.public_key(), signature }
    }

    #[test]
    fn a_trusted_signer_moves_trust_to_the_next_key() {
        let current = KeyPair::from_seed(TEST_SEED).unwrap();
        let next = KeyPair::new_user();
        let s = subject(&DeviceAddr::new("acme", "s1", "till-1"));
        let both = vec![current.public_key(), next.public_key()];
        let trusted = answer(&current, both.clone(), &s).accept(&[TEST_PUBLIC_KEY.to_string()], &s).unwrap();
        assert_eq!(trusted, both);
        // Then the next key alone, vouched for by itself, now trusted.
        assert_eq!(answer(&next, vec![next.public_key()], &s).accept(&trusted, &s).unwrap(), vec![next.public_key()]);
    }

    #[test]
    fn an_unknown_signer_another_device_or_a_changed_list_is_refused() {
        let current = KeyPair::from_seed(TEST_SEED).unwrap();
        let stranger = KeyPair::new_user();
        let trusted = vec![TEST_PUBLIC_KEY.to_string()];
        let s = subject(&DeviceAddr::new("acme", "s1", "till-1"));
        let other = subject(&DeviceAddr::new("acme", "s1", "till-2"));
        let unknown = SignatureError::UnknownKey(stranger.public_key());
        assert_eq!(answer(&stranger, vec![stranger.public_key()], &s).accept(&trusted, &s), Err(unknown.into()));
        let mismatch = Err(SignatureError::Mismatch.into());
        assert_eq!(answer(&current, vec![current.public_key()], &other).accept(&trusted, &s), mismatch);
        let mut changed = answer(&current, vec![current.public_key()], &s);
        changed.keys.push(stranger.public_key());
        assert_eq!(changed.accept(&trusted, &s), mismatch);
        let mut mangled = answer(&current, vec![current.public_key()], &s);
        mangled.keys.push("nope".into());
        assert!(matches!(mangled.accept(&trusted, &s), Err(KeysRefused::NotAPublicKey(_))));
        let empty = answer(&current, vec![], &s);
        assert_eq!(empty.accept(&trusted, &s), Err(KeysRefused::NoKey));
    }
}
