//! The tests' nats-server: [`tillsync_testkit::NatsServer`] with the harness's TLS,
//! authorization and production topology, panicking instead of returning errors.

use std::path::PathBuf;

use tillsync_testkit::{Connect, NatsOptions};

use crate::tls::NatsTls;

pub use tillsync_testkit::nats_bin;

/// A real nats-server with JetStream, private to one test.
pub struct NatsServer {
    /// `None` for the production topology, where `cluster` stands in for it.
    server: Option<tillsync_testkit::NatsServer>,
    /// Set by [`NatsServer::start_tls`]: the server's certificates, and the client's to reach it.
    tls: Option<NatsTls>,
    /// Set by [`NatsServer::start_production`]: the secured cluster that stands in for the
    /// single server (URLs, clients).
    cluster: Option<crate::NatsCluster>,
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    tillsync_testkit::free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// How the harness's own connections reach a server: its client TLS and operator credentials.
pub(crate) fn connect_as(tls: Option<NatsTls>, creds: Option<PathBuf>) -> Connect {
    Connect::new(move || {
        let (tls, creds) = (tls.clone(), creds.clone());
        async move {
            let options = NatsTls::options(tls.as_ref());
            match creds {
                Some(c) => Ok(tillsync_broker::admin::nats::credentials(options, &c).await?),
                None => Ok(options),
            }
        }
    })
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        NatsServer::start_with(None, None).await
    }

    /// A server with authorization on: service users from `auth`, everyone else decided by
    /// a broker's auth callout (so nothing but the service users connects until one runs).
    pub async fn start_with_auth(auth: &crate::AuthSetup) -> NatsServer {
        NatsServer::start_with(None, Some((auth.server_conf(), auth.operator_creds()))).await
    }

    /// A server that speaks only TLS with `certs`' server certificate and refuses clients
    /// without a certificate signed by `certs`' CA (`verify: true`).
    pub async fn start_tls(certs: &crate::Certs) -> NatsServer {
        NatsServer::start_with(Some(NatsTls::new(certs)), None).await
    }

    /// The production topology in place of one server: a 3-node cluster with `auth`'s
    /// authorization, client TLS with `certs` (a client certificate required) and secured
    /// routes ([`crate::NatsCluster::start_secured`]). [`NatsServer::url`] names every node,
    /// [`NatsServer::with_tls`] carries the TLS settings; it cannot be stopped or restarted as one.
    pub async fn start_production(auth: &crate::AuthSetup, certs: &crate::Certs) -> NatsServer {
        let cluster = crate::NatsCluster::start_secured(3, auth, certs).await;
        NatsServer { server: None, tls: Some(NatsTls::new(certs)), cluster: Some(cluster) }
    }

    /// A TLS server, or one with `auth`'s (config, operator credentials).
    async fn start_with(tls: Option<NatsTls>, auth: Option<(String, PathBuf)>) -> NatsServer {
        let config = match (&tls, &auth) {
            (Some(t), _) => t.config_text(),
            (None, Some((conf, _))) => conf.clone(),
            (None, None) => String::new(),
        };
        let creds = auth.map(|(_, creds)| creds);
        let options =
            NatsOptions { config, tls: tls.is_some(), connect: connect_as(tls.clone(), creds), ..Default::default() };
        let server = tillsync_testkit::NatsServer::start(options).await.unwrap_or_else(|e| panic!("{e}"));
        NatsServer { server: Some(server), tls, cluster: None }
    }

    fn server(&self) -> &tillsync_testkit::NatsServer {
        self.server.as_ref().expect("the production topology is not stopped or restarted as one server")
    }

    /// Where clients connect: this server, or every node of the production topology.
    pub fn url(&self) -> String {
        match &self.cluster {
            Some(c) => c.urls(),
            None => self.server().url(),
        }
    }

    /// [`NatsServer::url`] as a list, for `ConnectOptions::connect` (which takes no commas).
    pub fn addrs(&self) -> Vec<String> {
        self.url().split(',').map(str::to_string).collect()
    }

    /// True for the production topology ([`NatsServer::start_production`]).
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// `options` with this server's client TLS (trust its CA, present the client certificate)
    /// when it has any; unchanged otherwise.
    pub fn with_tls(&self, options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        NatsTls::add_to(options, self.tls.as_ref())
    }

    /// The TLS files a client needs, as `NATS_CA_FILE`, `NATS_CERT_FILE` and `NATS_KEY_FILE`.
    pub fn tls_env(&self) -> Vec<(&'static str, String)> {
        self.tls.as_ref().map(NatsTls::env).unwrap_or_default()
    }

    pub fn store_dir(&self) -> PathBuf {
        self.server().store_dir()
    }

    /// Kills the server (SIGKILL), as a WAN cut or crash would.
    pub fn stop(&mut self) {
        if let Some(s) = self.server.as_mut() {
            s.kill();
        }
    }

    /// Starts it again on the same port with the same store: streams and consumers survive.
    pub async fn restart(&mut self) {
        let server = self.server.as_mut().expect("the production topology is not restarted as one server");
        server.restart().await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// A client with every permission (the operator's user when authorization is on).
    pub async fn client(&self) -> async_nats::Client {
        if let Some(c) = &self.cluster {
            return c.client().await;
        }
        self.server().client().await.expect("connect to test nats-server")
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }
}
