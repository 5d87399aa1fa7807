//! The processes a chaos run starts: each a child of this process with its own log file in the
//! run directory, killed (SIGKILL), stopped (SIGTERM), paused (SIGSTOP) and resumed (SIGCONT)
//! by its pid only. A process that should run and exited is restarted by the supervisor, as
//! systemd would.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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

/// A free port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sends `signal` to `pid`; a process already gone is not an error.
pub fn signal(pid: i32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid), signal);
}

#[derive(Debug)]
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// Should be running: the supervisor restarts it when it exited.
    pub wanted: bool,
    pub paused: bool,
    /// Exits nobody asked for, restarted by the supervisor.
    pub crashes: u32,
}

impl Proc {
    pub fn new(name: &str, program: &Path, args: Vec<String>, envs: Vec<(String, String)>, logs: &Path) -> Proc {
        Proc {
            name: name.into(),
            program: program.into(),
            args,
            envs,
            log: logs.join(format!("{name}.log")),
            child: None,
            wanted: false,
            paused: false,
            crashes: 0,
        }
    }

    /// Starts it (a no-op when it still runs).
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.wanted = true;
        if let Some(c) = self.child.as_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                return Ok(());
            }
        }
        let log = OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        self.wanted = true;
        self.paused = false;
        Ok(())
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILL, then reap; it stays down until started again.
    pub fn kill9(&mut self) {
        self.wanted = false;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// SIGTERM (graceful), SIGKILL after `grace`; it stays down until started again.
    pub fn terminate(&mut self, grace: Duration) {
        self.wanted = false;
        if let Some(mut c) = self.child.take() {
            if self.paused {
                signal(c.id() as i32, Signal::SIGCONT);
            }
            signal(c.id() as i32, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    pub fn pause(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, Signal::SIGSTOP);
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, Signal::SIGCONT);
        }
        self.paused = false;
    }

    /// Restarts it if it should run and exited by itself; returns whether it did.
    pub fn supervise(&mut self) -> anyhow::Result<bool> {
        if !self.wanted || self.paused {
            return Ok(false);
        }
        let exited = match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        };
        if exited {
            self.crashes += 1;
            self.child = None;
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
