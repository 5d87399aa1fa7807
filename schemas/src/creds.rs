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

/// Which kind `text` is: a seed only when it parses as one, so every caller refuses a
/// mangled seed with the same words before it reaches a NATS server.
pub fn kind(text: &str) -> Result<Creds<'_>, String> {
    if text.contains("BEGIN NATS USER JWT") {
        return Ok(Creds::Jwt);
    }
    let seed = seed_line(text).ok_or("neither a .creds file nor an nkey seed")?;
    nkeys::KeyPair::from_seed(seed).map_err(|e| format!("not an nkey seed: {e}"))?;
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
        assert!(kind("hello").is_err());
        assert!(kind(&format!("S{}", "A".repeat(57))).unwrap_err().contains("not an nkey seed"));
    }
}
