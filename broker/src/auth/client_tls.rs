//! `tillsync auth tls`: TLS for the connections of clients (broker, CLI, bridges) to
//! nats-server, for a local or demo setup that has no certificate authority of its own.
//!
//! Writes a client CA, the server's certificate for the host names clients dial, one client
//! certificate that every client of the setup presents, and `tls.conf` (to `include` at the
//! top level of the server config) with `verify: true`: a client without a certificate signed
//! by that CA gets no connection, and none gets one in plain text. The CA's key is not kept:
//! no more certificates can be signed by it, so none can be stolen off this disk. For more
//! clients, or a device each, generate a new set (everyone then needs the new files) or use a
//! real CA. The certificates are made with rcgen; nothing here is cryptography of our own.

use std::io::{Error, ErrorKind};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::ExtendedKeyUsagePurpose;

use crate::auth::pki::{refuse_existing, write_private, Ca};

/// File names written into the directory (next to `auth init`'s keys, if it is the same).
pub const TLS_CONF: &str = "tls.conf";
pub const CA: &str = "ca.pem";
pub const SERVER_CERT: &str = "nats-server.pem";
pub const SERVER_KEY: &str = "nats-server-key.pem";
pub const CLIENT_CERT: &str = "client.pem";
pub const CLIENT_KEY: &str = "client-key.pem";

/// Writes the CA, the server's and the client's certificates and keys, and `tls.conf` into
/// `dir` (mode 0600; the directory 0700 when made here). `hosts`: every name or IP address
/// clients dial the server by; `nats_dir`: where nats-server sees `dir` (`tls.conf` names the
/// files by that path). Errors: `InvalidInput` for a bad host (nothing written),
/// `AlreadyExists` naming a file that exists (nothing written), else the write that failed.
pub fn generate(dir: &Path, nats_dir: &Path, hosts: &[String]) -> std::io::Result<PathBuf> {
    if hosts.is_empty() {
        return Err(Error::new(ErrorKind::InvalidInput, "name the hosts clients dial the server by (--host NAME)"));
    }
    for host in hosts {
        check_host(host).map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
    }
    let files = [TLS_CONF, CA, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY];
    refuse_existing(dir, &files, "TLS files")?;
    let ca = Ca::new("tillsync NATS client CA")?;
    let (server_cert, server_key) = ca.sign(hosts, "tillsync NATS server", &[ExtendedKeyUsagePurpose::ServerAuth])?;
    // No names: the server checks only that the certificate chains to the CA.
    let (client_cert, client_key) = ca.sign(&[], "tillsync NATS client", &[ExtendedKeyUsagePurpose::ClientAuth])?;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    write_private(&dir.join(CA), &ca.pem())?;
    write_private(&dir.join(SERVER_CERT), &server_cert)?;
    write_private(&dir.join(SERVER_KEY), &server_key)?;
    write_private(&dir.join(CLIENT_CERT), &client_cert)?;
    write_private(&dir.join(CLIENT_KEY), &client_key)?;
    write_private(&dir.join(TLS_CONF), &tls_conf(nats_dir))?;
    Ok(dir.join(TLS_CONF))
}

/// The top-level `tls {}` block.
fn tls_conf(nats_dir: &Path) -> String {
    let file = |n: &str| nats_dir.join(n).display().to_string();
    format!(
        "# tillsync: client TLS (written by `tillsync auth tls`; docs/security.md).
# Include at the top level of the server config. Clients connect only over TLS and only with a
# certificate signed by {ca} (verify: true).
tls {{
  cert_file: \"{cert}\"
  key_file: \"{key}\"
  ca_file: \"{ca}\"
  verify: true
  timeout: 5
}}
",
        ca = file(CA),
        cert = file(SERVER_CERT),
        key = file(SERVER_KEY),
    )
}

/// An IP address, or a DNS name: dot-separated labels of 1 to 63 letters, digits, hyphens and
/// underscores (container names have them), none starting or ending with a hyphen. A port or a URL is refused here, by name, rather
/// than becoming a certificate no client can match.
pub fn check_host(host: &str) -> Result<(), NotAHost> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.len() <= 253 && host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(NotAHost(host.to_string()))
    }
}

/// A name given as a certificate's host that is not one.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a host name or IP address (give it without port or scheme)")]
pub struct NotAHost(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn every_file_is_private_the_config_names_them_where_nats_sees_them_and_none_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["nats".to_string(), "127.0.0.1".to_string()];
        let conf = generate(dir.path(), Path::new("/etc/nats/auth"), &hosts).unwrap();
        let text = std::fs::read_to_string(&conf).unwrap();
        for line in
            ["verify: true", "cert_file: \"/etc/nats/auth/nats-server.pem\"", "ca_file: \"/etc/nats/auth/ca.pem\""]
        {
            assert!(text.contains(line), "{line} in {text}");
        }
        for name in [TLS_CONF, CA, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY] {
            assert_eq!(mode(&dir.path().join(name)), 0o600, "{name}");
        }
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names.len(), 6, "no CA key or anything else is kept: {names:?}");

        let again = generate(dir.path(), dir.path(), &hosts).unwrap_err();
        assert_eq!(again.kind(), ErrorKind::AlreadyExists);
        assert!(again.to_string().contains("tls.conf exists"), "{again}");
    }

    #[test]
    fn a_host_with_a_port_or_scheme_is_refused_before_anything_is_written() {
        for ok in ["localhost", "nats-2", "nats_1", "nats.example.com", "127.0.0.1", "::1"] {
            assert!(check_host(ok).is_ok(), "{ok}");
        }
        for bad in ["", "nats:4222", "tls://nats", "-nats", "a..b", "ünïcode"] {
            assert!(check_host(bad).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("auth");
        let err = generate(&target, &target, &["localhost".into(), "nats:4222".into()]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("\"nats:4222\""), "{err}");
        assert!(!target.exists(), "nothing written");
        assert_eq!(generate(&target, &target, &[]).unwrap_err().kind(), ErrorKind::InvalidInput);
    }
}
