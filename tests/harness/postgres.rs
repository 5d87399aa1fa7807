//! A private Postgres cluster that speaks TLS, for the tests of `sslmode` and of Postgres
//! outages ([`TlsPostgres::stop`]): `initdb` into a temp
//! dir, `ssl = on` with a [`Certs`] server certificate, only `hostssl` lines in pg_hba.conf (so a
//! client that did not negotiate TLS is turned away), `pg_ctl` on a free loopback port, and
//! `pg_ctl stop` of this data directory on drop. As root the binaries run as the postgres user,
//! as ops/src/chaos/postgres.rs does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::nats::free_port;
use crate::Certs;

pub struct TlsPostgres {
    bin: PathBuf,
    dir: TempDir,
    pub port: u16,
    as_root: bool,
    started: bool,
}

/// The newest `/usr/lib/postgresql/*/bin` with an `initdb`.
fn pg_bin() -> PathBuf {
    let mut bins: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("no /usr/lib/postgresql: install Debian's postgresql package")
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin"))).filter(|(_, bin)| bin.join("initdb").exists())
        })
        .collect();
    bins.sort();
    bins.pop().expect("no initdb under /usr/lib/postgresql/*/bin").1
}

impl TlsPostgres {
    /// Initialises and starts the cluster with `certs`' server certificate.
    pub fn start(certs: &Certs) -> TlsPostgres {
        let dir = TempDir::new().unwrap();
        let as_root = nix::unistd::Uid::effective().is_root();
        let mut pg = TlsPostgres { bin: pg_bin(), dir, port: free_port(), as_root, started: false };
        // The server reads its key as the postgres user, and only from a file no one else can read.
        std::fs::copy(&certs.server_cert, pg.path("server.pem")).unwrap();
        std::fs::copy(&certs.server_key, pg.path("server.key")).unwrap();
        if as_root {
            run(Command::new("chown").args(["-R", "postgres:"]).arg(pg.dir.path()));
        }
        run(pg.cmd("initdb").arg("-D").arg(pg.path("data")).args(["-U", "postgres", "--auth=trust", "--no-sync"]));
        std::fs::write(pg.path("data/pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
            .unwrap();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c max_connections=60",
            pg.port,
            pg.dir.path().display(),
            pg.path("server.pem").display(),
            pg.path("server.key").display(),
        );
        std::fs::write(pg.path("options"), opts).unwrap();
        pg.start_again();
        pg
    }

    /// Starts the cluster (again, after [`TlsPostgres::stop`]) on the same port and data.
    pub fn start_again(&mut self) {
        let opts = std::fs::read_to_string(self.path("options")).unwrap();
        let log = self.path("postgres.log");
        run(self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.path("data"))
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "30", "-o", &opts, "start"]));
        self.started = true;
    }

    /// A real outage: `pg_ctl stop -m immediate`, so connections break and new ones are refused.
    pub fn stop(&mut self) {
        run(self.cmd("pg_ctl").arg("-D").arg(self.path("data")).args(["-m", "immediate", "-w", "stop"]));
        self.started = false;
    }

    /// From now on TCP connections need the `postgres` user's password, `password`
    /// (scram-sha-256); the local socket stays trusted.
    pub async fn require_password(&self, password: &str) {
        let url = self.url("sslmode=require");
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
        sqlx::query(&format!("ALTER USER postgres PASSWORD '{password}'")).execute(&mut c).await.unwrap();
        std::fs::write(
            self.path("data/pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        sqlx::query("SELECT pg_reload_conf()").execute(&mut c).await.unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A URL of its `postgres` database with the given query (`sslmode=...&sslrootcert=...`).
    pub fn url(&self, query: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres?{query}", self.port)
    }

    /// `sslmode=verify-full` trusting `ca`: the server's certificate must chain to it and name 127.0.0.1.
    pub fn verify_full_url(&self, ca: &Path) -> String {
        self.url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()))
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
        // The postgres user may not enter the test's working directory.
        c.current_dir(self.dir.path()).stdin(Stdio::null()).stdout(Stdio::null());
        c
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl Drop for TlsPostgres {
    /// Stops only this cluster: `pg_ctl stop` signals the postmaster of this data directory.
    fn drop(&mut self) {
        if self.started {
            let _ =
                self.cmd("pg_ctl").arg("-D").arg(self.path("data")).args(["-m", "immediate", "-w", "stop"]).output();
        }
    }
}
