//! Everything a chaos run starts: nats-server, Postgres, the broker(s) and one bridge per
//! device, with their settings; how each fault is undone; the supervisor's restarts; healing.
//! NATS authorization is on for all of them ([`super::auth`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tillsync_testkit::{free_port, NatsOptions, NatsServer};

use super::auth::Auth;
use super::nemesis::Fault;
use super::postgres::PgCluster;
use super::procs::{sibling_bin, Proc};
use super::Device;

/// Broker settings that make a minute of chaos exercise retries, offline detection and
/// redelivery (the defaults are tuned for hours: 5 s first retry, 90 s offline, 30 s ack wait).
const BROKER_ENV: &[(&str, &str)] = &[
    ("TILLSYNC_COMMAND_RETRY_MS", "1000"),
    ("TILLSYNC_OFFLINE_AFTER_S", "10"),
    ("TILLSYNC_ACK_WAIT_S", "5"),
    ("TILLSYNC_DB_POOL", "4"),
    // The nemesis plays NATS write loss by deleting acknowledged events, which the streams
    // otherwise deny (a debug build's switch; docs/chaos.md).
    ("TILLSYNC_FAULT_STREAMS_DELETABLE", "true"),
];

#[derive(Debug)]
pub struct Fleet {
    pub nats: Proc,
    pub pg: PgCluster,
    pub brokers: Vec<Proc>,
    /// Each broker's /metrics and /readyz address.
    pub broker_http: Vec<String>,
    pub bridges: Vec<Proc>,
    pub nats_url: String,
    pub auth: Auth,
    /// `tillsync-edge`, for activating the bridges before their first start.
    pub edge: PathBuf,
    pub logs: PathBuf,
}

/// A bridge's SQLite file; its identity file lands next to it.
pub fn bridge_db(dir: &Path, d: &Device) -> PathBuf {
    dir.join(format!("{}.db", d.device_id))
}

/// Where the binaries are: `tillsync-broker` and `tillsync-edge` next to this executable (or
/// in `TILLSYNC_BIN_DIR`); nats-server as [`tillsync_ops::nats_server::find`] finds it (2.10 or
/// later).
pub struct Bins {
    pub broker: PathBuf,
    pub edge: PathBuf,
    pub nats: PathBuf,
}

impl Bins {
    pub fn find() -> anyhow::Result<Bins> {
        let (broker, edge) = (sibling_bin("tillsync-broker")?, sibling_bin("tillsync-edge")?);
        let nats = tillsync_ops::nats_server::find()?;
        Ok(Bins { broker, edge, nats })
    }
}

