use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::poll::eventually;

/// A real nats-server with JetStream, private to one test.
pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    store: TempDir,
    child: Option<Child>,
    /// Set by [`NatsServer::start_tls`]: the server's certificates, and the client's to reach it.
    tls: Option<crate::tls::NatsTls>,
    /// Set by [`NatsServer::start_with_auth`]: the server config and the operator's credentials.
    auth: Option<(PathBuf, PathBuf)>,
    /// Set by [`NatsServer::start_production`]: the secured cluster that stands in for the
    /// single server (URLs, clients); `child` is then `None`.
    cluster: Option<crate::NatsCluster>,
}

/// `TILLSYNC_NATS_SERVER`, else the pinned one under `.tools/venv`, else `nats-server` on PATH.
pub fn nats_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TILLSYNC_NATS_SERVER") {
        return p.into();
    }
    let pinned = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/nats-server");
    if pinned.exists() {
        return pinned;
    }
    "nats-server".into()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        NatsServer::start_with(None, None).await
    }

    /// A server with authorization on: service users from `auth`, everyone else decided by
    /// a broker's auth callout (so nothing but the service users connects until one runs).
    pub async fn start_with_auth(auth: &crate::AuthSetup) -> NatsServer {
        let conf = auth.scratch().join("nats-server.conf");
        std::fs::write(&conf, auth.server_conf()).unwrap();
        NatsServer::start_with(None, Some((conf, auth.operator_creds()))).await
    }

    /// A server that speaks only TLS with `certs`' server certificate and refuses clients
    /// without a certificate signed by `certs`' CA (`verify: true`).
    pub async fn start_tls(certs: &crate::Certs) -> NatsServer {
        NatsServer::start_with(Some(crate::tls::NatsTls::new(certs)), None).await
    }

    /// The production topology in place of one server: a 3-node cluster with `auth`'s
    /// authorization, client TLS with `certs` (a client certificate required) and secured
    /// routes ([`crate::NatsCluster::start_secured`]). [`NatsServer::url`] names every node,
    /// [`NatsServer::options`] carries the TLS settings; it cannot be stopped or restarted as one.
    pub async fn start_production(auth: &crate::AuthSetup, certs: &crate::Certs) -> NatsServer {
        let cluster = crate::NatsCluster::start_secured(3, auth, certs).await;
        NatsServer {
            bin: nats_bin(),
            port: 0,
            store: TempDir::new().unwrap(),
            child: None,
            tls: Some(crate::tls::NatsTls::new(certs)),
            auth: Some((PathBuf::new(), auth.operator_creds())),
            cluster: Some(cluster),
        }
    }

    async fn start_with(tls: Option<crate::tls::NatsTls>, auth: Option<(PathBuf, PathBuf)>) -> NatsServer {
        let store = TempDir::new().unwrap();
        let mut s = NatsServer { bin: nats_bin(), port: free_port(), store, child: None, tls, auth, cluster: None };
        s.spawn().await;
        s
    }

    /// Where clients connect: this server, or every node of the production topology.
    pub fn url(&self) -> String {
        if let Some(c) = &self.cluster {
            return c.urls();
        }
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
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
        crate::tls::NatsTls::add_to(options, self.tls.as_ref())
    }

    /// The TLS files a client needs, as `NATS_CA_FILE`, `NATS_CERT_FILE` and `NATS_KEY_FILE`.
    pub fn tls_env(&self) -> Vec<(&'static str, String)> {
        self.tls.as_ref().map(crate::tls::NatsTls::env).unwrap_or_default()
    }

    pub fn store_dir(&self) -> &std::path::Path {
        self.store.path()
    }

    async fn spawn(&mut self) {
        assert!(self.cluster.is_none(), "the production topology is not stopped or restarted as one server");
        let mut cmd = Command::new(&self.bin);
        if let Some(tls) = &self.tls {
            cmd.arg("-c").arg(tls.write_config(self.store.path()));
        } else if let Some((conf, _)) = &self.auth {
            cmd.arg("-c").arg(conf);
        }
        let child = cmd
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {}: {e} (run ./scripts/test.sh, which installs it)", self.bin.display())
            });
        self.child = Some(child);
        let (url, tls, creds) = (self.url(), self.tls.clone(), self.creds());
        eventually(Duration::from_secs(15), "nats-server accepting connections with JetStream", || {
            let (url, tls, creds) = (url.clone(), tls.clone(), creds.clone());
            async move {
                let client = connect_as(&url, tls.as_ref(), creds.as_deref()).await.ok()?;
                async_nats::jetstream::new(client).query_account().await.ok().map(|_| ())
            }
        })
        .await;
    }

    /// Kills the server (SIGKILL), as a WAN cut or crash would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store: streams and consumers survive.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// A client with every permission (the operator's user when authorization is on).
    pub async fn client(&self) -> async_nats::Client {
        if let Some(c) = &self.cluster {
            return c.client().await;
        }
        let creds = self.creds();
        connect_as(&self.url(), self.tls.as_ref(), creds.as_deref()).await.expect("connect to test nats-server")
    }

    fn creds(&self) -> Option<PathBuf> {
        self.auth.as_ref().map(|(_, c)| c.clone())
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }
}

async fn connect_as(
    url: &str,
    tls: Option<&crate::tls::NatsTls>,
    creds: Option<&std::path::Path>,
) -> Result<async_nats::Client, String> {
    let mut options = crate::tls::NatsTls::options(tls);
    if let Some(c) = creds {
        options = tillsync_broker::nats::credentials(options, c).await.map_err(|e| e.to_string())?;
    }
    options.connect(url).await.map_err(|e| e.to_string())
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
