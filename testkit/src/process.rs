//! A child process of ours with its output appended to a log file: started, killed, stopped,
//! paused and resumed by its own pid only, and killed when dropped.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{Error, Result};

/// A free port on 127.0.0.1: bound, then released for a child to take (which another process
/// may take first; the launchers start over on a new port then).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(Error::FreePort)?;
    Ok(listener.local_addr().map_err(Error::FreePort)?.port())
}

/// One program with fixed arguments, run again and again with the same log.
#[derive(Debug)]
pub struct Process {
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// A process not started yet; its stdout and stderr go to the end of `log`.
    pub fn new(program: &Path, args: Vec<String>, log: &Path) -> Process {
        Process { program: program.into(), args, envs: Vec::new(), log: log.into(), child: None }
    }

    /// The same process with these environment variables added to ours at every start.
    pub fn with_envs(mut self, envs: Vec<(String, String)>) -> Process {
        self.envs = envs;
        self
    }

    /// Starts it (again); one still running is killed first.
    pub fn spawn(&mut self) -> Result<()> {
        self.kill();
        // Appended across restarts, so a failure message shows what every run said.
        let log =
            OpenOptions::new().create(true).append(true).open(&self.log).map_err(Error::io("opening", &self.log))?;
        let out = log.try_clone().map_err(Error::io("opening", &self.log))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .map_err(|source| Error::Spawn { bin: self.program.clone(), source })?;
        self.child = Some(child);
        Ok(())
    }

    /// The pid of the running (or exited, not yet reaped) child.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it was started and has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, then reap, as a crash would; a no-op when not started.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (SIGCONT first, in case it is paused), then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        self.signal(Signal::SIGCONT);
        self.signal(Signal::SIGTERM);
        if let Some(c) = self.child.as_mut() {
            crate::until_blocking(grace, Duration::from_millis(50), || !matches!(c.try_wait(), Ok(None)));
        }
        self.kill();
    }

    /// SIGSTOP: it holds its sockets but answers nothing until [`Process::resume`].
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            signal_pid(pid, signal);
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its log, for an error message.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{}:\n{}", self.log.display(), tail.join("\n"))
    }
}

/// Sends `signal` to `pid` (one of ours); a process already gone is not an error.
pub(crate) fn signal_pid(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_is_on_loopback_and_not_zero() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).unwrap();
    }

    #[test]
    fn a_process_logs_and_is_killed_by_its_pid() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = dir.path().join("sh.log");
        let script = "echo hello; exec sleep 30".to_string();
        let mut p = Process::new(Path::new("/bin/sh"), vec!["-c".into(), script], &log);
        assert!(!p.is_running() && p.pid().is_none());
        p.spawn().unwrap();
        assert!(p.is_running() && p.pid().is_some());
        crate::until_blocking(Duration::from_secs(5), Duration::from_millis(20), || p.log_tail(5).contains("hello"));
        assert!(p.log_tail(5).ends_with("hello"), "{}", p.log_tail(5));
        p.terminate(Duration::from_secs(5));
        assert!(!p.is_running() && p.pid().is_none());
    }

    #[test]
    fn a_process_gets_its_environment_at_every_start() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = dir.path().join("env.log");
        let script = "echo \"x=$TESTKIT_X\"".to_string();
        let mut p = Process::new(Path::new("/bin/sh"), vec!["-c".into(), script], &log)
            .with_envs(vec![("TESTKIT_X".into(), "1".into())]);
        for _ in 0..2 {
            p.spawn().unwrap();
            assert!(
                crate::until_blocking(Duration::from_secs(5), Duration::from_millis(20), || !p.is_running()),
                "exits"
            );
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "x=1\nx=1\n");
    }

    #[test]
    fn a_missing_program_names_itself() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut p = Process::new(Path::new("/nonexistent/nats-server"), vec![], &dir.path().join("x.log"));
        let e = p.spawn().unwrap_err().to_string();
        assert!(e.starts_with("cannot start /nonexistent/nats-server"), "{e}");
    }
}
