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
    _dir: TempDir,
}

fn node_config(i: usize, dir: &std::path::Path, port: u16, cluster_ports: &[u16]) -> String {
    let routes: Vec<String> = cluster_ports
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, p)| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect();
    format!(
        "server_name: n{i}\nlisten: \"127.0.0.1:{port}\"\n\
         jetstream {{ store_dir: \"{store}\" }}\n\
         cluster {{ name: tillsync-test, listen: \"127.0.0.1:{cport}\", routes: [{routes}] }}\n",
        store = dir.join(format!("n{i}")).display(),
        cport = cluster_ports[i],
        routes = routes.join(", "),
    )
}

impl NatsCluster {
    /// Starts `n` nodes and waits until JetStream can place an R`n` stream, i.e. there is a meta
    /// leader and every peer takes part.
    pub async fn start(n: usize) -> NatsCluster {
        let dir = TempDir::new().unwrap();
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let nodes = (0..n)
            .map(|i| {
                let port = free_port();
                let config = dir.path().join(format!("n{i}.conf"));
                std::fs::write(&config, node_config(i, dir.path(), port, &cluster_ports)).unwrap();
                Node { port, config, child: None }
            })
            .collect();
        let mut c = NatsCluster { bin: nats_bin(), nodes, _dir: dir };
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
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
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
            let url = url.clone();
            async move {
                let client = async_nats::connect(&url).await.ok()?;
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
        async_nats::ConnectOptions::new()
            .max_reconnects(None)
            .connect(urls)
            .await
            .expect("connect to test nats cluster")
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
    }
}
