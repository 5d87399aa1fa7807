//! A private Postgres cluster that speaks TLS, for the tests of `sslmode` and of Postgres
//! outages ([`TlsPostgres::stop`]): [`tillsync_testkit::PgServer`] with a [`Certs`] server
//! certificate, accepting only TLS clients, panicking instead of returning errors.

use std::path::Path;

use tillsync_testkit::{PgOptions, PgServer};

use crate::Certs;

pub struct TlsPostgres {
    inner: PgServer,
    pub port: u16,
}

impl TlsPostgres {
    /// Initialises and starts the cluster with `certs`' server certificate.
    pub fn start(certs: &Certs) -> TlsPostgres {
        let options =
            PgOptions { tls: Some((certs.server_cert.clone(), certs.server_key.clone())), ..Default::default() };
        let inner = PgServer::start(options).unwrap_or_else(|e| panic!("{e}"));
        TlsPostgres { port: inner.port(), inner }
    }

    /// Starts the cluster (again, after [`TlsPostgres::stop`]) on the same port and data.
    pub fn start_again(&mut self) {
        self.inner.start_again().unwrap_or_else(|e| panic!("{e}"));
    }

    /// A real outage: `pg_ctl stop -m immediate`, so connections break and new ones are refused.
    pub fn stop(&mut self) {
        self.inner.stop().unwrap_or_else(|e| panic!("{e}"));
    }

    /// From now on TCP connections need the `postgres` user's password, `password`
    /// (scram-sha-256); the local socket stays trusted.
    pub async fn require_password(&self, password: &str) {
        self.inner.require_password(password).await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// A URL of its `postgres` database with the given query (`sslmode=...&sslrootcert=...`).
    pub fn url(&self, query: &str) -> String {
        self.inner.url_with(query)
    }

    /// `sslmode=verify-full` trusting `ca`: the server's certificate must chain to it and name 127.0.0.1.
    pub fn verify_full_url(&self, ca: &Path) -> String {
        self.inner.verify_full_url(ca)
    }
}