impl Fleet {
    /// Creates (does not start) nats-server, the brokers and the bridges; Postgres is started.
    /// nats-server runs `auth`'s config (so does every restart); the brokers get its keys.
    pub fn new(
        bins: &Bins,
        dir: &Path,
        pg: PgCluster,
        brokers: usize,
        devices: &[Device],
        handler: &str,
        auth: Auth,
    ) -> anyhow::Result<Fleet> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        // The run's nats-server: `auth`'s config after testkit's loopback `listen` and
        // JetStream store under `nats/`, its log with the others.
        let conf = auth.server_conf();
        let config = std::fs::read_to_string(&conf).with_context(|| format!("reading {}", conf.display()))?;
        let server = NatsServer::new(NatsOptions {
            bin: Some(bins.nats.clone()),
            config,
            dir: Some(dir.join("nats")),
            log: Some(logs.join("nats-server.log")),
            ..Default::default()
        })?;
        let nats_url = server.url();
        let nats = Proc::nats("nats-server", server);
        let (mut broker_procs, mut broker_http) = (Vec::new(), Vec::new());
        for b in 1..=brokers {
            let mut env: Vec<(String, String)> =
                BROKER_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            env.extend(auth.broker_env());
            env.push(("NATS_URL".into(), nats_url.clone()));
            env.push(("DATABASE_URL".into(), pg.url()));
            broker_http.push(format!("127.0.0.1:{}", free_port()?));
            env.push(("TILLSYNC_HTTP_ADDR".into(), broker_http[b - 1].clone()));
            env.push(("TILLSYNC_INSTANCE_ID".into(), format!("chaos-broker-{b}")));
            // The public test key (chaos devices are private to the run); bridges trust it below.
            let key = tillsync_broker::admin::signing::test_key_file();
            env.push(("TILLSYNC_SIGNING_KEY_FILE".into(), key.display().to_string()));
            env.push(("RUST_LOG".into(), "info".into()));
            broker_procs.push(Proc::new(&format!("broker-{b}"), &bins.broker, vec![], env, &logs));
        }
        let bridges = devices
            .iter()
            .map(|d| {
                // --tenant/--store/--device agree with the identity file activation writes.
                let db = bridge_db(dir, d).to_string_lossy().into_owned();
                let handler = format!("http://{handler}/apply/{}", d.device_id);
                let args = [
                    "run",
                    "--tenant",
                    &d.tenant_id,
                    "--store",
                    &d.store_id,
                    "--device",
                    &d.device_id,
                    "--nats-url",
                    &nats_url,
                    "--db",
                    &db,
                    "--http-addr",
                    &d.http,
                    "--handler",
                    &handler,
                    "--heartbeat-s",
                    "2",
                    "--backoff-max-ms",
                    "2000",
                    "--ack-timeout-ms",
                    "2000",
                    "--sqlite-sync",
                    "normal",
                    "--command-keys",
                    tillsync_schemas::signature::TEST_PUBLIC_KEY,
                ];
                Proc::new(&d.device_id, &bins.edge, args.map(String::from).to_vec(), vec![], &logs)
            })
            .collect();
        Ok(Fleet {
            nats,
            pg,
            brokers: broker_procs,
            broker_http,
            bridges,
            nats_url,
            auth,
            edge: bins.edge.clone(),
            logs,
        })
    }

    /// Ends `fault` on target `i`: starts what it killed or stopped, resumes what it paused.
    pub fn undo(&mut self, fault: Fault, i: usize) -> anyhow::Result<()> {
        match fault {
            Fault::KillBroker => self.brokers[i].start(),
            Fault::KillBridge | Fault::BridgeOffline => self.bridges[i].start(),
            Fault::KillNats => self.nats.start(),
            Fault::KillPostgres => self.pg.start_again(),
            Fault::PauseBroker => {
                self.brokers[i].resume();
                Ok(())
            }
            Fault::PauseBridge => {
                self.bridges[i].resume();
                Ok(())
            }
            Fault::PauseNats => {
                self.nats.resume();
                Ok(())
            }
            Fault::PausePostgres => {
                self.pg.resume();
                Ok(())
            }
            Fault::DeleteEvents => self.brokers.iter_mut().try_for_each(Proc::start),
        }
    }

    /// Restarts whatever should run and exited; returns their names.
    pub fn supervise(&mut self) -> Vec<String> {
        let mut restarted = Vec::new();
        if matches!(self.pg.supervise(), Ok(true)) {
            restarted.push("postgres".to_string());
        }
        for p in std::iter::once(&mut self.nats).chain(&mut self.brokers).chain(&mut self.bridges) {
            match p.supervise() {
                Ok(true) => restarted.push(p.name.clone()),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, name = p.name, "Could not restart."),
            }
        }
        restarted
    }

    /// Heal: everything resumed and running.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        self.pg.resume();
        if self.pg.pid().is_none() {
            self.pg.start_again()?;
        }
        for p in std::iter::once(&mut self.nats).chain(&mut self.brokers).chain(&mut self.bridges) {
            p.resume();
            p.start()?;
        }
        Ok(())
    }

    /// Stops everything: bridges and brokers gracefully, then nats-server and Postgres.
    pub fn stop(&mut self) {
        for p in self.bridges.iter_mut().chain(&mut self.brokers) {
            p.terminate(Duration::from_secs(10));
        }
        self.nats.terminate(Duration::from_secs(5));
        self.pg.stop_immediate();
    }
}
