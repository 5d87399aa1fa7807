//! The processes a chaos run starts: each a child of this process with its own log file in the
//! run directory, started by testkit and killed (SIGKILL), stopped (SIGTERM), paused (SIGSTOP)
//! and resumed (SIGCONT) by its pid only. A process that should run and exited is restarted by
//! the supervisor, as systemd would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tillsync_testkit::{NatsServer, Process};

/// A binary of this workspace: next to this executable, or in `TILLSYNC_BIN_DIR`.
pub fn sibling_bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("TILLSYNC_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()?.parent().context("executable has no directory")?.to_path_buf(),
    };
    let bin = dir.join(name);
    anyhow::ensure!(
        bin.exists(),
        "{} not found (build the workspace's binaries, or set TILLSYNC_BIN_DIR)",
        bin.display()
    );
    Ok(bin)
}

/// What a [`Proc`] runs: a program of ours (broker, bridge) or a private nats-server.
#[derive(Debug)]
enum Runner {
    Program(Process),
    Nats(Box<NatsServer>),
}

impl Runner {
    fn spawn(&mut self) -> tillsync_testkit::Result<()> {
        match self {
            Runner::Program(p) => p.spawn(),
            Runner::Nats(n) => n.spawn(),
        }
    }

    fn is_running(&mut self) -> bool {
        match self {
            Runner::Program(p) => p.is_running(),
            Runner::Nats(n) => n.is_running(),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Runner::Program(p) => p.pid(),
            Runner::Nats(n) => n.pid(),
        }
    }

    fn kill(&mut self) {
        match self {
            Runner::Program(p) => p.kill(),
            Runner::Nats(n) => n.kill(),
        }
    }

    fn terminate(&mut self, grace: Duration) {
        match self {
            Runner::Program(p) => p.terminate(grace),
            Runner::Nats(n) => n.terminate(grace),
        }
    }

    fn pause(&self) {
        match self {
            Runner::Program(p) => p.pause(),
            Runner::Nats(n) => n.pause(),
        }
    }

    fn resume(&self) {
        match self {
            Runner::Program(p) => p.resume(),
            Runner::Nats(n) => n.resume(),
        }
    }
}

#[derive(Debug)]
pub struct Proc {
    pub name: String,
    runner: Runner,
    /// Should be running: the supervisor restarts it when it exited.
    pub wanted: bool,
    pub paused: bool,
    /// Exits nobody asked for, restarted by the supervisor.
    pub crashes: u32,
}

impl Proc {
    /// `program` with `args` and `envs`, logging to `<logs>/<name>.log`; not started.
    pub fn new(name: &str, program: &Path, args: Vec<String>, envs: Vec<(String, String)>, logs: &Path) -> Proc {
        let process = Process::new(program, args, &logs.join(format!("{name}.log"))).with_envs(envs);
        Proc::with(name, Runner::Program(process))
    }

    /// A private nats-server made by testkit (its config written, not started).
    pub fn nats(name: &str, server: NatsServer) -> Proc {
        Proc::with(name, Runner::Nats(Box::new(server)))
    }

    fn with(name: &str, runner: Runner) -> Proc {
        Proc { name: name.into(), runner, wanted: false, paused: false, crashes: 0 }
    }

    /// Starts it (a no-op when it still runs).
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.wanted = true;
        if self.runner.is_running() {
            return Ok(());
        }
        self.runner.spawn().with_context(|| format!("cannot start {}", self.name))?;
        self.paused = false;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.runner.pid()
    }

    /// SIGKILL, then reap; it stays down until started again.
    pub fn kill9(&mut self) {
        self.wanted = false;
        self.runner.kill();
        self.paused = false;
    }

    /// SIGTERM (graceful), SIGKILL after `grace`; it stays down until started again.
    pub fn terminate(&mut self, grace: Duration) {
        self.wanted = false;
        self.runner.terminate(grace);
        self.paused = false;
    }

    pub fn pause(&mut self) {
        if self.runner.pid().is_some() {
            self.runner.pause();
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        self.runner.resume();
        self.paused = false;
    }

    /// Restarts it if it should run and exited by itself; returns whether it did.
    pub fn supervise(&mut self) -> anyhow::Result<bool> {
        if !self.wanted || self.paused {
            return Ok(false);
        }
        let exited = !self.runner.is_running();
        if exited {
            self.crashes += 1;
            self.runner.kill();
            self.start()?;
        }
        Ok(exited)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}
