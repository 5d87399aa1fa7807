//! The simulated devices of `bench fleet`: NATS connections made by the bridge's own
//! `tillsync_edge::nats::connect`, each carrying one or more devices, and per device the
//! bridge's heartbeat (`heartbeat::Beater`) plus either today's downlink (the bridge's own
//! `commands::executor::Executor` and `store_config::sync::Syncer`: plain subscriptions, a
//! catch-up request the broker answers, a configuration check at connect) or the floor (plain
//! core-NATS subscriptions on the same subjects and nothing else).
//!
//! Each device has a SQLite file of its own, as a bridge has (its configuration position and
//! command ledger are per device), opened with one connection so 4,000 of them fit in one
//! process's file descriptors; they are written in `normal` sync mode, so the machine's disk
//! is not what is measured.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use sqlx::sqlite::SqlitePool;
use tillsync_edge::events::{outbox, publisher};
use tillsync_edge::{backoff::Backoff, commands, handler::HandlerSpec, heartbeat, store_config};
use tillsync_edge::{metrics::Metrics, status};
use tillsync_schemas::{config as cfg, subject, DeviceAddr};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What each device holds on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downlink {
    /// The bridge's code as it is (docs/architecture.md, "The downlink without consumers").
    Today,
    /// Plain subscriptions on the device's command subject and its store's delta subject.
    Floor,
}

impl Downlink {
    pub fn name(self) -> &'static str {
        match self {
            Downlink::Today => "today",
            Downlink::Floor => "floor",
        }
    }
}

/// Device `i` of the fleet: the bench tenant's, ten devices a store.
pub fn addr(i: usize) -> DeviceAddr {
    super::data::device(i)
}

/// Per device: the highest configuration version its SQLite file holds, and when it was seen
/// there (today only; the floor applies nothing).
pub type Applied = Arc<Mutex<Vec<(u64, Option<Instant>)>>>;

/// The running devices; [`Fleet::stop`] ends every task (dropping it aborts them).
pub struct Fleet {
    /// Shared by every device: counters sum over the fleet.
    pub metrics: Arc<Metrics>,
    pub applied: Applied,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    clients: Vec<async_nats::Client>,
    /// Held so the floor's interest stays registered on the server.
    _subscriptions: Vec<async_nats::Subscriber>,
    /// Held so the status sources' cut-off never reads "closed".
    _cut_off: watch::Sender<Option<tillsync_edge::cutoff::CutOff>>,
}

/// One NATS connection made as the bridge makes it, and the devices it carries.
pub struct Connection {
    edge: tillsync_edge::Config,
    client: async_nats::Client,
    connected: watch::Receiver<bool>,
    devices: Vec<usize>,
}

/// Opens the connections for `devices` devices, `per_connection` devices each, spread over the
/// cluster's nodes, a few at a time; returns once every one is up.
pub async fn connect(
    urls: &[String],
    devices: usize,
    per_connection: usize,
    dir: &Path,
) -> anyhow::Result<Vec<Connection>> {
    let metrics = Arc::new(Metrics::new());
    let ids: Vec<usize> = (0..devices).collect();
    let groups: Vec<Vec<usize>> = ids.chunks(per_connection.max(1)).map(<[usize]>::to_vec).collect();
    let connect = |(c, devices): (usize, Vec<usize>)| {
        let url = urls[c % urls.len()].clone();
        let (db, metrics) = (db_path(dir, devices[0]), metrics.clone());
        async move {
            let mut edge = tillsync_edge::Config::new(&addr(devices[0]), &url, &db);
            edge.sqlite_sync = "normal".into();
            let (observed, _) = tokio::sync::mpsc::unbounded_channel();
            let (client, connected) =
                tillsync_edge::nats::connect(&edge, metrics, observed, Arc::new(Default::default()))
                    .await
                    .with_context(|| format!("connection {c} to {url}"))?;
            wait_connected(connected.clone()).await.with_context(|| format!("connection {c} to {url}"))?;
            anyhow::Ok(Connection { edge, client, connected, devices })
        }
    };
    futures::stream::iter(groups.into_iter().enumerate()).map(connect).buffer_unordered(32).try_collect().await
}

/// Device `i`'s SQLite file.
fn db_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("device-{i}.db"))
}

