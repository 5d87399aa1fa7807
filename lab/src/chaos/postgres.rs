//! The chaos run's private Postgres cluster, started by testkit in the run directory (`pg/`),
//! so the nemesis can kill it (SIGKILL to the postmaster, or `pg_ctl stop -m immediate`),
//! pause it (SIGSTOP to the postmaster and its backends) and start it again; here only whether
//! it should run, for the supervisor.

use std::path::Path;

use anyhow::Context;
use tillsync_testkit::{PgOptions, PgServer};

#[derive(Debug)]
pub struct PgCluster {
    server: PgServer,
    /// Should be running: the supervisor starts it again when it is gone.
    pub wanted: bool,
}

impl PgCluster {
    /// Initialises a cluster in `dir` and starts it on a free loopback port.
    pub fn start(dir: &Path) -> anyhow::Result<PgCluster> {
        let options = PgOptions {
            dir: Some(dir.into()),
            settings: vec!["shared_buffers=32MB".into()],
            max_connections: 60,
            ..Default::default()
        };
        let server = PgServer::start(options).context("starting the run's Postgres")?;
        Ok(PgCluster { server, wanted: true })
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Starts it again on its port and data, retrying while a killed postmaster's backends
    /// are still exiting.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.server.start_again().context("Postgres did not start")?;
        self.wanted = true;
        Ok(())
    }

    /// The postmaster's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    pub fn kill9(&mut self) {
        self.wanted = false;
        self.server.kill();
    }

    pub fn stop_immediate(&mut self) {
        self.wanted = false;
        let _ = self.server.stop();
    }

    pub fn pause(&mut self) {
        self.server.pause();
    }

    pub fn resume(&mut self) {
        self.server.resume();
    }

    /// Starts it again if it should run and is gone.
    pub fn supervise(&mut self) -> anyhow::Result<bool> {
        if !self.wanted || self.server.is_paused() || self.pid().is_some() {
            return Ok(false);
        }
        self.start_again()?;
        Ok(true)
    }
}
