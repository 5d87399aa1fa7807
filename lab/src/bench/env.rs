//! Where a benchmark runs: NATS and Postgres, given or started here (through testkit).
//!
//! An explicitly configured NATS (`--nats-url` or `NATS_URL`) is used as is; otherwise a
//! private `nats-server` with JetStream starts on a random loopback port with a temp store and
//! is killed at exit (`bench scale` and `bench fleet` always start a private cluster). Postgres
//! is the configured server (or the local one); every measured pipeline gets a fresh, migrated
//! database of its own, dropped at the end, so each starts from an empty schema and nothing
//! existing is touched.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::ConnectOptions;
use tillsync_broker::config::Config;
use tillsync_schemas::streams as names;
use tillsync_testkit::{ClusterOptions, FreshDb, NatsCluster, NatsOptions, NatsServer};

use tillsync_ops::global::{Global, NatsArgs};

const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tillsync";
const LOCAL_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const PRIVATE_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:15432/postgres";

/// The nats-servers a run started: none (NATS was given), one, or a cluster; killed when
/// dropped.
enum Private {
    None,
    Server(Box<NatsServer>),
    Cluster(NatsCluster),
}

impl Private {
    fn len(&self) -> usize {
        match self {
            Private::None => 0,
            Private::Server(_) => 1,
            Private::Cluster(c) => c.len(),
        }
    }
}

pub struct Env {
    pub nats_url: String,
    /// Every node's client URL (just `nats_url` but for a private cluster).
    pub nats_urls: Vec<String>,
    admin_url: String,
    databases: Vec<FreshDb>,
    /// The private servers this run started, if any.
    nats: Private,
}

/// True when the value did not come from the built-in default (so a flag or the env set it).
fn explicit(value: &str, default: &str, var: &str) -> bool {
    std::env::var_os(var).is_some() || value != default
}

impl Env {
    pub async fn start(global: &Global, nats_args: &NatsArgs) -> anyhow::Result<Env> {
        let admin_url = admin_url(global).await?;
        let (nats_url, nats) = if explicit(&nats_args.nats_url, DEFAULT_NATS_URL, "NATS_URL") {
            (nats_args.nats_url.clone(), Private::None)
        } else {
            let (url, server) = start_nats(None).await?;
            (url, Private::Server(Box::new(server)))
        };
        Ok(Env { nats_urls: vec![nats_url.clone()], nats_url, admin_url, databases: Vec::new(), nats })
    }

    /// Postgres as [`Env::start`], and a private cluster of `nodes` nats-servers on loopback
    /// whatever `NATS_URL` says: a scenario that kills brokers and replicates streams needs a
    /// cluster of its own.
    pub async fn start_cluster(global: &Global, nodes: usize) -> anyhow::Result<Env> {
        let admin_url = admin_url(global).await?;
        let cluster = start_cluster(nodes).await?;
        let nats_urls = cluster.addrs();
        let nats = Private::Cluster(cluster);
        Ok(Env { nats_url: nats_urls[0].clone(), nats_urls, admin_url, databases: Vec::new(), nats })
    }

    /// Whether Postgres runs on this machine, so its processes' CPU can be read in `/proc`.
    pub fn postgres_is_local(&self) -> bool {
        let host = self.admin_url.split('@').nth(1).unwrap_or(&self.admin_url);
        ["127.0.0.1", "localhost", "[::1]"].iter().any(|h| host.starts_with(h))
    }

    /// A fresh database with the migrations applied; returns its URL.
    pub async fn fresh_database(&mut self) -> anyhow::Result<String> {
        let db = FreshDb::create(&self.admin_url, "tillsync_bench").await.context("CREATE DATABASE")?;
        let url = db.url().to_string();
        self.databases.push(db);
        let pool = quiet_pool(&url, 1).await?;
        tillsync_broker::admin::db::migrate(&pool).await?;
        pool.close().await;
        Ok(url)
    }

    /// A broker configuration for this environment (environment variables still tune it).
    pub fn broker_config(&self, database_url: &str) -> Config {
        let mut c = <Config as clap::Parser>::parse_from(["tillsync-broker"]);
        c.nats_url = self.nats_url.clone();
        c.nats_creds = None;
        c.nats_tls = Default::default();
        c.database_url = database_url.into();
        c.http_addr = "127.0.0.1:0".parse().expect("static address");
        c.instance_id = Some(format!("bench-{}", std::process::id()));
        c.auto_tenants = false;
        // The public test key: bench devices are simulated and never act on a command.
        c.signing_key_file = Some(tillsync_broker::admin::signing::test_key_file());
        if self.nats.len() > 0 {
            // Streams on a private cluster are replicated to three nodes, as in production.
            c.stream_replicas = self.nats.len().min(3);
            // A private server holds only bench data (100,000 events are ~30 MB); asking
            // JetStream to reserve the production 10 GiB fails on a machine with little free
            // disk.
            c.events_max_bytes = c.events_max_bytes.min(1 << 30);
        }
        c
    }

    /// The private nats-server's pid, when the bench started one (node 0 of a cluster).
    pub fn nats_pid(&self) -> Option<u32> {
        match &self.nats {
            Private::None => None,
            Private::Server(s) => s.pid(),
            Private::Cluster(c) => c.node(0).ok().and_then(NatsServer::pid),
        }
    }

