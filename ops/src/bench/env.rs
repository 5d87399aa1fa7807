//! Where a benchmark runs: NATS and Postgres, given or started here.
//!
//! An explicitly configured NATS (`--nats-url` or `NATS_URL`) is used as is; otherwise a
//! private `nats-server` with JetStream starts on a random port with a temp store and is killed
//! at exit (`bench scale` always starts a private 3-node cluster). Postgres is the configured server (or the local one); every measured pipeline gets
//! a fresh, migrated database of its own, dropped at the end, so each starts from an empty
//! schema and nothing existing is touched.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Executor};
use tillsync_broker::config::Config;
use tillsync_schemas::streams as names;

use crate::global::{Global, NatsArgs};

const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tillsync";
const LOCAL_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const PRIVATE_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:15432/postgres";

/// A private nats-server, killed when dropped.
pub struct NatsProc {
    child: Child,
    _store: tempfile::TempDir,
}

impl Drop for NatsProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Env {
    pub nats_url: String,
    /// Every node's client URL (just `nats_url` but for a private cluster).
    pub nats_urls: Vec<String>,
    admin_url: String,
    databases: Vec<String>,
    /// The private servers this run started, if any.
    nats: Vec<NatsProc>,
}

/// True when the value did not come from the built-in default (so a flag or the env set it).
fn explicit(value: &str, default: &str, var: &str) -> bool {
    std::env::var_os(var).is_some() || value != default
}

impl Env {
    pub async fn start(global: &Global, nats_args: &NatsArgs) -> anyhow::Result<Env> {
        let admin_url = admin_url(global).await?;
        let (nats_url, nats) = if explicit(&nats_args.nats_url, DEFAULT_NATS_URL, "NATS_URL") {
            (nats_args.nats_url.clone(), Vec::new())
        } else {
            let (url, proc_) = start_nats(None).await?;
            (url, vec![proc_])
        };
        Ok(Env { nats_urls: vec![nats_url.clone()], nats_url, admin_url, databases: Vec::new(), nats })
    }

    /// Postgres as [`Env::start`], and a private cluster of `nodes` nats-servers on loopback
    /// whatever `NATS_URL` says: a scenario that kills brokers and replicates streams needs a
    /// cluster of its own.
    pub async fn start_cluster(global: &Global, nodes: usize) -> anyhow::Result<Env> {
        let admin_url = admin_url(global).await?;
        let (nats_urls, nats) = start_cluster(nodes).await?;
        Ok(Env { nats_url: nats_urls[0].clone(), nats_urls, admin_url, databases: Vec::new(), nats })
    }

    /// Whether Postgres runs on this machine, so its processes' CPU can be read in `/proc`.
    pub fn postgres_is_local(&self) -> bool {
        let host = self.admin_url.split('@').nth(1).unwrap_or(&self.admin_url);
        ["127.0.0.1", "localhost", "[::1]"].iter().any(|h| host.starts_with(h))
    }

    /// A fresh database with the migrations applied; returns its URL.
    pub async fn fresh_database(&mut self) -> anyhow::Result<String> {
        let name = format!("tillsync_bench_{}", uuid::Uuid::new_v4().simple());
        let admin = admin_pool(&self.admin_url).await?;
        admin.execute(format!("CREATE DATABASE {name}").as_str()).await.context("CREATE DATABASE")?;
        admin.close().await;
        self.databases.push(name.clone());
        let url = with_database(&self.admin_url, &name);
        let pool = quiet_pool(&url, 1).await?;
        tillsync_broker::db::migrate(&pool).await?;
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
        c.signing_key_file = Some(tillsync_broker::signing::test_key_file());
        if !self.nats.is_empty() {
            // Streams on a private cluster are replicated to three nodes, as in production.
            c.stream_replicas = self.nats.len().min(3);
            // A private server holds only bench data (100,000 events are ~30 MB); asking
            // JetStream to reserve the production 10 GiB fails on a machine with little free
            // disk.
            c.events_max_bytes = c.events_max_bytes.min(1 << 30);
        }
        c
    }

    /// The private nats-server's pid, when the bench started one.
    pub fn nats_pid(&self) -> Option<u32> {
        self.nats.first().map(|p| p.child.id())
    }

    /// Every private nats-server's pid.
    pub fn nats_pids(&self) -> Vec<u32> {
        self.nats.iter().map(|p| p.child.id()).collect()
    }

    pub async fn nats(&self) -> anyhow::Result<async_nats::Client> {
        Ok(tillsync_broker::nats::connect(&self.nats_url, None, &Default::default(), "tillsync-bench").await?)
    }

