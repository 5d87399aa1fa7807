//! A three-node (or n-node) nats-server cluster with JetStream, private to one test.
//!
//! Every node listens on loopback only, keeps its own store dir and config file, and can be
//! killed and restarted on the same ports with the same store, so R3 streams survive a node.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use tempfile::TempDir;

use crate::nats::{free_port, nats_bin};
use crate::poll::eventually;
use crate::tls::NatsTls;
use crate::{AuthSetup, Certs};

/// How long a node (or the whole cluster) may take to form and elect JetStream leaders.
const READY: Duration = Duration::from_secs(30);

struct Node {
    port: u16,
    config: PathBuf,
    child: Option<Child>,
}

pub struct NatsCluster {
    bin: PathBuf,
    nodes: Vec<Node>,
    /// Set by [`NatsCluster::start_secured`]: client TLS and the operator's credentials.
    access: Option<Access>,
    _dir: TempDir,
}

/// How the harness's own connections reach a secured cluster.
#[derive(Clone)]
struct Access {
    tls: NatsTls,
    creds: PathBuf,
}

/// What a secured node adds to its config: the generated authorization (accounts, service
/// users, auth callout), client TLS with `verify: true`, and `tillsync auth routes`' route
/// security (which also lists the routes).
struct Secured {
    auth_conf: String,
    tls_conf: String,
    routes_conf: String,
}

fn node_config(i: usize, dir: &std::path::Path, port: u16, cluster_ports: &[u16], secured: Option<&Secured>) -> String {
    let store = dir.join(format!("n{i}"));
    let head = format!("server_name: n{i}\nlisten: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {store:?} }}\n");
    let cport = cluster_ports[i];
    match secured {
        None => {
            let routes: Vec<String> = cluster_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            format!(
                "{head}cluster {{ name: tillsync-test, listen: \"127.0.0.1:{cport}\", routes: [{}] }}\n",
                routes.join(", ")
            )
        }
        Some(s) => format!(
            "{head}{auth}\n{tls}\ncluster {{\n  name: tillsync-test\n  listen: \"127.0.0.1:{cport}\"\n{routes}\n}}\n",
            auth = s.auth_conf,
            tls = s.tls_conf,
            routes = s.routes_conf,
        ),
    }
}

impl NatsCluster {
    /// Starts `n` nodes and waits until JetStream can place an R`n` stream, i.e. there is a meta
    /// leader and every peer takes part.
    pub async fn start(n: usize) -> NatsCluster {
        NatsCluster::start_with(n, None, |_, _| None).await
    }

    /// The production topology's NATS: `n` nodes, each with the authorization `tillsync auth
    /// init` generates (devices and portals admitted by a broker's auth callout), TLS for
    /// clients with `certs` (a client certificate required), and routes authenticated and
    /// encrypted as `tillsync auth routes` writes them. The harness connects as the operator.
    pub async fn start_secured(n: usize, auth: &AuthSetup, certs: &Certs) -> NatsCluster {
        let tls = NatsTls::new(certs);
        let access = Access { tls: tls.clone(), creds: auth.operator_creds() };
        let auth_conf = auth.server_conf();
        NatsCluster::start_with(n, Some(access), |dir, cluster_ports| {
            let routes: Vec<String> = cluster_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            let routes_dir = dir.join("routes");
            let conf =
                tillsync_broker::auth::routes::generate(&routes_dir, &routes_dir, &routes).expect("route security");
            Some(Secured {
                auth_conf: auth_conf.clone(),
                tls_conf: std::fs::read_to_string(tls.write_config(dir)).unwrap(),
                routes_conf: std::fs::read_to_string(conf).unwrap(),
            })
        })
        .await
    }

    async fn start_with(
        n: usize,
        access: Option<Access>,
        secure: impl FnOnce(&std::path::Path, &[u16]) -> Option<Secured>,
    ) -> NatsCluster {
        let dir = TempDir::new().unwrap();
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let secured = secure(dir.path(), &cluster_ports);
        let nodes = (0..n)
            .map(|i| {
                let port = free_port();
                let config = dir.path().join(format!("n{i}.conf"));
                let text = node_config(i, dir.path(), port, &cluster_ports, secured.as_ref());
                std::fs::write(&config, text).unwrap();
                Node { port, config, child: None }
            })
            .collect();
        let mut c = NatsCluster { bin: nats_bin(), nodes, access, _dir: dir };
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_ready(i).await;
        }
        c
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        let scheme = if self.access.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Every node's URL, comma separated, for `NATS_URL`.
    pub fn urls(&self) -> String {
        (0..self.nodes.len()).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {}: {e} (run ./scripts/test.sh, which installs it)", self.bin.display())
            });
        node.child = Some(child);
    }

    /// Waits until node `i` answers JetStream requests and an R`n` stream can be created through
    /// it (a meta leader exists and all peers are current).
    async fn wait_ready(&self, i: usize) {
        let (url, replicas) = (self.url(i), self.nodes.len());
        let what = format!("nats node n{i} in a JetStream cluster of {replicas}");
        eventually(READY, &what, || {
            let (url, access) = (url.clone(), self.access.clone());
            async move {
                let client = connect(&url, access.as_ref(), false).await.ok()?;
                // A JetStream request made before the meta leader exists goes unanswered: keep
                // each try short rather than wait out the default 5 s.
                let mut js = async_nats::jetstream::new(client);
                js.set_timeout(Duration::from_millis(500));
                js.query_account().await.ok()?;
                let name = format!("HARNESS_PROBE_{}", uuid::Uuid::new_v4().simple());
                let probe = StreamConfig {
                    name: name.clone(),
                    subjects: vec![format!("harness.probe.{name}")],
                    num_replicas: replicas,
                    storage: StorageType::Memory,
                    ..Default::default()
                };
                let created = js.create_stream(probe).await.is_ok();
                let _ = js.delete_stream(&name).await;
                created.then_some(())
            }
        })
        .await;
    }

    /// Kills node `i` (SIGKILL), keeping its store.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again on the same ports with the same store and waits until it is back
    /// in the cluster.
    pub async fn restart(&mut self, i: usize) {
        self.stop(i);
        self.spawn(i);
        self.wait_ready(i).await;
    }

    /// A client that may use any node and fails over to the others, retrying forever.
    pub async fn client(&self) -> async_nats::Client {
        let urls: Vec<String> = (0..self.nodes.len()).map(|i| self.url(i)).collect();
        connect(&urls.join(","), self.access.as_ref(), true).await.expect("connect to test nats cluster")
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }
}

/// Connects to `urls` (comma separated) as the harness: plain, or with the secured cluster's
/// TLS and operator credentials; `forever` keeps reconnecting through node restarts.
async fn connect(urls: &str, access: Option<&Access>, forever: bool) -> Result<async_nats::Client, String> {
    let mut options = NatsTls::options(access.map(|a| &a.tls));
    if let Some(a) = access {
        options = tillsync_broker::nats::credentials(options, &a.creds).await.map_err(|e| e.to_string())?;
    }
    if forever {
        options = options.max_reconnects(None);
    }
    let urls: Vec<String> = urls.split(',').map(str::to_string).collect();
    options.connect(urls).await.map_err(|e| e.to_string())
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
    }
}