    /// Kills private node `i` (SIGKILL), as a crash would; it stays down until
    /// [`Env::start_node`].
    pub fn kill_node(&mut self, i: usize) -> anyhow::Result<()> {
        match &mut self.nats {
            Private::Server(s) if i == 0 => s.kill(),
            Private::Cluster(c) => c.kill(i)?,
            _ => bail!("no private node {i}"),
        }
        Ok(())
    }

    /// Starts private node `i` again on its config and store (after [`Env::kill_node`]).
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        match &mut self.nats {
            Private::Server(s) if i == 0 => s.spawn()?,
            Private::Cluster(c) => c.spawn(i)?,
            _ => bail!("no private node {i}"),
        }
        Ok(())
    }

    /// Every running private nats-server's pid.
    pub fn nats_pids(&self) -> Vec<u32> {
        match &self.nats {
            Private::None => Vec::new(),
            Private::Server(s) => s.pid().into_iter().collect(),
            Private::Cluster(c) => c.pids(),
        }
    }

    pub async fn nats(&self) -> anyhow::Result<async_nats::Client> {
        Ok(tillsync_broker::admin::nats::connect(&self.nats_url, None, &Default::default(), "tillsync-bench").await?)
    }

    /// Creates the streams and checks the events stream holds nothing a benchmark would mix
    /// with its own data (a shared server is never purged behind the operator's back).
    pub async fn ensure_empty_streams(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        self.ensure_empty(js, &self.broker_config("postgres://unused/unused")).await
    }

    /// [`Env::ensure_empty_streams`] with the streams as `config` has them (partitions, replicas).
    pub async fn ensure_empty(&self, js: &jetstream::Context, config: &Config) -> anyhow::Result<()> {
        tillsync_broker::admin::streams::ensure(js, config).await?;
        for name in [names::EVENTS, names::INTAKE, names::COMMANDS, names::COMMAND_ACKS] {
            let mut s = js.get_stream(name).await?;
            let n = s.info().await?.state.messages;
            if n > 0 {
                bail!(
                    "stream {name} on {} already holds {n} messages; benchmarks need an empty server \
                     (unset NATS_URL to let the bench start a private one)",
                    self.nats_url
                );
            }
        }
        Ok(())
    }

    /// Drops every database this run created; the private nats-server stops on drop.
    pub async fn cleanup(mut self) {
        for db in self.databases.drain(..) {
            let name = db.name().to_string();
            if let Err(error) = db.drop_now().await {
                tracing::warn!(%error, name, "Could not drop a bench database.");
            }
        }
        self.nats = Private::None;
    }
}

/// A pool for the bench's own housekeeping (CREATE/DROP DATABASE, CHECKPOINT, counts), whose
/// slow statements are expected and not worth a warning.
pub async fn quiet_pool(url: &str, max: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)?.disable_statement_logging();
    Ok(PgPoolOptions::new().max_connections(max).acquire_timeout(Duration::from_secs(10)).connect_with(options).await?)
}

async fn admin_pool(url: &str) -> anyhow::Result<PgPool> {
    quiet_pool(url, 1).await.with_context(|| {
        format!("cannot reach Postgres at {url} (set DATABASE_URL to a server where the bench may CREATE DATABASE)")
    })
}

/// The configured Postgres (flag or `DATABASE_URL`), else `TILLSYNC_TEST_DATABASE_URL`, else a
/// local one; checked to answer.
async fn admin_url(global: &Global) -> anyhow::Result<String> {
    let url = if explicit(&global.database_url, DEFAULT_DATABASE_URL, "DATABASE_URL") {
        global.database_url.clone()
    } else {
        match std::env::var("TILLSYNC_TEST_DATABASE_URL") {
            Ok(url) => url,
            Err(_) => local_admin_url().await,
        }
    };
    admin_pool(&url).await?.close().await;
    Ok(url)
}

/// The local server, else the private cluster `./scripts/run-local.sh` starts on port 15432.
async fn local_admin_url() -> String {
    for url in [LOCAL_ADMIN_URL, PRIVATE_ADMIN_URL] {
        if let Ok(pool) = quiet_pool(url, 1).await {
            pool.close().await;
            return url.into();
        }
    }
    LOCAL_ADMIN_URL.into()
}

/// Starts a private nats-server with JetStream on a free loopback port and a temp store;
/// `sync_interval` (`"always"`, `"2m"`, ...) sets JetStream's fsync policy, else its default.
pub async fn start_nats(sync_interval: Option<&str>) -> anyhow::Result<(String, NatsServer)> {
    let options = NatsOptions {
        bin: Some(tillsync_ops::nats_server::find()?),
        sync_interval: sync_interval.map(str::to_string),
        ..Default::default()
    };
    let server = NatsServer::start(options).await?;
    Ok((server.url(), server))
}

/// Starts `nodes` nats-servers with JetStream clustered over loopback routes, each with its
/// own temp store; returns once a stream replicated to all of them can be created (a meta
/// leader is elected and every node is a peer).
async fn start_cluster(nodes: usize) -> anyhow::Result<NatsCluster> {
    let options = ClusterOptions {
        name: "tillsync-bench".into(),
        bin: Some(tillsync_ops::nats_server::find()?),
        ..ClusterOptions::new(nodes)
    };
    Ok(NatsCluster::start(options).await?)
}
