//! One private nats-server with JetStream.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dir::Dir;
use crate::poll::within;
use crate::{free_port, nats_bin, Connect, Error, Process, Result};

/// How long a started server may take to serve JetStream.
const READY: Duration = Duration::from_secs(15);
/// Starts on a new port before a first start is given up.
const ATTEMPTS: usize = 3;

/// What a [`NatsServer`] runs with; `NatsOptions::default()` is a plain server.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// The binary; [`nats_bin`] when `None`.
    pub bin: Option<PathBuf>,
    /// Config text after the generated `listen` and `jetstream` lines: authorization, a `tls`
    /// block, a `cluster` block.
    pub config: String,
    /// Clients must speak TLS (the config has a `tls` block): URLs are `tls://`.
    pub tls: bool,
    /// JetStream's fsync policy (`"always"`, `"2m"`, ...); the server's default when `None`.
    pub sync_interval: Option<String>,
    /// How readiness probes and [`NatsServer::client`] connect.
    pub connect: Connect,
    /// A fixed client port, never changed; else one is picked, and picked again when the
    /// server does not come up on it.
    pub port: Option<u16>,
    /// Where the config, store and log go, kept after drop; else a temp dir.
    pub dir: Option<PathBuf>,
    /// Where its stdout and stderr go (appended); `nats.log` in its dir when `None`.
    pub log: Option<PathBuf>,
}

/// A private nats-server: killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct NatsServer {
    process: Process,
    port: u16,
    options: NatsOptions,
    dir: Dir,
}

impl NatsServer {
    /// A plain server, started and serving JetStream.
    pub async fn start_plain() -> Result<NatsServer> {
        NatsServer::start(NatsOptions::default()).await
    }

    /// Starts a server and waits until it serves JetStream. The port is picked free and bound
    /// a moment later: another process (or an outgoing connection's ephemeral port) may take it
    /// in between, so a start that does not come up goes again on a new port (not with a fixed
    /// [`NatsOptions::port`]).
    pub async fn start(options: NatsOptions) -> Result<NatsServer> {
        let attempts = if options.port.is_some() { 1 } else { ATTEMPTS };
        let mut s = NatsServer::new(options)?;
        for attempt in 1..=attempts {
            s.spawn()?;
            if s.ready_within(READY).await {
                return Ok(s);
            }
            s.kill();
            if attempt < attempts {
                eprintln!("nats-server: not up on port {} within {READY:?}, trying a new port", s.port);
                s.set_port(free_port()?)?;
            }
        }
        Err(Error::NotReady { url: s.url(), within: READY, attempts, log: s.log_tail(15) })
    }

    /// A server with its config written, not started ([`NatsServer::spawn`] starts it).
    pub fn new(options: NatsOptions) -> Result<NatsServer> {
        let dir = Dir::new(options.dir.as_deref())?;
        let bin = options.bin.clone().unwrap_or_else(nats_bin);
        let config = dir.path().join("nats.conf");
        let args = vec!["-c".to_string(), config.display().to_string()];
        let log = options.log.clone().unwrap_or_else(|| dir.path().join("nats.log"));
        let process = Process::new(&bin, args, &log);
        let port = match options.port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut s = NatsServer { process, port, options, dir };
        s.set_port(port)?;
        Ok(s)
    }

    /// Moves it to `port` (rewrites its config; takes effect on the next spawn).
    fn set_port(&mut self, port: u16) -> Result<()> {
        self.port = port;
        let path = self.config_path();
        std::fs::write(&path, self.config_text()).map_err(Error::io("writing", path))
    }

    fn config_text(&self) -> String {
        server_config(self.port, &self.store_dir(), self.options.sync_interval.as_deref(), &self.options.config)
    }

    /// Starts the process on its port and store without waiting for it.
    pub fn spawn(&mut self) -> Result<()> {
        self.process.spawn()
    }

    /// Waits until it serves JetStream.
    pub async fn wait_ready(&self) -> Result<()> {
        if self.ready_within(READY).await {
            return Ok(());
        }
        Err(Error::NotReady { url: self.url(), within: READY, attempts: 1, log: self.log_tail(15) })
    }

    async fn ready_within(&self, timeout: Duration) -> bool {
        let (url, connect) = (self.url(), &self.options.connect);
        within(timeout, || async {
            let client = connect.connect(&url, false).await.ok()?;
            async_nats::jetstream::new(client).query_account().await.ok().map(|_| ())
        })
        .await
        .is_some()
    }

    /// Kills it and starts it again on the same port with the same store (streams and
    /// consumers survive), waiting until it serves JetStream.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_ready().await
    }

    /// SIGKILL, as a WAN cut or a crash would; it stays down until started again.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        self.process.terminate(grace);
    }

    /// SIGSTOP: connections stay open and nothing answers.
    pub fn pause(&self) {
        self.process.pause();
    }

    pub fn resume(&self) {
        self.process.resume();
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether it was started and has not exited.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where clients connect: `nats://127.0.0.1:<port>` (`tls://` with [`NatsOptions::tls`]).
    pub fn url(&self) -> String {
        let scheme = if self.options.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A client connected as [`NatsOptions::connect`] says.
    pub async fn client(&self) -> Result<async_nats::Client> {
        self.options.connect.connect(&self.url(), false).await
    }

    pub async fn jetstream(&self) -> Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(self.client().await?))
    }

    pub fn options(&self) -> &NatsOptions {
        &self.options
    }

    /// Its config, store and log live here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir().join("nats.conf")
    }

    /// JetStream's `store_dir`.
    pub fn store_dir(&self) -> PathBuf {
        self.dir().join("store")
    }

    /// stdout and stderr of every run, appended.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The last `lines` lines of its log, for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// A server's config: loopback `listen` on `port`, JetStream in `store`, then `extra`.
fn server_config(port: u16, store: &Path, sync_interval: Option<&str>, extra: &str) -> String {
    let sync = sync_interval.map(|s| format!(", sync_interval: {s:?}")).unwrap_or_default();
    format!("listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {store:?}{sync} }}\n{extra}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_listens_on_loopback_with_jetstream() {
        let c = server_config(4222, Path::new("/tmp/s"), None, "");
        assert_eq!(c, "listen: \"127.0.0.1:4222\"\njetstream { store_dir: \"/tmp/s\" }\n");
    }

    #[test]
    fn the_config_carries_the_sync_interval_and_extra_text() {
        let c = server_config(1, Path::new("/s"), Some("always"), "tls { }\n");
        assert!(c.contains("jetstream { store_dir: \"/s\", sync_interval: \"always\" }\ntls { }\n"), "{c}");
    }

    #[test]
    fn a_new_server_writes_its_config_and_does_not_start() {
        let s = NatsServer::new(NatsOptions { port: Some(4999), tls: true, ..Default::default() }).unwrap();
        let text = std::fs::read_to_string(s.config_path()).unwrap();
        assert!(text.starts_with("listen: \"127.0.0.1:4999\""), "{text}");
        assert_eq!(s.url(), "tls://127.0.0.1:4999");
        assert!(s.pid().is_none());
        assert_eq!(s.log_path(), s.dir().join("nats.log"));
    }

    #[test]
    fn a_server_logs_where_it_is_told() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = dir.path().join("logs/nats-server.log");
        let s = NatsServer::new(NatsOptions { log: Some(log.clone()), ..Default::default() }).unwrap();
        assert_eq!(s.log_path(), log);
    }
}
