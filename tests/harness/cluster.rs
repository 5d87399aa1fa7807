//! The tests' nats cluster: [`tillsync_testkit::NatsCluster`], plain or secured as production
//! runs it, panicking instead of returning errors.

use std::sync::Arc;

use tillsync_testkit::{ClusterConfig, ClusterOptions};

use crate::nats::connect_as;
use crate::tls::NatsTls;
use crate::{AuthSetup, Certs};

/// A three-node (or n-node) nats-server cluster with JetStream, private to one test; every
/// node is killed when it is dropped.
pub struct NatsCluster {
    inner: tillsync_testkit::NatsCluster,
}

impl NatsCluster {
    /// Starts `n` nodes and waits until JetStream can place an R`n` stream, i.e. there is a meta
    /// leader and every peer takes part.
    pub async fn start(n: usize) -> NatsCluster {
        NatsCluster::start_with(ClusterOptions::new(n)).await
    }

    /// The production topology's NATS: `n` nodes, each with the authorization `tillsync auth
    /// init` generates (devices and portals admitted by a broker's auth callout), TLS for
    /// clients with `certs` (a client certificate required), and routes authenticated and
    /// encrypted as `tillsync auth routes` writes them. The harness connects as the operator.
    pub async fn start_secured(n: usize, auth: &AuthSetup, certs: &Certs) -> NatsCluster {
        let tls = NatsTls::new(certs);
        let extra = format!("{}\n{}", auth.server_conf(), tls.config_text());
        let config = move |dir: &std::path::Path, route_ports: &[u16]| {
            let routes: Vec<String> = route_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            let routes_dir = dir.join("routes");
            let conf = tillsync_broker::admin::auth::routes::generate(&routes_dir, &routes_dir, &routes)
                .map_err(|e| format!("route security: {e}"))?;
            let routes = std::fs::read_to_string(&conf).map_err(|e| format!("{}: {e}", conf.display()))?;
            Ok(ClusterConfig { extra: extra.clone(), routes: Some(routes) })
        };
        let options = ClusterOptions {
            tls: true,
            connect: connect_as(Some(tls.clone()), Some(auth.operator_creds())),
            config: Some(Arc::new(config)),
            ..ClusterOptions::new(n)
        };
        NatsCluster::start_with(options).await
    }

    async fn start_with(options: ClusterOptions) -> NatsCluster {
        let inner = tillsync_testkit::NatsCluster::start(options).await.unwrap_or_else(|e| panic!("{e}"));
        NatsCluster { inner }
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        self.inner.url(i)
    }

    /// Every node's URL, comma separated, for `NATS_URL`.
    pub fn urls(&self) -> String {
        self.inner.urls()
    }

    /// Kills node `i` (SIGKILL), keeping its store.
    pub fn stop(&mut self, i: usize) {
        self.inner.kill(i).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts node `i` again on the same ports with the same store and waits until it is back
    /// in the cluster.
    pub async fn restart(&mut self, i: usize) {
        self.inner.restart(i).await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// A client that may use any node and fails over to the others, retrying forever.
    pub async fn client(&self) -> async_nats::Client {
        self.inner.client().await.expect("connect to test nats cluster")
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }
}
