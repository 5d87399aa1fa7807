//! A private Postgres cluster: `initdb` into a dir of its own and `pg_ctl` on a free loopback
//! port, with TLS if asked (`ssl = on` and only `hostssl` lines in pg_hba.conf, so a client
//! that did not negotiate TLS is turned away). It can be stopped (`pg_ctl stop -m immediate`),
//! killed (SIGKILL to its postmaster), paused (SIGSTOP to the postmaster and its backends) and
//! started again on the same port and data. As root the binaries run as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use backon::{BlockingRetryable, ConstantBuilder};
use nix::sys::signal::Signal;

use crate::dir::Dir;
use crate::process::signal_pid;
use crate::{free_port, Error, Result};

/// Starts on a new port before a first start is given up (the picked port was taken).
const FIRST_START_ATTEMPTS: usize = 3;
/// Tries of a start again, half a second apart: a killed postmaster's backends may still be
/// exiting and holding the port or shared memory.
const START_AGAIN_ATTEMPTS: usize = 40;

/// What a [`PgServer`] runs with; `PgOptions::default()` is a plain, trusting server.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The server certificate and key (PEM files): TLS on, and only TLS clients admitted.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Where the data, socket and log go, kept after drop; else a temp dir.
    pub dir: Option<PathBuf>,
    pub max_connections: u32,
    /// More `-c name=value` settings (`shared_buffers=32MB`).
    pub settings: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions { tls: None, dir: None, max_connections: 60, settings: Vec::new() }
    }
}

/// A private Postgres cluster, stopped (`pg_ctl stop -m immediate`) when dropped.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    port: u16,
    as_root: bool,
    options: PgOptions,
    /// The processes [`PgServer::pause`] stopped, postmaster last.
    paused: Vec<u32>,
    dir: Dir,
}

/// The newest `/usr/lib/postgresql/*/bin` with an `initdb`.
pub(crate) fn pg_bin() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let entries = std::fs::read_dir(root).map_err(|e| Error::NoPostgres(format!("{}: {e}", root.display())))?;
    let mut bins: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin"))).filter(|(_, bin)| bin.join("initdb").exists())
        })
        .collect();
    bins.sort();
    bins.pop().map(|(_, bin)| bin).ok_or_else(|| Error::NoPostgres("no initdb under /usr/lib/postgresql/*/bin".into()))
}

