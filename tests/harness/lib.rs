//! The integration-test harness: real servers, owned by each test.
//!
//! - [`NatsServer`] starts its own `nats-server` with JetStream on a random port and a temp
//!   store dir, kills it on drop, and can be stopped and restarted inside a test.
//! - [`NatsCluster`] does the same for a JetStream cluster of several nodes.
//! - [`TestDb`] creates a fresh Postgres database with the migrations applied, dropped after.
//! - [`Certs`] makes a CA and server and client certificates for the TLS tests.
//! - [`TlsPostgres`] runs a private Postgres cluster that accepts only TLS clients.
//! - [`eventually`] polls with a timeout instead of sleeping.
//! - [`BrokerProc`] and [`InProcBroker`] run the broker as a child process (for kill -9) or a task.

mod approvers;
mod auth;
mod broker;
mod cluster;
mod db;
mod nats;
mod poll;
mod postgres;
mod scrape;
mod tls;

pub use approvers::{approval_by, approve, approver_key, register_test_approvers, APPROVERS};
pub use auth::{activation_code, code_for, AuthSetup};
pub use broker::{bin_path, BrokerProc, InProcBroker};
pub use cluster::NatsCluster;
pub use db::TestDb;
pub use nats::{free_port, nats_bin, NatsServer};
pub use poll::{eventually, eventually_eq, DEFAULT_TIMEOUT};
pub use postgres::TlsPostgres;
pub use scrape::{free_addr, http_get, inproc_broker_metric, metric};
pub use tls::Certs;

/// Logs for a failing test: `RUST_LOG=debug cargo test ...`. Also repeats a panic's message
/// after its backtrace: CI keeps the first and the last lines of a failing test's output, and a
/// test's warnings and a backtrace otherwise push the message out of both.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let at = info.location().map(|l| l.to_string()).unwrap_or_default();
            eprintln!("panic (repeated after the backtrace) at {at}: {message}");
        }));
    });
}

/// A test's world: its own nats-server and its own database.
pub struct Stack {
    pub nats: NatsServer,
    pub db: TestDb,
    /// Set when NATS runs with authorization ([`Stack::start_with_auth`]).
    pub auth: Option<AuthSetup>,
    /// Set for the production topology ([`Stack::start_production`]): the client certificates.
    pub certs: Option<Certs>,
}

impl Stack {
    pub async fn start() -> Stack {
        init_tracing();
        let (nats, db) = tokio::join!(NatsServer::start(), TestDb::new());
        Stack { nats, db, auth: None, certs: None }
    }

    /// The same with NATS authorization on: the broker answers auth callouts, bridges must be
    /// activated, and `nats.client()` is the operator.
    pub async fn start_with_auth() -> Stack {
        init_tracing();
        let auth = AuthSetup::new();
        let (nats, db) = tokio::join!(NatsServer::start_with_auth(&auth), TestDb::new());
        Stack { nats, db, auth: Some(auth), certs: None }
    }

    /// The production topology (docs/security.md): a 3-node cluster with authorization, client
    /// TLS and secured routes in place of one server, R3 streams, and clients given the TLS
    /// files. Tests written against [`Stack::start_with_auth`] run on it unchanged as long as
    /// they reach NATS through [`NatsServer::url`], [`NatsServer::with_tls`] and
    /// [`Stack::broker_config`], and do not restart it.
    pub async fn start_production() -> Stack {
        init_tracing();
        let (auth, certs) = (AuthSetup::new(), Certs::generate());
        let (nats, db) = tokio::join!(NatsServer::start_production(&auth, &certs), TestDb::new());
        Stack { nats, db, auth: Some(auth), certs: Some(certs) }
    }

    /// A broker config pointing at this stack's servers, with test-friendly timings.
    pub fn broker_config(&self) -> tillsync_broker::config::Config {
        let mut c = tillsync_broker::config::Config::for_tests(&self.nats.url(), &self.db.url);
        if let Some(auth) = &self.auth {
            auth.broker(&mut c);
        }
        if let Some(certs) = &self.certs {
            c.nats_tls = certs.broker_files();
        }
        if self.nats.is_cluster() {
            c.stream_replicas = 3;
        }
        c
    }

    /// A bridge's config for `addr` on this stack (TLS files included when it has them).
    pub fn edge_config(&self, addr: &tillsync_schemas::DeviceAddr, db: std::path::PathBuf) -> tillsync_edge::Config {
        let mut c = tillsync_edge::Config::for_tests(addr, &self.nats.url(), db);
        if let Some(certs) = &self.certs {
            c.nats_tls = certs.edge_files();
        }
        c
    }
}
