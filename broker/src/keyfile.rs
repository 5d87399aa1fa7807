//! Nkey seed files: the one way tillsync reads and writes them (`tillsync auth init`,
//! `tillsync keys`, portal credentials, the broker's keys). A new file is created 0600 and
//! never overwrites one: replacing a key locks out whoever held the old one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nkeys::KeyPair;

/// A seed file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No line is a seed (`source` is `None`), or the one that looks like it is not valid.
    #[error("{}: not an nkey seed", path.display())]
    NotASeed {
        path: PathBuf,
        #[source]
        source: Option<nkeys::error::Error>,
    },
}

/// Reads the seed in `path` (the seed alone, or the first line that is one).
pub fn read_seed(path: &Path) -> Result<KeyPair, SeedError> {
    let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read { path: path.into(), source })?;
    let not_a_seed = |source| SeedError::NotASeed { path: path.into(), source };
    let seed = tillsync_schemas::creds::seed_line(&text).ok_or_else(|| not_a_seed(None))?;
    KeyPair::from_seed(seed).map_err(|e| not_a_seed(Some(e)))
}

/// Writes `key`'s seed to a new file, mode 0600; an existing file is an error.
pub fn write_new(path: &Path, key: &KeyPair) -> std::io::Result<()> {
    let seed = key.seed().map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    writeln!(f, "{seed}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_seed_written_is_read_back_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.nk");
        let key = nkeys::KeyPair::new_user();
        super::write_new(&path, &key).unwrap();
        assert_eq!(super::read_seed(&path).unwrap().public_key(), key.public_key());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(super::write_new(&path, &nkeys::KeyPair::new_user()).is_err());
        std::fs::write(&path, "nothing").unwrap();
        assert!(super::read_seed(&path).unwrap_err().to_string().contains("not an nkey seed"));
    }
}
