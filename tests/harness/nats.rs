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
}

/// `TILLSYNC_NATS_SERVER`, else the pinned one under `.tools/venv`, else `nats-server` on PATH.
pub(crate) fn nats_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TILLSYNC_NATS_SERVER") {
        return p.into();
    }
    let pinned = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/nats-server");
    if pinned.exists() {
        return pinned;
    }
    "nats-server".into()
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        NatsServer::start_with(None).await
    }

    /// A server that speaks only TLS with `certs`' server certificate and refuses clients
    /// without a certificate signed by `certs`' CA (`verify: true`).
    pub async fn start_tls(certs: &crate::Certs) -> NatsServer {
        NatsServer::start_with(Some(crate::tls::NatsTls::new(certs))).await
    }

    async fn start_with(tls: Option<crate::tls::NatsTls>) -> NatsServer {
        let mut s = NatsServer { bin: nats_bin(), port: free_port(), store: TempDir::new().unwrap(), child: None, tls };
        s.spawn().await;
        s
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn store_dir(&self) -> &std::path::Path {
        self.store.path()
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(&self.bin);
        if let Some(tls) = &self.tls {
            cmd.arg("-c").arg(tls.write_config(self.store.path()));
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
        let (url, tls) = (self.url(), self.tls.clone());
        eventually(Duration::from_secs(15), "nats-server accepting connections with JetStream", || {
            let (url, tls) = (url.clone(), tls.clone());
            async move {
                let client = crate::tls::NatsTls::options(tls.as_ref()).connect(&url).await.ok()?;
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

    pub async fn client(&self) -> async_nats::Client {
        let options = crate::tls::NatsTls::options(self.tls.as_ref());
        options.connect(self.url()).await.expect("connect to test nats-server")
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