/// Opens (creating and migrating) every device's SQLite file, a few at a time.
async fn open_files(dir: &Path, devices: &[usize]) -> anyhow::Result<Vec<(usize, SqlitePool)>> {
    let open = |i: usize| async move {
        let pool = tillsync_edge::db::open_with(&db_path(dir, i), false, 1)
            .await
            .with_context(|| format!("opening device {i}'s SQLite file"))?;
        anyhow::Ok((i, pool))
    };
    futures::stream::iter(devices.iter().copied()).map(open).buffer_unordered(16).try_collect().await
}

/// Starts every connection's devices. Returns once every device's tasks (or subscriptions) are
/// started; today's consumers are created by the devices' own tasks afterwards.
pub async fn start(connections: Vec<Connection>, downlink: Downlink, dir: &Path) -> anyhow::Result<Fleet> {
    let ids: Vec<usize> = connections.iter().flat_map(|c| c.devices.iter().copied()).collect();
    let pools: std::collections::HashMap<usize, SqlitePool> = open_files(dir, &ids).await?.into_iter().collect();
    let (cut_off_tx, cut_off) = watch::channel(None);
    let metrics = Arc::new(Metrics::new());
    let cancel = CancellationToken::new();
    let mut fleet = Fleet {
        metrics: metrics.clone(),
        applied: Arc::new(Mutex::new(vec![(0, None); ids.iter().max().map_or(0, |m| m + 1)])),
        cancel: cancel.clone(),
        tasks: JoinSet::new(),
        clients: Vec::new(),
        _subscriptions: Vec::new(),
        _cut_off: cut_off_tx,
    };
    for c in connections {
        let js = async_nats::jetstream::ContextBuilder::new().timeout(c.edge.ack_timeout()).build(c.client.clone());
        for &i in &c.devices {
            let device = Device {
                index: i,
                addr: addr(i),
                db: db_path(dir, i),
                edge: &c.edge,
                js: &js,
                pool: &pools[&i],
                metrics: &metrics,
                connected: &c.connected,
                cut_off: &cut_off,
                cancel: &cancel,
            };
            device.start(downlink, &c.client, &mut fleet).await?;
        }
        fleet.clients.push(c.client);
    }
    for client in &fleet.clients {
        client.flush().await.context("flushing the devices' subscriptions")?;
    }
    Ok(fleet)
}

/// One device's share of a connection.
struct Device<'a> {
    index: usize,
    addr: DeviceAddr,
    db: PathBuf,
    edge: &'a tillsync_edge::Config,
    js: &'a async_nats::jetstream::Context,
    pool: &'a SqlitePool,
    metrics: &'a Arc<Metrics>,
    connected: &'a watch::Receiver<bool>,
    cut_off: &'a watch::Receiver<Option<tillsync_edge::cutoff::CutOff>>,
    cancel: &'a CancellationToken,
}

