//! Nkey seed files: the one way tillsync reads and writes them (`tillsync auth init`,
//! `tillsync keys`, portal credentials, the broker's keys). A new file is created 0600 and
//! never overwrites one: replacing a key locks out whoever held the old one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nkeys::KeyPair;

/// Reads the seed in `path` (the seed alone, or the first line that is one).
pub fn read_seed(path: &Path) -> Result<KeyPair, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let seed =
        tillsync_schemas::creds::seed_line(&text).ok_or_else(|| format!("{}: not an nkey seed", path.display()))?;
    KeyPair::from_seed(seed).map_err(|e| format!("{}: not an nkey seed: {e}", path.display()))
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
        assert!(super::read_seed(&path).unwrap_err().contains("not an nkey seed"));
    }
}
