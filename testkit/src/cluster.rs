//! A JetStream cluster of `n` private nats-servers with routes on loopback.
//!
//! Every node keeps its own config, store and log, and can be killed, paused and restarted on
//! the same ports with the same store, so R3 streams survive losing a node.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};

use crate::dir::Dir;
use crate::poll::within;
use crate::{free_port, Connect, Error, NatsOptions, NatsServer, Result};

/// How long a node (or the whole cluster) may take to form and elect JetStream leaders.
const READY: Duration = Duration::from_secs(30);

/// How many times a cluster is started over on new ports when it does not form within
/// [`READY`]: a port is picked free and bound a moment later, and another process (or an
/// outgoing connection's ephemeral port) can take it in between.
const ATTEMPTS: usize = 3;

/// What every node adds to its generated config, given the cluster's dir and route ports.
#[derive(Debug, Clone, Default)]
pub struct ClusterConfig {
    /// Top-level text: authorization, a client `tls` block.
    pub extra: String,
    /// Text inside the `cluster { }` block in place of the plain `routes: [...]` (route
    /// authorization and TLS, and the routes themselves).
    pub routes: Option<String>,
}

type MakeConfig = dyn Fn(&Path, &[u16]) -> Result<ClusterConfig, crate::BoxError> + Send + Sync;

/// What a [`NatsCluster`] runs with.
#[derive(Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// The cluster's name in every node's config.
    pub name: String,
    /// The binary; [`crate::nats_bin`] when `None`.
    pub bin: Option<std::path::PathBuf>,
    /// Clients must speak TLS (the config has a `tls` block): URLs are `tls://`.
    pub tls: bool,
    /// JetStream's fsync policy on every node; the server's default when `None`.
    pub sync_interval: Option<String>,
    /// How readiness probes and [`NatsCluster::client`] connect.
    pub connect: Connect,
    /// Made again for every attempt, with that attempt's dir and route ports (files it needs
    /// can be written into the dir); plain routes and nothing else when `None`.
    pub config: Option<Arc<MakeConfig>>,
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("nodes", &self.nodes)
            .field("name", &self.name)
            .field("tls", &self.tls)
            .field("sync_interval", &self.sync_interval)
            .finish_non_exhaustive()
    }
}

impl ClusterOptions {
    /// `nodes` plain nodes.
    pub fn new(nodes: usize) -> ClusterOptions {
        ClusterOptions {
            nodes,
            name: "tillsync-test".into(),
            bin: None,
            tls: false,
            sync_interval: None,
            connect: Connect::plain(),
            config: None,
        }
    }
}

/// A private nats cluster: every node is killed when dropped.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
    connect: Connect,
    _dir: Dir,
}

impl NatsCluster {
    /// `nodes` plain nodes, formed.
    pub async fn start_plain(nodes: usize) -> Result<NatsCluster> {
        NatsCluster::start(ClusterOptions::new(nodes)).await
    }

    /// Starts the nodes on freshly picked ports and waits until JetStream can place an
    /// R`n` stream (there is a meta leader and every peer takes part), starting over on new
    /// ports and a new store when they do not form within [`READY`].
    pub async fn start(options: ClusterOptions) -> Result<NatsCluster> {
        if options.nodes == 0 {
            return Err(Error::NoNodes);
        }
        for attempt in 1..=ATTEMPTS {
            let c = NatsCluster::create(&options)?;
            let mut formed = true;
            for i in 0..options.nodes {
                formed = formed && c.ready_within(i, READY).await;
            }
            if formed {
                return Ok(c);
            }
            let logs = c.log_tails();
            if attempt == ATTEMPTS {
                return Err(Error::NoCluster { nodes: options.nodes, attempts: attempt, logs });
            }
            eprintln!("nats cluster: attempt {attempt} did not form within {READY:?}, new ports\n{logs}");
        }
        unreachable!("the last attempt returns")
    }

    /// Writes every node's config into a new dir and spawns them.
    fn create(options: &ClusterOptions) -> Result<NatsCluster> {
        let dir = Dir::new(None)?;
        let route_ports = (0..options.nodes).map(|_| free_port()).collect::<Result<Vec<u16>>>()?;
        let extra = match &options.config {
            Some(make) => make(dir.path(), &route_ports).map_err(Error::ClusterConfig)?,
            None => ClusterConfig::default(),
        };
        let mut nodes = Vec::with_capacity(options.nodes);
        for i in 0..options.nodes {
            let mut node = NatsServer::new(NatsOptions {
                bin: options.bin.clone(),
                config: node_config(i, &options.name, &route_ports, &extra),
                tls: options.tls,
                sync_interval: options.sync_interval.clone(),
                connect: options.connect.clone(),
                port: Some(free_port()?),
                dir: Some(dir.path().join(format!("n{i}"))),
                log: None,
            })?;
            node.spawn()?;
            nodes.push(node);
        }
        Ok(NatsCluster { nodes, connect: options.connect.clone(), _dir: dir })
    }

