//! Signed commands: the broker signs every command it delivers with an ed25519 nkey, and a
//! bridge applies only commands whose signature verifies with a key it trusts.
//!
//! The signature covers the device's command subject as well as the payload, so a command
//! signed for one device never verifies on another device's subject, and an altered payload
//! never verifies at all. The crypto is the `nkeys` crate's; this module only fixes which
//! bytes are signed and how the signature travels (two headers).

use data_encoding::BASE64URL_NOPAD;
use nkeys::KeyPair;

/// Header carrying the signature: base64url without padding of the 64 signature bytes.
pub const HEADER_SIGNATURE: &str = "Tillsync-Signature";
/// Header carrying the signer's public nkey (`U...`), so a bridge picks the trusted key it names.
pub const HEADER_KEY: &str = "Tillsync-Key";

/// Prefix of the signed bytes: a version, so the scheme can change without a signature of one
/// scheme ever verifying under another.
const DOMAIN: &[u8] = b"tillsync-cmd-v1\n";

/// A fixed user seed for tests, benchmarks and the chaos run only: it is public, so a broker
/// signing with it proves nothing. Its public key is [`TEST_PUBLIC_KEY`].
pub const TEST_SEED: &str = "SUAGHCUZ453E2MB4VEVOJCNXU3ZJDTS536OLZGPMCVVCLEX2GG7LBIIWOI";
/// The public key of [`TEST_SEED`] (test-only, see there).
pub const TEST_PUBLIC_KEY: &str = "UDV3S7SMKPLVSOOLFCJYGB7SOHRBXXDWWNXYZ37HIQ2JPEQQDPNBAS2D";

/// Why a command's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("unsigned: the {0} header is missing")]
    Unsigned(&'static str),
    #[error("signed by {0}, which is not a trusted command key")]
    UnknownKey(String),
    #[error("the signature does not match this subject and payload")]
    Mismatch,
}

/// The bytes a command signature covers.
pub fn signed_bytes(subject: &str, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(DOMAIN.len() + subject.len() + 1 + payload.len());
    bytes.extend_from_slice(DOMAIN);
    bytes.extend_from_slice(subject.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(payload);
    bytes
}

/// The `Tillsync-Signature` value for `payload` delivered on `subject`.
///
/// Panics if `key` has no seed (a public-only key cannot sign): signers are always loaded from
/// a seed.
pub fn sign(key: &KeyPair, subject: &str, payload: &[u8]) -> String {
    let signature = key.sign(&signed_bytes(subject, payload)).expect("a key pair loaded from a seed signs");
    BASE64URL_NOPAD.encode(&signature)
}

/// Checks a delivered command's headers against the trusted public keys.
pub fn verify(
    trusted: &[String],
    key_header: Option<&str>,
    sig_header: Option<&str>,
    subject: &str,
    payload: &[u8],
) -> Result<(), SignatureError> {
    let key = key_header.ok_or(SignatureError::Unsigned(HEADER_KEY))?;
    let sig = sig_header.ok_or(SignatureError::Unsigned(HEADER_SIGNATURE))?;
    if !trusted.iter().any(|t| t == key) {
        return Err(SignatureError::UnknownKey(key.to_string()));
    }
    // A trusted key that does not parse is a configuration error caught at start; here it
    // only means nothing verifies.
    let public = KeyPair::from_public_key(key).map_err(|_| SignatureError::UnknownKey(key.to_string()))?;
    let sig = BASE64URL_NOPAD.decode(sig.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    public.verify(&signed_bytes(subject, payload), &sig).map_err(|_| SignatureError::Mismatch)
}

/// A key given as a public nkey that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key:?} is not a public nkey: {why}")]
pub struct NotAPublicKey {
    pub key: String,
    /// What nkeys says (a bad prefix, length or checksum): kept as text, as nkeys' error is
    /// neither `Clone` nor `PartialEq`.
    pub why: String,
}

/// Checks that `key` is a public nkey, for validating configured trusted keys.
pub fn check_public_key(key: &str) -> Result<(), NotAPublicKey> {
    KeyPair::from_public_key(key).map(|_| ()).map_err(|e| NotAPublicKey { key: key.to_string(), why: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECT: &str = "tillsync.cmd.acme.s1.till-1";

    fn signed() -> (Vec<String>, String, String) {
        let key = KeyPair::from_seed(TEST_SEED).unwrap();
        (vec![key.public_key()], key.public_key(), sign(&key, SUBJECT, b"payload"))
    }

    #[test]
    fn test_seed_matches_its_public_key() {
        assert_eq!(KeyPair::from_seed(TEST_SEED).unwrap().public_key(), TEST_PUBLIC_KEY);
    }

    #[test]
    fn good_signature_verifies() {
        let (trusted, key, sig) = signed();
        assert_eq!(verify(&trusted, Some(&key), Some(&sig), SUBJECT, b"payload"), Ok(()));
    }

    #[test]
    fn altered_payload_and_other_subject_mismatch() {
        let (trusted, key, sig) = signed();
        assert_eq!(verify(&trusted, Some(&key), Some(&sig), SUBJECT, b"payloaD"), Err(SignatureError::Mismatch));
        let other = "tillsync.cmd.acme.s1.till-2";
        assert_eq!(verify(&trusted, Some(&key), Some(&sig), other, b"payload"), Err(SignatureError::Mismatch));
        assert_eq!(
            verify(&trusted, Some(&key), Some("not base64!"), SUBJECT, b"payload"),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn unknown_key_is_refused_even_when_its_signature_is_good() {
        let (trusted, _, _) = signed();
        let stranger = KeyPair::new_user();
        let sig = sign(&stranger, SUBJECT, b"payload");
        let got = verify(&trusted, Some(&stranger.public_key()), Some(&sig), SUBJECT, b"payload");
        assert_eq!(got, Err(SignatureError::UnknownKey(stranger.public_key())));
        // Nothing trusted: nothing verifies.
        let (_, key, sig) = signed();
        assert!(matches!(verify(&[], Some(&key), Some(&sig), SUBJECT, b"payload"), Err(SignatureError::UnknownKey(_))));
    }

    #[test]
    fn missing_headers_are_unsigned() {
        let (trusted, key, sig) = signed();
        assert_eq!(verify(&trusted, None, Some(&sig), SUBJECT, b"payload"), Err(SignatureError::Unsigned(HEADER_KEY)));
        assert_eq!(
            verify(&trusted, Some(&key), None, SUBJECT, b"payload"),
            Err(SignatureError::Unsigned(HEADER_SIGNATURE))
        );
    }

    #[test]
    fn public_keys_are_checked() {
        assert!(check_public_key(TEST_PUBLIC_KEY).is_ok());
        let seed = check_public_key(TEST_SEED).unwrap_err();
        assert_eq!(seed.key, TEST_SEED);
        assert!(seed.to_string().starts_with(&format!("{TEST_SEED:?} is not a public nkey: ")), "{seed}");
        assert!(check_public_key("nope").is_err());
    }
}
