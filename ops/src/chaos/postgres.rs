//! A private Postgres cluster for one chaos run: `initdb` into the run directory and `pg_ctl`
//! on a free loopback port, so the nemesis can kill it (SIGKILL to the postmaster, or
//! `pg_ctl stop -m immediate`), pause it (SIGSTOP to the postmaster and its backends) and start
//! it again. As root, the binaries run as the `postgres` user (as scripts/lib.sh does).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;

use super::procs::{free_port, signal};

#[derive(Debug)]
pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    as_root: bool,
    pub wanted: bool,
    pub paused: Vec<i32>,
}

/// The newest `/usr/lib/postgresql/*/bin`.
fn pg_bin() -> anyhow::Result<PathBuf> {
    let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install Debian's postgresql package")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    bins.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    bins.pop().context("no initdb under /usr/lib/postgresql/*/bin")
}

impl PgCluster {
    /// `initdb` into `dir` (created; handed to the postgres user when running as root).
    pub fn init(dir: &Path) -> anyhow::Result<PgCluster> {
        std::fs::create_dir_all(dir)?;
        let as_root = nix::unistd::Uid::effective().is_root();
        let pg =
            PgCluster { bin: pg_bin()?, dir: dir.into(), port: free_port()?, as_root, wanted: false, paused: vec![] };
        if as_root {
            run(Command::new("chown").args(["-R", "postgres:"]).arg(dir))?;
        }
        run(pg.cmd("initdb").arg("-D").arg(pg.data()).args(["-U", "postgres", "--auth=trust", "--no-sync"]))?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn cmd(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut c = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        c.stdin(Stdio::null());
        c
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the postmaster, retrying while a killed one's backends are still exiting.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c shared_buffers=32MB -c max_connections=60",
            self.port,
            self.dir.display()
        );
        let mut last = None;
        for _ in 0..40 {
            let r = run(self
                .cmd("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.join("postgres.log"))
                .args(["-w", "-t", "20", "-o", &opts, "start"]));
            match r {
                Ok(()) => {
                    self.wanted = true;
                    self.paused.clear();
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(last.expect("tried").context("Postgres did not start"))
    }

    /// The postmaster's pid, from its pid file.
    pub fn pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    pub fn kill9(&mut self) {
        self.wanted = false;
        self.paused.clear();
        if let Some(pid) = self.pid() {
            signal(pid, Signal::SIGKILL);
        }
    }

    pub fn stop_immediate(&mut self) {
        self.wanted = false;
        self.resume();
        let _ = run(self.cmd("pg_ctl").arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]));
    }

    /// SIGSTOP to the backends, then the postmaster, so nothing answers.
    pub fn pause(&mut self) {
        let Some(pm) = self.pid() else { return };
        let mut pids = children(pm);
        pids.push(pm);
        for &p in &pids {
            signal(p, Signal::SIGSTOP);
        }
        self.paused = pids;
    }

    pub fn resume(&mut self) {
        for &p in self.paused.iter().rev() {
            signal(p, Signal::SIGCONT);
        }
        self.paused.clear();
    }

    /// Starts it again if it should run and is gone.
    pub fn supervise(&mut self) -> anyhow::Result<bool> {
        if !self.wanted || !self.paused.is_empty() || self.pid().is_some() {
            return Ok(false);
        }
        self.start()?;
        Ok(true)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.pid().is_some() {
            self.stop_immediate();
        }
    }
}

fn run(c: &mut Command) -> anyhow::Result<()> {
    let out = c.stdout(Stdio::null()).output().with_context(|| format!("cannot run {c:?}"))?;
    anyhow::ensure!(out.status.success(), "{c:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// Alive and not a zombie (a killed postmaster is reaped by init, not by us).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// The pids whose parent is `parent`.
fn children(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<i32>().ok()))
                == Some(parent)
        })
        .collect()
}
