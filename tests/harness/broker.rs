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
}

impl BrokerProc {
    pub fn start(config: &Config) -> BrokerProc {
        let child = Command::new(bin_path("tillsync-broker"))
            .envs(config.to_env())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tillsync-broker");
        BrokerProc { child: Some(child) }
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

    /// SIGKILL: no graceful shutdown, nothing flushed.
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
