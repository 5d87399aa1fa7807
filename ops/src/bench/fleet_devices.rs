//! The simulated devices of `bench fleet`: NATS connections made by the bridge's own
//! `tillsync_edge::nats::connect`, each carrying one or more devices, and per device the
//! bridge's heartbeat (`heartbeat::Beater`) plus either today's downlink (the bridge's
//! `commands::Executor` and `config_sync::Syncer`, which create and pull their JetStream
//! consumers themselves) or the floor (plain core-NATS subscriptions on the same subjects).
//!
//! The devices share one SQLite file: idle devices read it at start and for each heartbeat
//! only, and 1,000 files would measure this machine's disk, not NATS.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use sqlx::sqlite::SqlitePool;
use tillsync_edge::{backoff::Backoff, commands, config_sync, handler::HandlerSpec, heartbeat, metrics::Metrics};
use tillsync_edge::{outbox, publisher, status};
use tillsync_schemas::{config as cfg, subject, DeviceAddr};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What each device holds on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downlink {
    /// The bridge's code as it is: a durable pull consumer on the commands stream and a named
    /// consumer on the configuration deltas, both pulled continuously.
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

/// Device `i` of the fleet: ten devices a store, as `bench scale`'s data has them.
pub fn addr(i: usize) -> DeviceAddr {
    DeviceAddr::new("fleet", format!("store-{:05}", i / 10), format!("till-{i:06}"))
}

/// The running devices; [`Fleet::stop`] ends every task (dropping it aborts them).
pub struct Fleet {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    clients: Vec<async_nats::Client>,
    /// Held so the floor's interest stays registered on the server.
    _subscriptions: Vec<async_nats::Subscriber>,
    /// Held so the status sources' cut-off never reads "closed".
    _cut_off: watch::Sender<Option<tillsync_edge::cutoff::CutOff>>,
    _pool: SqlitePool,
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
    let db = dir.join("fleet.db");
    let metrics = Arc::new(Metrics::new());
    let ids: Vec<usize> = (0..devices).collect();
    let groups: Vec<Vec<usize>> = ids.chunks(per_connection.max(1)).map(<[usize]>::to_vec).collect();
    let connect = |(c, devices): (usize, Vec<usize>)| {
        let url = urls[c % urls.len()].clone();
        let (db, metrics) = (db.clone(), metrics.clone());
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

/// Starts every connection's devices. Returns once every device's tasks (or subscriptions) are
/// started; today's consumers are created by the devices' own tasks afterwards.
pub async fn start(connections: Vec<Connection>, downlink: Downlink, dir: &Path) -> anyhow::Result<Fleet> {
    let db = dir.join("fleet.db");
    let pool = tillsync_edge::db::open(&db, false).await.context("opening the devices' SQLite file")?;
    let (cut_off_tx, cut_off) = watch::channel(None);
    let metrics = Arc::new(Metrics::new());
    let cancel = CancellationToken::new();
    let mut fleet = Fleet {
        cancel: cancel.clone(),
        tasks: JoinSet::new(),
        clients: Vec::new(),
        _subscriptions: Vec::new(),
        _cut_off: cut_off_tx,
        _pool: pool.clone(),
    };
    for c in connections {
        let js = async_nats::jetstream::ContextBuilder::new().timeout(c.edge.ack_timeout()).build(c.client.clone());
        for &i in &c.devices {
            let device = Device {
                addr: addr(i),
                edge: &c.edge,
                js: &js,
                pool: &pool,
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
    addr: DeviceAddr,
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
        let beat_now = Arc::new(tokio::sync::Notify::new());
        match downlink {
            Downlink::Today => {
                fleet.tasks.spawn(
                    config_sync::Syncer {
                        addr: self.addr.clone(),
                        js: self.js.clone(),
                        pool: self.pool.clone(),
                        db_path: edge.db.clone(),
                        metrics: self.metrics.clone(),
                        connected: self.connected.clone(),
                        cancel: self.cancel.clone(),
                        backoff: backoff.clone(),
                        snapshot_after: edge.config_snapshot_after,
                        applied: vec![beat_now.clone()],
                    }
                    .run(),
                );
                fleet.tasks.spawn(
                    commands::Executor {
                        addr: self.addr.clone(),
                        msg_id_prefix: outbox.msg_id_prefix().to_string(),
                        js: self.js.clone(),
                        pool: self.pool.clone(),
                        handler: HandlerSpec::None,
                        trusted_keys: Arc::new(RwLock::new(Vec::new())),
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

async fn wait_connected(mut connected: watch::Receiver<bool>) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(15), connected.wait_for(|c| *c))
        .await
        .context("not connected within 15 s")?
        .context("connection closed")?;
    Ok(())
}

impl Fleet {
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
