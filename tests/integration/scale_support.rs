//! Helpers for the scale-out tests: a NATS cluster with a database and several brokers, a fleet
//! of devices publishing ordered histories, and the checks every scale test makes in Postgres.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::HeaderMap;
use futures::StreamExt;
use sqlx::PgPool;
use tillsync_broker::config::Config;
use tillsync_schemas::subject::Family;
use tillsync_schemas::{
    codec, partition, streams, subject, CommandEnvelope, CommandState, DeviceAddr, EventBody, Heartbeat, Outcome,
    SCHEMA_VERSION,
};
use tillsync_tests::{eventually, free_addr, BrokerProc, NatsCluster, TestDb};

use crate::commands::{command, edge_ack, menu, provision, publish_ack, send, Statuses};
use crate::common::{add_tenant, event, item, opened, status};

pub const TENANT: &str = "acme";
/// Partitions of every scale test: more than the brokers, so each owns several.
pub const PARTITIONS: u16 = 8;
/// The design's default lease: a dead broker's partitions move within this plus about 2 s.
pub const LEASE_TTL_S: u64 = 5;
/// Longest wait for a drain or a takeover in these tests.
pub const DRAIN: Duration = Duration::from_secs(60);

/// A 3-node NATS cluster, a fresh database with tenant [`TENANT`], and the brokers started on
/// them (indexed as started; a killed one stays in place as `None`).
pub struct Scale {
    pub cluster: NatsCluster,
    pub db: TestDb,
    pub brokers: Vec<Option<BrokerProc>>,
}

impl Scale {
    pub async fn start() -> Scale {
        tillsync_tests::init_tracing();
        let (cluster, db) = tokio::join!(NatsCluster::start(3), TestDb::new());
        add_tenant(&db.pool, TENANT).await;
        Scale { cluster, db, brokers: Vec::new() }
    }

    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// Broker `n`'s config: R3 streams, [`PARTITIONS`], [`LEASE_TTL_S`], its own instance id
    /// (`broker-<n>`) and HTTP port. `NATS_URL` is one node (node `n` mod 3): the broker does not
    /// take a comma-separated list yet; the client learns the other nodes from the server and
    /// fails over to them.
    pub fn config(&self, n: usize) -> Config {
        let mut c = Config::for_tests(&self.cluster.url(n % 3), &self.db.url);
        c.stream_replicas = 3;
        c.partitions = PARTITIONS;
        c.lease_ttl_s = LEASE_TTL_S;
        c.instance_id = Some(instance(n));
        c.http_addr = free_addr();
        c
    }

    /// Starts the next broker with [`Scale::config`] changed by `tune`; returns its index.
    pub fn add_broker(&mut self, tune: impl FnOnce(&mut Config)) -> usize {
        let n = self.brokers.len();
        let mut c = self.config(n);
        tune(&mut c);
        self.brokers.push(Some(BrokerProc::start(&c)));
        n
    }

    pub fn broker(&self, n: usize) -> &BrokerProc {
        self.brokers[n].as_ref().expect("broker running")
    }

    /// kill -9 broker `n`; returns when the process is gone.
    pub fn kill(&mut self, n: usize) {
        if let Some(mut b) = self.brokers[n].take() {
            b.kill();
        }
    }

    /// Provisions `devices`, starts their simulation and waits until the broker sees them
    /// online (commands are delivered to online devices).
    pub async fn devices_online(&self, devices: &[DeviceAddr]) -> Devices {
        for d in devices {
            provision(self.pool(), d).await;
        }
        let sim = Devices::start(self.cluster.jetstream().await, devices).await;
        let online = format!("SELECT count(*) FROM devices WHERE online AND tenant_id = '{TENANT}'");
        let (pool, want) = (self.pool(), devices.len() as i64);
        eventually(DRAIN, "every device online", || {
            let online = online.clone();
            async move { (count(pool, &online).await == want).then_some(()) }
        })
        .await;
        sim
    }