impl Device<'_> {
    async fn start(self, downlink: Downlink, client: &async_nats::Client, fleet: &mut Fleet) -> anyhow::Result<()> {
        let edge = self.edge;
        let limits = outbox::Limits {
            max_rows: edge.outbox_max_rows,
            max_bytes: edge.outbox_max_bytes,
            retention_ms: (edge.retention_s as i64).saturating_mul(1000),
            event_id_retention_ms: (edge.event_id_retention_s as i64).saturating_mul(1000),
        };
        let outbox =
            Arc::new(outbox::Outbox::open(self.pool.clone(), self.addr.clone(), limits, self.metrics.clone()).await?);
        let backoff =
            Backoff::new(Duration::from_millis(edge.backoff_min_ms), Duration::from_millis(edge.backoff_max_ms));
        let beat_now = Arc::new(Notify::new());
        match downlink {
            Downlink::Today => {
                let applied = Arc::new(Notify::new());
                fleet.tasks.spawn(watch_applied(
                    self.index,
                    self.pool.clone(),
                    applied.clone(),
                    fleet.applied.clone(),
                    self.cancel.clone(),
                ));
                fleet.tasks.spawn(
                    store_config::sync::Syncer {
                        addr: self.addr.clone(),
                        client: self.js.client(),
                        recheck_every: Duration::from_millis(edge.config_recheck_ms),
                        js: self.js.clone(),
                        pool: self.pool.clone(),
                        db_path: self.db.clone(),
                        metrics: self.metrics.clone(),
                        connected: self.connected.clone(),
                        cancel: self.cancel.clone(),
                        backoff: backoff.clone(),
                        snapshot_after: edge.config_snapshot_after,
                        applied: vec![beat_now.clone(), applied],
                    }
                    .run(),
                );
                fleet.tasks.spawn(
                    commands::executor::Executor {
                        addr: self.addr.clone(),
                        client: self.js.client(),
                        old_consumer_dropped: false,
                        msg_id_prefix: outbox.msg_id_prefix().to_string(),
                        js: self.js.clone(),
                        pool: self.pool.clone(),
                        handler: HandlerSpec::None,
                        trusted_keys: Arc::new(RwLock::new(vec![
                            tillsync_schemas::signature::TEST_PUBLIC_KEY.to_string()
                        ])),
                        handler_timeout: edge.handler_timeout(),
                        ack_timeout: edge.ack_timeout(),
                        metrics: self.metrics.clone(),
                        connected: self.connected.clone(),
                        cancel: self.cancel.clone(),
                        backoff,
                    }
                    .run(),
                );
            }
            Downlink::Floor => {
                let delta = cfg::delta_subject(&self.addr.tenant_id, &self.addr.store_id);
                for s in [subject::commands(&self.addr), delta] {
                    fleet._subscriptions.push(client.subscribe(s).await?);
                }
            }
        }
        let source = Arc::new(status::StatusSource {
            outbox,
            connected: self.connected.clone(),
            cut_off: self.cut_off.clone(),
            sent: Arc::new(publisher::SentMark::default()),
            published: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
        });
        fleet.tasks.spawn(
            heartbeat::Beater {
                js: self.js.clone(),
                source,
                metrics: self.metrics.clone(),
                connected: self.connected.clone(),
                cancel: self.cancel.clone(),
                every: edge.heartbeat_every(),
                ack_timeout: edge.ack_timeout(),
                beat_now,
            }
            .run(),
        );
        Ok(())
    }
}

/// Records device `i`'s configuration version each time its syncer applies a change set.
async fn watch_applied(i: usize, pool: SqlitePool, notify: Arc<Notify>, applied: Applied, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = notify.notified() => {}
        }
        let at = Instant::now();
        match store_config::cache::position(&pool).await {
            Ok(p) => applied.lock().expect("not poisoned")[i] = (p.version, Some(at)),
            Err(e) => {
                tracing::warn!(device = i, error = %e, "Cannot read a simulated device's configuration position.")
            }
        }
    }
}

async fn wait_connected(mut connected: watch::Receiver<bool>) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(15), connected.wait_for(|c| *c))
        .await
        .context("not connected within 15 s")?
        .context("connection closed")?;
    Ok(())
}

impl Fleet {
    /// Waits (until `deadline`) for every device to hold configuration `version`; the times are
    /// from `sent` to the moment each device was seen holding it.
    pub async fn config_applied(&self, version: u64, sent: Instant, deadline: Instant) -> anyhow::Result<Vec<f64>> {
        loop {
            let ms: Option<Vec<f64>> = {
                let applied = self.applied.lock().expect("not poisoned");
                let held = |(v, at): &(u64, Option<Instant>)| (*v >= version).then_some(*at).flatten();
                applied
                    .iter()
                    .map(|a| held(a).map(|at| at.saturating_duration_since(sent).as_secs_f64() * 1000.0))
                    .collect()
            };
            if let Some(ms) = ms {
                return Ok(ms);
            }
            if Instant::now() > deadline {
                let applied = self.applied.lock().expect("not poisoned");
                let behind = applied.iter().filter(|(v, _)| *v < version).count();
                anyhow::bail!("{behind} of {} devices below configuration version {version}", applied.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Cancels every device, waits (up to 30 s) for their tasks and drains the connections.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        let join = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(30), join).await.is_err() {
            tracing::warn!("Simulated devices did not stop within 30 s; aborting them.");
            self.tasks.abort_all();
        }
        for client in &self.clients {
            let _ = tokio::time::timeout(Duration::from_secs(5), client.drain()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_devices_a_store_with_distinct_ids() {
        assert_eq!(addr(9).store_id, addr(0).store_id);
        assert_ne!(addr(10).store_id, addr(9).store_id);
        assert_ne!(addr(1).device_id, addr(0).device_id);
    }
}
