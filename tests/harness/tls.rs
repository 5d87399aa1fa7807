//! Certificates for the TLS tests, made at test time with rcgen: a CA, a server certificate
//! for 127.0.0.1 and localhost, and a client certificate, as PEM files in a temp dir. Nothing
//! is checked in, so nothing expires or leaks; a second `Certs` is a CA nobody trusts.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use tempfile::TempDir;

/// One CA and the certificates it signed, as files.
pub struct Certs {
    dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Certs {
    pub fn generate() -> Certs {
        let dir = TempDir::new().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params().self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = leaf_params("tillsync test server", ExtendedKeyUsagePurpose::ServerAuth)
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client = leaf_params("tillsync test client", ExtendedKeyUsagePurpose::ClientAuth)
            .signed_by(&client_key, &ca, &ca_key)
            .unwrap();
        let write = |name: &str, pem: String| write_private(dir.path(), name, &pem);
        Certs {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server.key", server_key.serialize_pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's and the CLI's NATS TLS options: trust this CA, present the client certificate.
    pub fn broker_files(&self) -> tillsync_broker::admin::nats::TlsFiles {
        tillsync_broker::admin::nats::TlsFiles {
            ca: Some(self.ca.clone()),
            cert: Some(self.client_cert.clone()),
            key: Some(self.client_key.clone()),
        }
    }

    /// The same for the edge bridge.
    pub fn edge_files(&self) -> tillsync_edge::tls::TlsFiles {
        let b = self.broker_files();
        tillsync_edge::tls::TlsFiles { ca: b.ca, cert: b.cert, key: b.key }
    }
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    // A name of its own, so another `Certs`' CA is an unknown issuer, not a look-alike.
    p.distinguished_name.push(DnType::CommonName, format!("tillsync test CA {}", uuid::Uuid::new_v4().simple()));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

/// A certificate for both names the tests dial, so hostname verification has something to check.
fn leaf_params(name: &str, usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![usage];
    p
}

/// Mode 0600: Postgres refuses a key file others can read.
fn write_private(dir: &Path, name: &str, pem: &str) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
    f.write_all(pem.as_bytes()).unwrap();
    path
}

/// What a TLS nats-server needs: its config block, and the client options of the harness's
/// own connections (readiness checks, [`crate::NatsServer::client`]).
#[derive(Clone)]
pub(crate) struct NatsTls {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl NatsTls {
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        let f = |p: &Path| p.display().to_string();
        vec![
            ("NATS_CA_FILE", f(&self.ca)),
            ("NATS_CERT_FILE", f(&self.client_cert)),
            ("NATS_KEY_FILE", f(&self.client_key)),
        ]
    }

    pub(crate) fn new(certs: &Certs) -> NatsTls {
        NatsTls {
            ca: certs.ca.clone(),
            server_cert: certs.server_cert.clone(),
            server_key: certs.server_key.clone(),
            client_cert: certs.client_cert.clone(),
            client_key: certs.client_key.clone(),
        }
    }

    /// The server's `tls` block; `verify: true` makes the server demand a client certificate
    /// signed by `ca_file`.
    pub(crate) fn config_text(&self) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 5\n}}\n",
            self.server_cert, self.server_key, self.ca
        )
    }

    pub(crate) fn options(tls: Option<&NatsTls>) -> async_nats::ConnectOptions {
        NatsTls::add_to(async_nats::ConnectOptions::new(), tls)
    }

    pub(crate) fn add_to(options: async_nats::ConnectOptions, tls: Option<&NatsTls>) -> async_nats::ConnectOptions {
        match tls {
            Some(t) => options
                .add_root_certificates(t.ca.clone())
                .add_client_certificate(t.client_cert.clone(), t.client_key.clone())
                .require_tls(true),
            None => options,
        }
    }
}
