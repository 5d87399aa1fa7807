//! Where a benchmark runs: NATS and Postgres, given or started here.
//!
//! An explicitly configured NATS (`--nats-url` or `NATS_URL`) is used as is; otherwise a
//! private `nats-server` with JetStream starts on a random port with a temp store and is killed
//! at exit. Postgres is the configured server (or the local one); every measured pipeline gets
//! a fresh, migrated database of its own, dropped at the end, so each starts from an empty
//! schema and nothing existing is touched.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Executor};
use tillsync_broker::config::Config;
use tillsync_schemas::streams as names;

use crate::global::Global;

const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tillsync";
const LOCAL_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const PRIVATE_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:15432/postgres";
const MIN_NATS: (u32, u32) = (2, 10);

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
    admin_url: String,
    databases: Vec<String>,
    nats: Option<NatsProc>,
}

/// True when the value did not come from the built-in default (so a flag or the env set it).
fn explicit(value: &str, default: &str, var: &str) -> bool {
    std::env::var_os(var).is_some() || value != default
}

impl Env {
    pub async fn start(global: &Global) -> anyhow::Result<Env> {
        let admin_url = if explicit(&global.database_url, DEFAULT_DATABASE_URL, "DATABASE_URL") {
            global.database_url.clone()
        } else {
            match std::env::var("TILLSYNC_TEST_DATABASE_URL") {
                Ok(url) => url,
                Err(_) => local_admin_url().await,
            }
        };
        let admin = admin_pool(&admin_url).await?;
        admin.close().await;
        let (nats_url, nats) = if explicit(&global.nats_url, DEFAULT_NATS_URL, "NATS_URL") {
            (global.nats_url.clone(), None)
        } else {
            let (url, proc_) = start_nats(None).await?;
            (url, Some(proc_))
        };
        Ok(Env { nats_url, admin_url, databases: Vec::new(), nats })
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
        c.database_url = database_url.into();
        c.http_addr = "127.0.0.1:0".parse().expect("static address");
        c.instance_id = Some(format!("bench-{}", std::process::id()));
        c.auto_tenants = false;
        if self.nats.is_some() {
            // A private server holds only bench data (100,000 events are ~30 MB); asking
            // JetStream to reserve the production 10 GiB fails on a machine with little free
            // disk.
            c.events_max_bytes = c.events_max_bytes.min(1 << 30);
        }
        c
    }

    /// The private nats-server's pid, when the bench started one.
    pub fn nats_pid(&self) -> Option<u32> {
        self.nats.as_ref().map(|p| p.child.id())
    }

    pub async fn nats(&self) -> anyhow::Result<async_nats::Client> {
        Ok(tillsync_broker::nats::connect(&self.nats_url, None, "tillsync-bench").await?)
    }

    /// Creates the streams and checks the events stream holds nothing a benchmark would mix
    /// with its own data (a shared server is never purged behind the operator's back).
    pub async fn ensure_empty_streams(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        tillsync_broker::streams::ensure(js, &self.broker_config("postgres://unused/unused")).await?;
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
        self.nats.take();
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

fn nats_version_ok(bin: &Path) -> bool {
    let Ok(out) = Command::new(bin).arg("--version").output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim().rsplit('v').next().unwrap_or("");
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= MIN_NATS
}

/// `TILLSYNC_NATS_SERVER`, else the pinned one in `.tools/venv`, else `nats-server` on PATH.
fn nats_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TILLSYNC_NATS_SERVER") {
        return Ok(p.into());
    }
    let mut candidates = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            candidates.push(dir.join(".tools/venv/bin/nats-server"));
        }
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/nats-server"));
    if let Some(p) = candidates.into_iter().find(|p| p.exists()) {
        return Ok(p);
    }
    let on_path = PathBuf::from("nats-server");
    if nats_version_ok(&on_path) {
        return Ok(on_path);
    }
    bail!(
        "no nats-server >= {}.{} found: set TILLSYNC_NATS_SERVER, run ./scripts/run-local.sh once (it installs one), \
         or point NATS_URL at a server",
        MIN_NATS.0,
        MIN_NATS.1
    )
}

/// Starts a private nats-server with JetStream on a free loopback port and a temp store;
/// `sync_interval` (`"always"`, `"2m"`, ...) sets JetStream's fsync policy, else its default.
pub async fn start_nats(sync_interval: Option<&str>) -> anyhow::Result<(String, NatsProc)> {
    let bin = nats_bin()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let store = tempfile::TempDir::new()?;
    let config = store.path().join("nats.conf");
    let sync = sync_interval.map(|s| format!(", sync_interval: {s:?}")).unwrap_or_default();
    std::fs::write(
        &config,
        format!("listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {:?}{sync} }}\n", store.path().join("js")),
    )?;
    let child = Command::new(&bin)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let proc_ = NatsProc { child, _store: store };
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(client) = async_nats::connect(&url).await {
            if jetstream::new(client).query_account().await.is_ok() {
                return Ok((url, proc_));
            }
        }
        if Instant::now() > deadline {
            bail!("{} did not accept JetStream connections on {url} within 15 s", bin.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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