    /// Creates the streams and checks the events stream holds nothing a benchmark would mix
    /// with its own data (a shared server is never purged behind the operator's back).
    pub async fn ensure_empty_streams(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        self.ensure_empty(js, &self.broker_config("postgres://unused/unused")).await
    }

    /// [`Env::ensure_empty_streams`] with the streams as `config` has them (partitions, replicas).
    pub async fn ensure_empty(&self, js: &jetstream::Context, config: &Config) -> anyhow::Result<()> {
        tillsync_broker::streams::ensure(js, config).await?;
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
        if let Ok(admin) = admin_pool(&self.admin_url).await {
            for name in self.databases.drain(..) {
                if let Err(error) = admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await
                {
                    tracing::warn!(%error, name, "Could not drop a bench database.");
                }
            }
            admin.close().await;
        }
        self.nats.clear();
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

/// Replaces the database name (path) of a Postgres URL.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let slash = base[after_scheme..].rfind('/').map_or(base.len(), |i| i + after_scheme);
    let mut out = format!("{}/{name}", &base[..slash]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Starts a private nats-server with JetStream on a free loopback port and a temp store;
/// `sync_interval` (`"always"`, `"2m"`, ...) sets JetStream's fsync policy, else its default.
pub async fn start_nats(sync_interval: Option<&str>) -> anyhow::Result<(String, NatsProc)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let sync = sync_interval.map(|s| format!(", sync_interval: {s:?}")).unwrap_or_default();
    let proc_ =
        spawn_nats(|store| format!("listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {store:?}{sync} }}\n"))?;
    let url = format!("nats://127.0.0.1:{port}");
    wait_for_jetstream(&url).await?;
    Ok((url, proc_))
}

/// Starts `nodes` nats-servers with JetStream clustered over loopback routes, each with its
/// own temp store; returns once a stream replicated to all of them can be created (a meta
/// leader is elected and every node is a peer).
pub async fn start_cluster(nodes: usize) -> anyhow::Result<(Vec<String>, Vec<NatsProc>)> {
    anyhow::ensure!(nodes >= 1, "a cluster has at least one node");
    let free = || -> anyhow::Result<u16> { Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
    let ports: Vec<(u16, u16)> = (0..nodes).map(|_| Ok((free()?, free()?))).collect::<anyhow::Result<_>>()?;
    let routes: Vec<String> = ports.iter().map(|(_, r)| format!("\"nats-route://127.0.0.1:{r}\"")).collect();
    let mut procs = Vec::new();
    for (i, (port, route)) in ports.iter().enumerate() {
        procs.push(spawn_nats(|store| {
            format!(
                "server_name: \"bench-{i}\"\nlisten: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {store:?} }}\n\
                 cluster {{ name: \"tillsync-bench\", listen: \"127.0.0.1:{route}\", routes: [{}] }}\n",
                routes.join(", ")
            )
        })?);
    }
    let urls: Vec<String> = ports.iter().map(|(p, _)| format!("nats://127.0.0.1:{p}")).collect();
    for url in &urls {
        wait_for_jetstream(url).await?;
    }
    wait_for_replicas(&urls[0], nodes).await?;
    Ok((urls, procs))
}

/// Spawns nats-server on the config `config(store_dir)` returns, in a temp dir of its own.
fn spawn_nats(config: impl FnOnce(&Path) -> String) -> anyhow::Result<NatsProc> {
    let bin = crate::nats_server::find()?;
    let store = tempfile::TempDir::new()?;
    let file = store.path().join("nats.conf");
    std::fs::write(&file, config(&store.path().join("js")))?;
    let child = Command::new(&bin)
        .arg("-c")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(NatsProc { child, _store: store })
}

async fn wait_for_jetstream(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(client) = async_nats::connect(url).await {
            if jetstream::new(client).query_account().await.is_ok() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("nats-server did not accept JetStream connections on {url} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a stream with `replicas` replicas can be created (then deletes it).
async fn wait_for_replicas(url: &str, replicas: usize) -> anyhow::Result<()> {
    const PROBE: &str = "TILLSYNC_BENCH_PROBE";
    let js = jetstream::new(async_nats::connect(url).await?);
    let deadline = Instant::now() + Duration::from_secs(30);
    let config = jetstream::stream::Config {
        name: PROBE.into(),
        subjects: vec!["tillsync-bench.probe".into()],
        num_replicas: replicas,
        ..Default::default()
    };
    loop {
        match js.create_stream(config.clone()).await {
            Ok(_) => {
                js.delete_stream(PROBE).await?;
                return Ok(());
            }
            Err(e) if Instant::now() > deadline => {
                bail!("the {replicas}-node NATS cluster did not take an R{replicas} stream within 30 s: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h/db?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
