use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use tillsync_broker::config::Config;
use tillsync_broker::Broker;

/// Path of a workspace binary (built by `cargo test --workspace`) next to the test executable.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/integration-xxxx -> target/<profile>/<name>
    let dir = exe.parent().and_then(|p| p.parent()).unwrap();
    let path = dir.join(name);
    assert!(path.exists(), "{} not built: run `cargo build --workspace` first", path.display());
    path
}

/// The broker in this process, stopped gracefully with [`InProcBroker::stop`].
pub struct InProcBroker {
    pub broker: Broker,
}

impl InProcBroker {
    pub async fn start(config: Config) -> InProcBroker {
        InProcBroker { broker: Broker::start(config).await.expect("broker starts") }
    }

    pub async fn stop(self) {
        self.broker.shutdown().await;
    }
}

/// The `tillsync-broker` binary as a child process, so a test can `kill -9` it.
pub struct BrokerProc {
    child: Option<Child>,
    http_addr: std::net::SocketAddr,
}

impl BrokerProc {
    pub fn start(config: &Config) -> BrokerProc {
        BrokerProc::start_with_env(config, &[])
    }

    /// Like [`BrokerProc::start`], with further environment variables set after the config's
    /// (settings the config struct does not have, or overrides).
    pub fn start_with_env(config: &Config, extra: &[(&str, &str)]) -> BrokerProc {
        let child = Command::new(bin_path("tillsync-broker"))
            .envs(config.to_env())
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tillsync-broker");
        BrokerProc { child: Some(child), http_addr: config.http_addr }
    }

    /// The exit status once the process has ended by itself; `None` while it runs.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where its /metrics, /healthz and /readyz listen (the configured address: give it a
    /// fixed one, e.g. [`crate::free_addr`], to scrape it).
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.http_addr
    }

    /// Its /metrics text; `None` while it does not answer (starting, paused, killed).
    pub async fn metrics(&self) -> Option<String> {
        let (code, body) = crate::http_get(self.http_addr, "/metrics").await?;
        (code == 200).then_some(body)
    }

    /// SIGSTOP: the process freezes mid-work, connections stay open, leases stop being renewed.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT after [`BrokerProc::pause`]: it resumes where it froze.
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self.pid().expect("broker process running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
        nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("{signal} to broker {pid}: {e}"));
    }

    /// Waits for the process to exit by itself (fault-injection tests); panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        while child.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "broker did not exit within {timeout:?}");
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        self.child = None;
    }

    /// SIGKILL: no graceful shutdown, nothing flushed. Works on a stopped process too.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        self.kill();
    }
}