    /// Waits until broker `n` answers /readyz with 200; fails at once if it exits instead.
    pub async fn ready(&mut self, n: usize) {
        let addr = self.broker(n).http_addr();
        let deadline = Instant::now() + DRAIN;
        loop {
            if let Some((200, _)) = tillsync_tests::http_get(addr, "/readyz").await {
                return;
            }
            if let Some(status) = self.brokers[n].as_mut().and_then(BrokerProc::exited) {
                panic!("broker-{n} exited ({status}) before it was ready; its error is above");
            }
            assert!(Instant::now() < deadline, "broker-{n} not ready after {DRAIN:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

pub fn instance(n: usize) -> String {
    format!("broker-{n}")
}

// ---------------------------------------------------------------------------------------------
// The fleet

/// `stores` store ids spread evenly over the partitions: no partition gets a second store
/// before every partition has one (store ids `s<k>`, skipping those that would crowd one).
pub fn spread_stores(stores: usize) -> Vec<String> {
    let per_partition = stores.div_ceil(usize::from(PARTITIONS));
    let mut used = vec![0; usize::from(PARTITIONS)];
    (0..)
        .map(|k| format!("s{k}"))
        .filter(|s| {
            let p = usize::from(partition::of(TENANT, s, PARTITIONS));
            used[p] += 1;
            used[p] <= per_partition
        })
        .take(stores)
        .collect()
}

/// `stores` stores (spread over the partitions) of `per_store` devices each, `till-<j>`.
pub fn fleet(stores: usize, per_store: usize) -> Vec<DeviceAddr> {
    spread_stores(stores)
        .into_iter()
        .flat_map(|s| (0..per_store).map(move |d| DeviceAddr::new(TENANT, s.clone(), format!("till-{d}"))))
        .collect()
}

/// The one order each device works on.
pub fn order_of(d: &DeviceAddr) -> String {
    format!("o-{}", d.device_id)
}

/// Event `seq` of a device's history: seq 1 opens its order, then item additions (even seqs)
/// and status changes (odd seqs) alternate on it.
pub fn history_event(d: &DeviceAddr, seq: u64) -> EventBody {
    let order = order_of(d);
    match seq {
        1 => opened(&order),
        s if s % 2 == 0 => item(&order, &format!("l-{s}"), 1),
        s => status(&order, &format!("step-{s}")),
    }
}

/// What the read model must hold after `n` events of a device's history: (status, item count).
pub fn expected_order(n: u64) -> (String, i64) {
    let last_status = (2..=n).rev().find(|s| s % 2 == 1);
    let status = last_status.map_or_else(|| "open".to_string(), |s| format!("step-{s}"));
    (status, (n / 2) as i64)
}

/// Publishes `per_device` events of every device's history, interleaved: round `seq` sends seq
/// `seq` of every device and waits for all their acks before the next round, so each device's
/// events are stored in order. A publish that fails (a node down, a leader moving) is retried
/// with the same `Nats-Msg-Id` until it is acked. `pause` between rounds stretches the run so a
/// fault lands while events still arrive. `published` counts acked events.
pub async fn publish_history(
    js: async_nats::jetstream::Context,
    devices: Vec<DeviceAddr>,
    per_device: u64,
    pause: Duration,
    published: Arc<AtomicU64>,
) {
    for seq in 1..=per_device {
        if seq > 1 && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let round = devices.iter().map(|d| {
            let ev = event(d, seq, history_event(d, seq));
            let (js, published) = (js.clone(), published.clone());
            async move {
                publish_until_acked(&js, &ev).await;
                published.fetch_add(1, Ordering::Relaxed);
            }
        });
        futures::future::join_all(round).await;
    }
}

async fn publish_until_acked(js: &async_nats::jetstream::Context, ev: &tillsync_schemas::EventEnvelope) {
    let payload = codec::encode(ev);
    let mut tries = 0;
    loop {
        let mut h = HeaderMap::new();
        h.insert(
            streams::HEADER_MSG_ID,
            streams::event_msg_id(&streams::msg_id_prefix(&ev.addr(), "test"), &ev.event_id).as_str(),
        );
        h.insert(streams::HEADER_CONTENT_TYPE, streams::CONTENT_TYPE);
        let sent = js.publish_with_headers(subject::events(&ev.addr()), h, payload.clone().into()).await;
        if let Ok(ack) = sent {
            if ack.await.is_ok() {
                return;
            }
        }
        tries += 1;
        assert!(tries < 200, "event {} of {} never acked", ev.seq, ev.device_id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts [`publish_history`] in the background.
pub fn spawn_history(
    js: async_nats::jetstream::Context,
    devices: &[DeviceAddr],
    per_device: u64,
    pause: Duration,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let published = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(publish_history(js, devices.to_vec(), per_device, pause, published.clone()));
    (published, task)
}

// ---------------------------------------------------------------------------------------------
// Waiting on Postgres

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until `n` ledger rows are committed; panics after [`DRAIN`].
pub async fn wait_ledger(pool: &PgPool, n: i64) {
    let what = format!("{n} ledger rows");
    eventually(DRAIN, &what, || async move {
        (count(pool, "SELECT count(*) FROM processed_events").await >= n).then_some(())
    })
    .await;
}

/// Waits until every device's watermark is `seq`, printing how long the drain took.
pub async fn wait_watermarks(pool: &PgPool, devices: usize, seq: i64, started: Instant) {
    let sql = format!("SELECT count(*) FROM devices WHERE watermark = {seq}");
    let what = format!("{devices} watermarks at {seq}");
    eventually(DRAIN, &what, || {
        let sql = sql.clone();
        async move { (count(pool, &sql).await == devices as i64).then_some(()) }
    })
    .await;
    eprintln!("drained: {devices} devices at watermark {seq} after {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Checks

/// Every event once: `n` ledger rows, one per (device, seq), no content conflicts, every
/// device at watermark `per_device` with no gap left open.
pub async fn assert_every_event_once(pool: &PgPool, devices: usize, per_device: i64) {
    let n = devices as i64 * per_device;
    assert_eq!(count(pool, "SELECT count(*) FROM processed_events").await, n, "ledger rows");
    let distinct = "SELECT count(*) FROM (SELECT DISTINCT tenant_id, store_id, device_id, seq FROM processed_events) x";
    assert_eq!(count(pool, distinct).await, n, "one ledger row per (device, seq)");
    let mismatches = "SELECT count(*) FROM conflicts WHERE kind = 'content_mismatch'";
    assert_eq!(count(pool, mismatches).await, 0, "content conflicts");
    assert_eq!(count(pool, "SELECT count(*) FROM device_gaps WHERE filled_at IS NULL").await, 0, "open gaps");
    let complete = format!("SELECT count(*) FROM devices WHERE watermark = {per_device} AND last_seq = {per_device}");
    assert_eq!(count(pool, &complete).await, devices as i64, "complete watermarks");
}

/// (store, device, seq, partition, epoch) of a ledger row.
type EventAt = (String, String, i64, Option<i32>, Option<i64>);
/// (seq, outcome, epoch, stream_seq, committed_at) of a ledger row.
type Commit = (i64, String, Option<i64>, Option<i64>, String);

/// Each device's events were applied in its order: none `stale` (arrived after a later event
/// of the device that superseded it), no conflict of any kind. On failure it shows the first
/// stale event and its device's ledger around it: the commit times and stream sequences say
/// who committed what in which order.
pub async fn assert_in_order(pool: &PgPool) {
    let gaps = count(pool, "SELECT count(*) FROM device_gaps").await;
    let stale: Vec<EventAt> = sqlx::query_as(
        "SELECT store_id, device_id, seq, partition, epoch FROM processed_events
         WHERE outcome <> 'applied' ORDER BY committed_at",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    eprintln!("order: {} events not applied in order (stale), {gaps} gaps seen", stale.len());
    if let Some((store, device, seq, ..)) = stale.first() {
        let around: Vec<Commit> = sqlx::query_as(
            "SELECT seq, outcome, epoch, stream_seq, committed_at::text FROM processed_events
             WHERE store_id = $1 AND device_id = $2 AND seq BETWEEN $3 - 4 AND $3 + 4 ORDER BY seq",
        )
        .bind(store)
        .bind(device)
        .bind(seq)
        .fetch_all(pool)
        .await
        .unwrap();
        let around: Vec<String> = around.iter().map(|r| format!("{r:?}")).collect();
        panic!(
            "{} events stale, first (store, device, seq, partition, epoch) {:?}; that device's ledger \
             around it (seq, outcome, epoch, stream_seq, committed_at):\n{}",
            stale.len(),
            stale[0],
            around.join("\n")
        );
    }
    assert_eq!(count(pool, "SELECT count(*) FROM conflicts").await, 0, "conflicts");
}

/// Across a NATS node restart JetStream may hand a message again after its ack wait when its
/// first delivery was lost with the broker's connection, while later messages of the device
/// were already delivered and committed: that event is then recorded `stale` (its facts were
/// superseded; read models are a function of the set of events, docs/reliability.md). This
/// excuses exactly that: a `stale` row whose stream sequence is below that of a later event of
/// its device committed before it (the stream had them in order; delivery did not). Anything
/// else not applied, or a conflict of another kind, fails as in [`assert_in_order`].
pub async fn assert_in_order_but_redeliveries(pool: &PgPool) {
    let redelivered = "SELECT count(*) FROM processed_events s WHERE s.outcome = 'stale' AND EXISTS (
        SELECT 1 FROM processed_events l
        WHERE l.tenant_id = s.tenant_id AND l.store_id = s.store_id AND l.device_id = s.device_id
          AND l.seq > s.seq AND l.stream_seq > s.stream_seq AND l.committed_at < s.committed_at)";
    let excused = count(pool, redelivered).await;
    let not_applied = count(pool, "SELECT count(*) FROM processed_events WHERE outcome <> 'applied'").await;
    eprintln!("order: {not_applied} events not applied in order, {excused} of them redeliveries behind a later event");
    if not_applied != excused {
        assert_in_order(pool).await;
    }
    let other = "SELECT count(*) FROM conflicts WHERE kind <> 'stale'";
    assert_eq!(count(pool, other).await, 0, "conflicts other than redelivered stale events");
    let stale = "SELECT count(DISTINCT (tenant_id, store_id, device_id, event_id)) FROM conflicts WHERE kind = 'stale'";
    assert_eq!(count(pool, stale).await, excused, "stale conflicts are the redelivered events");
}

/// The read model equals each device's history: its order's currency and status, and one
/// item per item event.
pub async fn assert_read_models(pool: &PgPool, devices: &[DeviceAddr], per_device: u64) {
    let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "SELECT o.store_id, o.order_id, o.currency, o.status,
                (SELECT count(*) FROM order_items i
                  WHERE i.tenant_id = o.tenant_id AND i.store_id = o.store_id AND i.order_id = o.order_id)
         FROM orders o WHERE o.tenant_id = $1",
    )
    .bind(TENANT)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), devices.len(), "one order per device");
    let (want_status, want_items) = expected_order(per_device);
    for d in devices {
        let row = rows
            .iter()
            .find(|r| r.0 == d.store_id && r.1 == order_of(d))
            .unwrap_or_else(|| panic!("no order for {}/{}", d.store_id, d.device_id));
        assert_eq!((row.2.as_str(), row.3.as_str(), row.4), ("EUR", want_status.as_str(), want_items), "{d:?}");
    }
}

/// Every ledger row written by a partition owner carries its store's partition.
pub async fn assert_partitions_of_rows(pool: &PgPool) {
    let rows: Vec<(String, String, Option<i32>)> =
        sqlx::query_as("SELECT DISTINCT tenant_id, store_id, partition FROM processed_events")
            .fetch_all(pool)
            .await
            .unwrap();
    for (t, s, p) in rows {
        let want = i32::from(partition::of(&t, &s, PARTITIONS));
        assert_eq!(p, Some(want), "partition of {t}/{s} in processed_events");
    }
}

/// No partition had two writers: per partition, the commit intervals (first..last
/// `committed_at`) of its epochs do not overlap and follow epoch order, and nothing was
/// committed under an epoch after the next epoch of its partition was acquired.
pub async fn assert_one_writer_per_partition(pool: &PgPool) {
    let overlaps: Vec<(i32, i64, i64)> = sqlx::query_as(
        "WITH spans AS (
             SELECT partition, epoch, min(committed_at) AS lo, max(committed_at) AS hi
             FROM processed_events WHERE epoch IS NOT NULL GROUP BY partition, epoch)
         SELECT a.partition, a.epoch, b.epoch FROM spans a
         JOIN spans b ON a.partition = b.partition AND a.epoch < b.epoch AND a.hi > b.lo",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(overlaps.is_empty(), "(partition, epoch, later epoch) whose commits overlap: {overlaps:?}");
    let late = count(
        pool,
        "SELECT count(*) FROM processed_events pe
         JOIN partition_epochs nxt ON nxt.partition = pe.partition AND nxt.epoch > pe.epoch
         WHERE pe.committed_at > nxt.acquired_at",
    )
    .await;
    assert_eq!(late, 0, "events committed under an epoch after a later epoch was acquired");
}

/// Partitions per instance, as `partition_owners` shows them held (not released).
pub async fn owners(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT instance_id, count(*) FROM partition_owners WHERE released_at IS NULL
         GROUP BY instance_id ORDER BY instance_id",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default()
}

/// Waits until every partition is held and each of `instances` holds at least one; prints
/// the split.
pub async fn wait_spread(pool: &PgPool, instances: &[String]) -> Vec<(String, i64)> {
    let what = format!("{PARTITIONS} partitions held, spread over {instances:?}");
    let split = eventually(DRAIN, &what, || async move {
        let o = owners(pool).await;
        let held: i64 = o.iter().map(|r| r.1).sum();
        let spread = instances.iter().all(|i| o.iter().any(|r| &r.0 == i && r.1 > 0));
        let only = o.iter().all(|r| instances.contains(&r.0));
        (held == i64::from(PARTITIONS) && spread && only).then_some(o)
    })
    .await;
    eprintln!("partition owners: {split:?}");
    split
}

/// The epochs `instance` held, as (partition, epoch).
pub async fn epochs_of(pool: &PgPool, instance: &str) -> Vec<(i32, i64)> {
    sqlx::query_as("SELECT partition, epoch FROM partition_epochs WHERE instance_id = $1 ORDER BY 1, 2")
        .bind(instance)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// `tillsync_partitions_owned` of a running broker; `None` while it does not answer.
pub async fn owned_metric(b: &BrokerProc) -> Option<f64> {
    tillsync_tests::metric(&b.metrics().await?, "tillsync_partitions_owned", "")
}

/// Waits until no partition is held by `gone` and all are held by others; returns how long
/// that took from `since`. On timeout it shows the owners and what Postgres sessions wait on
/// (a takeover waits for commits in flight under the old epoch).
pub async fn wait_taken_over(pool: &PgPool, gone: &str, since: Instant) -> Duration {
    let deadline = Instant::now() + DRAIN;
    loop {
        let o = owners(pool).await;
        let held: i64 = o.iter().map(|r| r.1).sum();
        if held == i64::from(PARTITIONS) && o.iter().all(|r| r.0 != gone) {
            return since.elapsed();
        }
        if Instant::now() > deadline {
            let sessions: Vec<(String, Option<String>, String)> = sqlx::query_as(
                "SELECT coalesce(state, ''), wait_event_type, left(query, 120) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_all(pool)
            .await
            .unwrap_or_default();
            panic!("partitions of {gone} not taken over in {DRAIN:?}: owners {o:?}; sessions {sessions:#?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Simulated devices for commands

/// Devices that heartbeat and take their commands as the bridge does: the first delivery of a
/// command is applied and acked, a redelivery only re-sends the stored ack. One durable
/// consumer over the tenant's command subjects serves them all (cheaper than one per device).
pub struct Devices {
    /// Deliveries per command id.
    deliveries: Arc<Mutex<HashMap<String, u32>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Devices {
    pub async fn start(js: async_nats::jetstream::Context, devices: &[DeviceAddr]) -> Devices {
        let heartbeat = tokio::spawn(heartbeats(js.clone(), devices.to_vec()));
        let stream = eventually(DRAIN, "commands stream", || {
            let js = js.clone();
            async move { js.get_stream(streams::COMMANDS).await.ok() }
        })
        .await;
        let name = "scale-devices".to_string();
        let consumer = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: Family::Commands.tenant_subjects(TENANT),
                    ack_policy: AckPolicy::Explicit,
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let deliveries = Arc::new(Mutex::new(HashMap::new()));
        let seen = deliveries.clone();
        let take = tokio::spawn(async move {
            let mut messages = consumer.messages().await.unwrap();
            while let Some(Ok(msg)) = messages.next().await {
                let cmd = codec::decode_command(&msg.subject, &msg.payload).expect("broker sends valid commands");
                let device = cmd.device_id.clone().expect("a device's copy names its device");
                let addr = DeviceAddr::new(&cmd.tenant_id, &cmd.store_id, device);
                *seen.lock().unwrap().entry(cmd.command_id.clone()).or_insert(0) += 1;
                // Applied or not, the stored ack is the same: the device applies on first sight.
                publish_ack(&js, &edge_ack(&addr, &cmd.command_id, Outcome::Applied, "ok")).await;
                let _ = msg.ack().await;
            }
        });
        Devices { deliveries, tasks: vec![heartbeat, take] }
    }

    /// Deliveries per command id so far.
    pub fn deliveries(&self) -> HashMap<String, u32> {
        self.deliveries.lock().unwrap().clone()
    }
}

impl Drop for Devices {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A heartbeat from every device each second, so the broker keeps them online.
async fn heartbeats(js: async_nats::jetstream::Context, devices: Vec<DeviceAddr>) {
    let started = tillsync_broker::now_ms();
    loop {
        for a in &devices {
            let hb = Heartbeat {
                schema_version: SCHEMA_VERSION,
                tenant_id: a.tenant_id.clone(),
                store_id: a.store_id.clone(),
                device_id: a.device_id.clone(),
                at_ms: tillsync_broker::now_ms(),
                software_version: "scale-sim".into(),
                outbox_depth: 0,
                oldest_unsent_age_s: 0,
                last_acked_seq: 0,
                config_revision: 0,
                uptime_s: ((tillsync_broker::now_ms() - started) / 1000) as u64,
                watermarks_refused: 0,
            };
            let _ = js.publish(subject::heartbeats(a), codec::encode(&hb).into()).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `n` approved commands (two approvers, 2 min to live), round robin over `devices`.
pub fn commands_for(devices: &[DeviceAddr], n: usize) -> Vec<CommandEnvelope> {
    (0..n)
        .map(|i| {
            let d = &devices[i % devices.len()];
            command(TENANT, &d.store_id, Some(&d.device_id), menu(), &["alice", "bob"], 120_000)
        })
        .collect()
}

/// Sends `cmds` on intake as the portal does, 25 every 100 ms, so sending spans a few seconds.
pub fn spawn_commands(js: async_nats::jetstream::Context, cmds: &[CommandEnvelope]) -> tokio::task::JoinHandle<()> {
    let cmds = cmds.to_vec();
    tokio::spawn(async move {
        for chunk in cmds.chunks(25) {
            futures::future::join_all(chunk.iter().map(|c| send(&js, c))).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Every command of `cmds` reached its device and ended once, acked: one inbox row, one final
/// log row, one ack that made the transition, no expiry, and only `acked` as final status.
pub async fn assert_commands_acked_once(pool: &PgPool, cmds: &[CommandEnvelope], sim: &Devices, statuses: &Statuses) {
    let n = cmds.len() as i64;
    assert_eq!(count(pool, "SELECT count(*) FROM commands WHERE rejected_code IS NULL").await, n, "accepted");
    assert_eq!(count(pool, "SELECT count(*) FROM command_inbox WHERE state = 'acked'").await, n, "inbox acked");
    let one_final = "SELECT count(*) FROM (SELECT command_id FROM command_log
         WHERE state IN ('acked', 'failed', 'expired', 'cancelled', 'rejected')
         GROUP BY command_id HAVING count(*) = 1 AND bool_and(state = 'acked')) x";
    assert_eq!(count(pool, one_final).await, n, "one final log row each, acked");
    assert_eq!(count(pool, "SELECT count(*) FROM command_log WHERE state = 'expired'").await, 0, "expired");
    let transitions = "SELECT count(*) FROM command_acks WHERE effect = 'applied_transition'";
    assert_eq!(count(pool, transitions).await, n, "one ack made each transition");

    let deliveries = sim.deliveries();
    let redelivered = deliveries.values().filter(|d| **d > 1).count();
    let most = deliveries.values().max().copied().unwrap_or(0);
    eprintln!(
        "deliveries: {} commands reached devices, {redelivered} more than once, at most {most}",
        deliveries.len()
    );
    for c in cmds {
        assert!(deliveries.contains_key(&c.command_id), "command {} never reached its device", c.command_id);
    }
    // Statuses a killed broker left unpublished are sent by the sweeper of the next owner.
    let finals =
        |id: &str| -> Vec<CommandState> { statuses.of(id).into_iter().map(|s| s.1).filter(|s| s.is_final()).collect() };
    eventually(DRAIN, "an acked status for every command", || async {
        cmds.iter().all(|c| finals(&c.command_id).contains(&CommandState::Acked)).then_some(())
    })
    .await;
    for c in cmds {
        let seen = finals(&c.command_id);
        assert!(seen.iter().all(|s| *s == CommandState::Acked), "final statuses of {}: {seen:?}", c.command_id);
    }
}
