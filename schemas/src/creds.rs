//! What a NATS credentials option (`NATS_CREDS`, `--nats-creds`) holds, read one way by the
//! broker, the CLI and the bridge: a `.creds` file (a user JWT and its seed, as `nsc` writes
//! them) or a bare nkey seed file (`tillsync auth init`, `tillsync keys generate`).

/// The kind of a credentials file's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creds<'a> {
    /// A user JWT with its seed: the NATS client reads the file itself.
    Jwt,
    /// A bare nkey seed (`SU...`): the client proves the key by signing the server's nonce.
    Seed(&'a str),
}

/// Why a credentials file's text is neither kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredsError {
    /// No user JWT and no line shaped like a seed.
    #[error("neither a .creds file nor an nkey seed")]
    Unrecognised,
    /// A line shaped like a seed that nkeys refuses. `why` is nkeys' text: its error is neither
    /// `Clone` nor `PartialEq`, and what it says (a bad checksum, a bad length) is the detail.
    #[error("not an nkey seed: {why}")]
    NotASeed { why: String },
}

/// Which kind `text` is: a seed only when it parses as one, so every caller refuses a
/// mangled seed with the same words before it reaches a NATS server.
pub fn kind(text: &str) -> Result<Creds<'_>, CredsError> {
    if text.contains("BEGIN NATS USER JWT") {
        return Ok(Creds::Jwt);
    }
    let seed = seed_line(text).ok_or(CredsError::Unrecognised)?;
    nkeys::KeyPair::from_seed(seed).map_err(|e| CredsError::NotASeed { why: e.to_string() })?;
    Ok(Creds::Seed(seed))
}

/// The first line of `text` shaped like an nkey seed (`S` and 57 more characters).
pub fn seed_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| l.starts_with('S') && l.len() == 58)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_creds_file_and_a_seed_file_are_told_apart() {
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        assert_eq!(kind(&format!("{seed}\n")), Ok(Creds::Seed(seed.as_str())));
        let creds = format!("-----BEGIN NATS USER JWT-----\neyJ0\n------END NATS USER JWT------\n\n{seed}\n");
        assert_eq!(kind(&creds), Ok(Creds::Jwt));
        assert_eq!(kind("hello"), Err(CredsError::Unrecognised));
        let mangled = kind(&format!("S{}", "A".repeat(57))).unwrap_err();
        assert!(matches!(mangled, CredsError::NotASeed { .. }), "{mangled:?}");
        assert!(mangled.to_string().starts_with("not an nkey seed: "), "{mangled}");
    }
}
