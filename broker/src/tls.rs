//! TLS to NATS: which files to use, checked before connecting, applied in one place so every
//! connection (broker, `tillsync` CLI, benches) treats them the same.

use std::path::PathBuf;

use async_nats::ConnectOptions;

use crate::error::BrokerError;

/// The TLS files of a NATS connection. None of them is needed for a `tls://` URL whose server
/// certificate the system trusts; a client certificate is needed when the server verifies them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFiles {
    /// Root CA certificate (PEM) that signed the NATS server's certificate; trusted instead of
    /// the system's roots. Any TLS file makes TLS required, also for `nats://` URLs.
    #[arg(id = "nats_ca_file", long = "nats-ca-file", env = "NATS_CA_FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that verify clients; needs --nats-key-file.
    #[arg(id = "nats_cert_file", long = "nats-cert-file", env = "NATS_CERT_FILE", global = true)]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate; needs --nats-cert-file.
    #[arg(id = "nats_key_file", long = "nats-key-file", env = "NATS_KEY_FILE", global = true)]
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    fn named(&self) -> [(&'static str, &Option<PathBuf>); 3] {
        [("NATS_CA_FILE", &self.ca), ("NATS_CERT_FILE", &self.cert), ("NATS_KEY_FILE", &self.key)]
    }

    /// The client certificate and key come together, and every file named exists: a typo
    /// fails at start with the variable's name rather than as a handshake error later.
    pub fn validate(&self) -> Result<(), TlsFilesError> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(TlsFilesError::HalfPair);
        }
        match self.named().into_iter().find_map(|(var, p)| Some((var, p.as_ref().filter(|p| !p.is_file())?))) {
            Some((var, path)) => Err(TlsFilesError::NotAFile { var, path: path.clone() }),
            None => Ok(()),
        }
    }

    /// The files as environment variables, for starting a binary with the same settings.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        self.named().into_iter().filter_map(|(var, p)| Some((var, p.as_ref()?.display().to_string()))).collect()
    }
}

/// TLS files that cannot be used, named by the variable that sets them.
#[derive(Debug, thiserror::Error)]
pub enum TlsFilesError {
    #[error("NATS_CERT_FILE and NATS_KEY_FILE must be given together (a client certificate and its key)")]
    HalfPair,
    #[error("{var}: {} is not a readable file", path.display())]
    NotAFile { var: &'static str, path: PathBuf },
}

/// Adds the TLS files to `options`. Whoever names a CA or a client certificate means TLS, so
/// the client then refuses a server that offers none instead of falling back to plain text.
pub fn apply(mut options: ConnectOptions, files: &TlsFiles) -> Result<ConnectOptions, BrokerError> {
    files.validate().map_err(BrokerError::TlsFiles)?;
    if let Some(ca) = &files.ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options.require_tls(files.ca.is_some() || files.cert.is_some()))
}

#[cfg(test)]
mod tests {
    use super::TlsFiles;

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let files = TlsFiles { cert: Some("/etc/hostname".into()), ..TlsFiles::default() };
        assert!(files.validate().unwrap_err().to_string().contains("NATS_KEY_FILE"));
    }

    #[test]
    fn a_missing_file_is_named() {
        let files = TlsFiles { ca: Some("/nonexistent/ca.pem".into()), ..TlsFiles::default() };
        assert!(files.validate().unwrap_err().to_string().contains("NATS_CA_FILE: /nonexistent/ca.pem"));
        assert!(TlsFiles::default().validate().is_ok());
    }
}