    /// Whether node `i` answers JetStream requests and an R`n` stream can be created through
    /// it (a meta leader exists and all peers are current) within `timeout`.
    async fn ready_within(&self, i: usize, timeout: Duration) -> bool {
        let (url, replicas, connect) = (self.url(i), self.nodes.len(), &self.connect);
        within(timeout, || async {
            let client = connect.connect(&url, false).await.ok()?;
            // A JetStream request made before the meta leader exists goes unanswered: keep
            // each try short rather than wait out the default 5 s.
            let mut js = async_nats::jetstream::new(client);
            js.set_timeout(Duration::from_millis(500));
            js.query_account().await.ok()?;
            let name = format!("TESTKIT_PROBE_{}", uuid::Uuid::new_v4().simple());
            let probe = StreamConfig {
                name: name.clone(),
                subjects: vec![format!("testkit.probe.{name}")],
                num_replicas: replicas,
                storage: StorageType::Memory,
                ..Default::default()
            };
            let created = js.create_stream(probe).await.is_ok();
            let _ = js.delete_stream(&name).await;
            created.then_some(())
        })
        .await
        .is_some()
    }

    /// Waits until node `i` is back in the cluster (as when it started).
    pub async fn wait_ready(&self, i: usize) -> Result<()> {
        self.node(i)?;
        if self.ready_within(i, READY).await {
            return Ok(());
        }
        Err(Error::NodeNotReady { node: i, nodes: self.nodes.len(), within: READY, logs: self.log_tails() })
    }

    /// The last lines of every node's log, for a failure message.
    pub fn log_tails(&self) -> String {
        self.nodes.iter().map(|n| n.log_tail(15)).collect::<Vec<_>>().join("\n")
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`, to read (pid, port, dirs, log).
    pub fn node(&self, i: usize) -> Result<&NatsServer> {
        self.nodes.get(i).ok_or(Error::NoNode { node: i, nodes: self.nodes.len() })
    }

    fn node_mut(&mut self, i: usize) -> Result<&mut NatsServer> {
        let nodes = self.nodes.len();
        self.nodes.get_mut(i).ok_or(Error::NoNode { node: i, nodes })
    }

    /// The client URL of node `i`; panics when there is no such node.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Every node's URL, comma separated, for `NATS_URL`.
    pub fn urls(&self) -> String {
        self.addrs().join(",")
    }

    /// Every node's URL.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// The pids of the nodes started (and not killed since).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(NatsServer::pid).collect()
    }

    /// Kills node `i` (SIGKILL), keeping its store; it stays down until started again.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.node_mut(i)?.kill();
        Ok(())
    }

    /// Starts node `i` again on its ports and store without waiting (after [`NatsCluster::kill`]).
    pub fn spawn(&mut self, i: usize) -> Result<()> {
        self.node_mut(i)?.spawn()
    }

    /// Kills node `i`, starts it again on the same ports with the same store and waits until
    /// it is back in the cluster.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.node_mut(i)?.kill();
        self.node_mut(i)?.spawn()?;
        self.wait_ready(i).await
    }

    /// SIGSTOP to node `i`.
    pub fn pause(&self, i: usize) -> Result<()> {
        self.node(i)?.pause();
        Ok(())
    }

    /// SIGCONT to node `i`.
    pub fn resume(&self, i: usize) -> Result<()> {
        self.node(i)?.resume();
        Ok(())
    }

    /// A client that may use any node and fails over to the others, reconnecting forever.
    pub async fn client(&self) -> Result<async_nats::Client> {
        self.connect.connect(&self.urls(), true).await
    }

    pub async fn jetstream(&self) -> Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(self.client().await?))
    }
}

/// Node `i`'s config after `listen` and `jetstream`: its name, `extra`'s text, and the cluster
/// block with plain routes to the other nodes unless `extra` brings its own.
fn node_config(i: usize, name: &str, route_ports: &[u16], extra: &ClusterConfig) -> String {
    let routes = extra.routes.clone().unwrap_or_else(|| {
        let others: Vec<String> = route_ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect();
        format!("  routes: [{}]", others.join(", "))
    });
    format!(
        "server_name: n{i}\n{extra}\ncluster {{\n  name: {name:?}\n  listen: \"127.0.0.1:{port}\"\n{routes}\n}}\n",
        extra = extra.extra,
        port = route_ports[i],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_routes_name_the_other_nodes() {
        let c = node_config(1, "t", &[7001, 7002, 7003], &ClusterConfig::default());
        assert!(c.starts_with("server_name: n1\n"), "{c}");
        assert!(c.contains("listen: \"127.0.0.1:7002\""), "{c}");
        assert!(c.contains("routes: [\"nats-route://127.0.0.1:7001\", \"nats-route://127.0.0.1:7003\"]"), "{c}");
    }

    #[test]
    fn secured_routes_replace_the_plain_ones() {
        let extra = ClusterConfig { extra: "authorization { }".into(), routes: Some("  routes: [x]".into()) };
        let c = node_config(0, "t", &[7001, 7002], &extra);
        assert!(c.contains("authorization { }\ncluster {"), "{c}");
        assert!(c.contains("  routes: [x]\n}") && !c.contains("nats-route"), "{c}");
    }

    #[tokio::test]
    async fn a_cluster_has_at_least_one_node() {
        assert!(matches!(NatsCluster::start(ClusterOptions::new(0)).await, Err(Error::NoNodes)));
    }
}
