use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What a caller's callback ([`crate::Connect`], [`crate::ClusterOptions::config`]) fails with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong starting or driving a private server, with what was tried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot pick a free port on 127.0.0.1: {0}")]
    FreePort(#[source] io::Error),
    #[error("cannot start {}: {source} (run ./scripts/test.sh, which installs it)", bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("nats-server on {url} did not serve JetStream within {within:?} ({attempts} attempts)\n{log}")]
    NotReady { url: String, within: Duration, attempts: usize, log: String },
    #[error("{nodes} nats nodes never formed a JetStream cluster in {attempts} attempts\n{logs}")]
    NoCluster { nodes: usize, attempts: usize, logs: String },
    #[error("nats node n{node} did not rejoin its JetStream cluster of {nodes} within {within:?}\n{logs}")]
    NodeNotReady { node: usize, nodes: usize, within: Duration, logs: String },
    #[error("a cluster needs at least one node")]
    NoNodes,
    #[error("no node {node} in a cluster of {nodes}")]
    NoNode { node: usize, nodes: usize },
    #[error("the cluster's config: {0}")]
    ClusterConfig(#[source] BoxError),
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("no Postgres server binaries: {0} (install Debian's postgresql package)")]
    NoPostgres(String),
    #[error("cannot run {command}: {source}")]
    Run {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("Postgres at {url}: {source}")]
    Sql {
        url: String,
        #[source]
        source: sqlx::Error,
    },
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}
