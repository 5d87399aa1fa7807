//! What `tillsync auth routes` and `tillsync auth tls` share: a CA of their own, certificates
//! it signs, and files only their owner reads, never replaced. rcgen does the cryptography.

use std::io::{Error, ErrorKind};
use std::path::Path;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA made for one purpose. Its key lives only as long as this value: what it signs is
/// signed right away, so no CA key is left on disk to steal.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    /// `name` plus a random suffix: two CAs made by two runs never look alike, so a
    /// certificate of one is an unknown issuer to the other.
    pub fn new(name: &str) -> std::io::Result<Ca> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
        p.distinguished_name.push(DnType::CommonName, format!("{name} {}", uuid::Uuid::new_v4().simple()));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = p.self_signed(&key).map_err(rcgen_error)?;
        Ok(Ca { cert, key })
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (DNS names, or IP addresses, which become IP entries), for
    /// `usages`, and its new key, both as PEM.
    pub fn sign(
        &self,
        names: &[String],
        common_name: &str,
        usages: &[ExtendedKeyUsagePurpose],
    ) -> std::io::Result<(String, String)> {
        let mut p = CertificateParams::new(names.to_vec()).map_err(rcgen_error)?;
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = usages.to_vec();
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = p.signed_by(&key, &self.cert, &self.key).map_err(rcgen_error)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Fails naming the first of `names` that exists in `dir`, before anything is written: a
/// half-replaced set locks out whoever still holds the old one.
pub fn refuse_existing(dir: &Path, names: &[&str], what: &str) -> std::io::Result<()> {
    match names.iter().find(|n| dir.join(n).exists()) {
        Some(name) => Err(Error::new(ErrorKind::AlreadyExists, format!("{name} exists; {what} are never replaced"))),
        None => Ok(()),
    }
}

/// Mode 0600 from the start (never world-readable for a moment), and never over an existing file.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}

fn rcgen_error(e: rcgen::Error) -> Error {
    Error::other(e.to_string())
}
