//! The broker's command signing key ([`tillsync_schemas::signature`]): loaded once at start from
//! `--signing-key-file`, it signs every delivery. A second key (`--signing-key-next-file`) is
//! only advertised, so bridges can trust it before the broker switches to it (rotation).

use std::path::Path;

use nkeys::KeyPair;
use tillsync_schemas::signature;

use crate::error::BrokerError;

pub struct Signer {
    current: KeyPair,
    /// Public key of the next key, trusted by bridges ahead of the switch; never signs here.
    next: Option<String>,
}

impl std::fmt::Debug for Signer {
    // The seed must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("current", &self.current.public_key()).field("next", &self.next).finish()
    }
}

impl Signer {
    /// Reads the key files (`--signing-key-file`, `--signing-key-next-file`); a broker without
    /// a usable key must not start, since every bridge would refuse its commands. The paths,
    /// not the whole configuration: the configuration's test defaults name `test_key_file`.
    pub fn load(current: Option<&Path>, next: Option<&Path>) -> Result<Signer, BrokerError> {
        let path = current.ok_or(BrokerError::NoSigningKey)?;
        let current = read_seed(path)?;
        let next = match next {
            Some(p) => Some(read_seed(p)?.public_key()),
            None => None,
        };
        Ok(Signer { current, next })
    }

    /// The public key of the key that signs, sent in the `Tillsync-Key` header.
    pub fn public_key(&self) -> String {
        self.current.public_key()
    }

    /// The `Tillsync-Signature` of `payload` delivered on `subject`.
    pub fn sign(&self, subject: &str, payload: &[u8]) -> String {
        signature::sign(&self.current, subject, payload)
    }

    /// What bridges should trust: the current key and, during a rotation, the next one.
    pub fn trusted_public_keys(&self) -> Vec<String> {
        std::iter::once(self.current.public_key()).chain(self.next.clone()).collect()
    }
}

fn read_seed(path: &Path) -> Result<KeyPair, BrokerError> {
    crate::keyfile::read_seed(path).map_err(BrokerError::SigningKey)
}

/// A file holding [`signature::TEST_SEED`], shared by every broker a test run starts (the
/// content is fixed, so concurrent writers agree; the rename makes each write atomic). Test
/// scaffolding: only in tests and with the `test-support` feature.
#[cfg(any(test, feature = "test-support"))]
pub fn test_key_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join("tillsync-test-signing-key.nk");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(signature::TEST_SEED) {
        let tmp = path.with_extension(format!("{}.{:?}.tmp", std::process::id(), std::thread::current().id()));
        std::fs::write(&tmp, signature::TEST_SEED).expect("writing the test signing key");
        std::fs::rename(&tmp, &path).expect("placing the test signing key");
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_test_key_and_advertises_the_next() {
        let key = test_key_file();
        let signer = Signer::load(Some(&key), None).unwrap();
        assert_eq!(signer.trusted_public_keys(), vec![signature::TEST_PUBLIC_KEY.to_string()]);
        let dir = tempfile::tempdir().unwrap();
        let next = KeyPair::new_user();
        std::fs::write(dir.path().join("next.nk"), next.seed().unwrap()).unwrap();
        let signer = Signer::load(Some(&key), Some(&dir.path().join("next.nk"))).unwrap();
        assert_eq!(signer.public_key(), signature::TEST_PUBLIC_KEY);
        assert_eq!(signer.trusted_public_keys(), vec![signature::TEST_PUBLIC_KEY.to_string(), next.public_key()]);
    }

    #[test]
    fn refuses_a_missing_unreadable_or_invalid_key() {
        assert!(Signer::load(None, None).unwrap_err().to_string().contains("TILLSYNC_SIGNING_KEY_FILE"));
        // The file's trouble is the cause, printed after the key it concerns.
        let refused = |p: &Path| crate::error::Chain(&Signer::load(Some(p), None).unwrap_err()).to_string();
        let missing = Path::new("/nonexistent/key.nk");
        assert!(refused(missing).starts_with("command signing key: cannot read /nonexistent/key.nk: "));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.nk"), signature::TEST_PUBLIC_KEY).unwrap();
        assert!(refused(&dir.path().join("bad.nk")).contains("not an nkey seed"));
    }
}