impl PgServer {
    /// Initialises the cluster and starts it, on a new port when the picked one was taken.
    pub fn start(options: PgOptions) -> Result<PgServer> {
        let mut pg = PgServer::init(options)?;
        for attempt in 1..=FIRST_START_ATTEMPTS {
            match pg.pg_ctl_start() {
                Ok(()) => return Ok(pg),
                Err(e) if attempt == FIRST_START_ATTEMPTS => return Err(e),
                Err(e) => {
                    eprintln!("postgres: not up on port {}: {e}; trying a new port", pg.port);
                    pg.port = free_port()?;
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// `initdb` into its dir (handed to the postgres user when running as root); not started.
    pub fn init(options: PgOptions) -> Result<PgServer> {
        let dir = Dir::new(options.dir.as_deref())?;
        let as_root = nix::unistd::Uid::effective().is_root();
        let pg = PgServer { bin: pg_bin()?, port: free_port()?, as_root, options, paused: Vec::new(), dir };
        if let Some((cert, key)) = &pg.options.tls {
            // The server reads its key as the postgres user, and only from a file no one else
            // can read (the copy keeps the source's mode).
            std::fs::copy(cert, pg.path("server.pem")).map_err(Error::io("copying", cert))?;
            std::fs::copy(key, pg.path("server.key")).map_err(Error::io("copying", key))?;
        }
        if as_root {
            run(Command::new("chown").args(["-R", "postgres:"]).arg(pg.dir()))?;
        }
        run(pg.cmd("initdb").arg("-D").arg(pg.data_dir()).args(["-U", "postgres", "--auth=trust", "--no-sync"]))?;
        if pg.options.tls.is_some() {
            pg.set_hba("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")?;
        }
        Ok(pg)
    }

    /// Starts it again (after [`PgServer::stop`] or [`PgServer::kill`]) on the same port and
    /// data, retrying while a killed postmaster's backends are still exiting.
    pub fn start_again(&mut self) -> Result<()> {
        self.resume();
        let every =
            ConstantBuilder::default().with_delay(Duration::from_millis(500)).with_max_times(START_AGAIN_ATTEMPTS - 1);
        (|| self.pg_ctl_start()).retry(every).call()
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let mut opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir().display());
        if self.options.tls.is_some() {
            let (cert, key) = (self.path("server.pem"), self.path("server.key"));
            opts += &format!(" -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", cert.display(), key.display());
        }
        opts += &format!(" -c max_connections={}", self.options.max_connections);
        for s in &self.options.settings {
            opts += &format!(" -c {s}");
        }
        run(self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "30", "-o", &opts, "start"]))
    }

    /// A real outage: `pg_ctl stop -m immediate`, so connections break and new ones are refused.
    pub fn stop(&mut self) -> Result<()> {
        self.resume();
        run(self.cmd("pg_ctl").arg("-D").arg(self.data_dir()).args(["-m", "immediate", "-w", "stop"]))
    }

    /// SIGKILL to the postmaster (its backends exit on their own), as a crash would.
    pub fn kill(&mut self) {
        self.paused.clear();
        if let Some(pid) = self.pid() {
            signal_pid(pid, Signal::SIGKILL);
        }
    }

    /// SIGSTOP to the backends, then the postmaster, so nothing answers.
    pub fn pause(&mut self) {
        let Some(pm) = self.pid() else { return };
        let mut pids = children(pm);
        pids.push(pm);
        for &p in &pids {
            signal_pid(p, Signal::SIGSTOP);
        }
        self.paused = pids;
    }

    /// SIGCONT to what [`PgServer::pause`] stopped, postmaster first.
    pub fn resume(&mut self) {
        for &p in self.paused.iter().rev() {
            signal_pid(p, Signal::SIGCONT);
        }
        self.paused.clear();
    }

    pub fn is_paused(&self) -> bool {
        !self.paused.is_empty()
    }

    /// The running postmaster's pid, from this data directory's pid file.
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its `postgres` database as the `postgres` user.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// [`PgServer::url`] with a query (`sslmode=...&sslrootcert=...`).
    pub fn url_with(&self, query: &str) -> String {
        format!("{}?{query}", self.url())
    }

    /// `sslmode=verify-full` trusting `ca`: the server's certificate must chain to it and
    /// name 127.0.0.1.
    pub fn verify_full_url(&self, ca: &Path) -> String {
        self.url_with(&format!("sslmode=verify-full&sslrootcert={}", ca.display()))
    }

    /// Replaces pg_hba.conf (read at the next start or [`PgServer::reload`]).
    pub fn set_hba(&self, text: &str) -> Result<()> {
        let path = self.data_dir().join("pg_hba.conf");
        std::fs::write(&path, text).map_err(Error::io("writing", path))
    }

    /// `pg_ctl reload`: the running server reads its config files again.
    pub fn reload(&self) -> Result<()> {
        run(self.cmd("pg_ctl").arg("-D").arg(self.data_dir()).arg("reload"))
    }

    /// From now on TCP connections need the `postgres` user's password (scram-sha-256); the
    /// local socket stays trusted.
    pub async fn require_password(&self, password: &str) -> Result<()> {
        let (url, host) = match self.options.tls {
            Some(_) => (self.url_with("sslmode=require"), "hostssl"),
            None => (self.url(), "host"),
        };
        let sql = |source| Error::Sql { url: url.clone(), source };
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.map_err(sql)?;
        let escaped = password.replace('\'', "''");
        sqlx::query(&format!("ALTER USER postgres PASSWORD '{escaped}'")).execute(&mut c).await.map_err(sql)?;
        self.set_hba(&format!("local all all trust\n{host} all all 127.0.0.1/32 scram-sha-256\n"))?;
        sqlx::query("SELECT pg_reload_conf()").execute(&mut c).await.map_err(sql)?;
        Ok(())
    }

    /// The data, socket, certificates and log live here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.path("postgres.log")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
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
        // The postgres user may not enter the caller's working directory.
        c.current_dir(self.dir()).stdin(Stdio::null()).stdout(Stdio::null());
        c
    }
}

impl Drop for PgServer {
    /// Stops only this cluster: `pg_ctl stop` signals the postmaster of this data directory.
    fn drop(&mut self) {
        if self.pid().is_some() {
            let _ = self.stop();
        }
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| Error::Run { command: command.clone(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(Error::Failed { command, stderr });
    }
    Ok(())
}

/// Alive and not a zombie (a killed postmaster is reaped by init, not by us).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// The pids whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive_and_a_child_of_its_parent() {
        let me = std::process::id();
        assert!(alive(me));
        let parent = parent_of(me).unwrap();
        assert!(children(parent).contains(&me));
    }

    #[test]
    fn a_failed_command_reports_its_stderr() {
        let e = run(Command::new("/bin/sh").args(["-c", "echo nope >&2; exit 3"])).unwrap_err();
        assert!(e.to_string().ends_with("failed: nope"), "{e}");
    }
}
