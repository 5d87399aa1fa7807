//! TLS to NATS: the bridge's CA and client certificate files, checked at start and applied to
//! its one connection. The broker's `tls` module is the same for the cloud side; the bridge
//! does not depend on the broker, so each crate holds its own.

use std::path::PathBuf;

use async_nats::ConnectOptions;

/// The TLS files of the bridge's NATS connection. A `tls://` URL whose server certificate the
/// system trusts needs none; a server that verifies clients needs the certificate and key.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFiles {
    /// Root CA certificate (PEM) that signed the NATS server's certificate; trusted instead of
    /// the system's roots. Any TLS file makes TLS required, also for `nats://` URLs.
    #[arg(id = "nats_ca_file", long = "nats-ca-file", env = "NATS_CA_FILE")]
    pub ca: Option<PathBuf>,
    /// This device's client certificate (PEM), for servers that verify clients; needs --nats-key-file.
    #[arg(id = "nats_cert_file", long = "nats-cert-file", env = "NATS_CERT_FILE")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate; needs --nats-cert-file.
    #[arg(id = "nats_key_file", long = "nats-key-file", env = "NATS_KEY_FILE")]
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    fn named(&self) -> [(&'static str, &Option<PathBuf>); 3] {
        [("NATS_CA_FILE", &self.ca), ("NATS_CERT_FILE", &self.cert), ("NATS_KEY_FILE", &self.key)]
    }

    /// The certificate and key come together and every file named exists: the bridge retries
    /// its connection forever, so a typo must fail at start, not as endless handshake errors.
    pub fn validate(&self) -> Result<(), TlsFilesError> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(TlsFilesError::Unpaired);
        }
        match self.named().into_iter().find_map(|(var, p)| Some((var, p.as_ref().filter(|p| !p.is_file())?))) {
            Some((var, p)) => Err(TlsFilesError::NotAFile { var, path: p.clone() }),
            None => Ok(()),
        }
    }

    /// The files as environment variables, for starting the binary with the same settings.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        self.named().into_iter().filter_map(|(var, p)| Some((var, p.as_ref()?.display().to_string()))).collect()
    }
}

/// Why [`TlsFiles::validate`] refuses the files: a setting's error, so its text is the whole story.
#[derive(Debug, thiserror::Error)]
pub enum TlsFilesError {
    #[error("NATS_CERT_FILE and NATS_KEY_FILE must be given together (a client certificate and its key)")]
    Unpaired,
    #[error("{var}: {} is not a readable file", path.display())]
    NotAFile { var: &'static str, path: PathBuf },
}

/// Adds the TLS files to `options` (checked by `Config::validate`). Naming a CA or a client
/// certificate means TLS, so the bridge then refuses a server offering plain text.
pub fn apply(mut options: ConnectOptions, files: &TlsFiles) -> ConnectOptions {
    if let Some(ca) = &files.ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    options.require_tls(files.ca.is_some() || files.cert.is_some())
}

#[cfg(test)]
mod tests {
    use super::TlsFiles;

    #[test]
    fn a_key_without_its_certificate_is_refused_and_a_missing_file_named() {
        let files = TlsFiles { key: Some("/etc/hostname".into()), ..TlsFiles::default() };
        assert!(files.validate().unwrap_err().to_string().contains("NATS_CERT_FILE"));
        let files = TlsFiles { ca: Some("/nonexistent/ca.pem".into()), ..TlsFiles::default() };
        assert!(files.validate().unwrap_err().to_string().contains("NATS_CA_FILE: /nonexistent/ca.pem"));
    }
}
