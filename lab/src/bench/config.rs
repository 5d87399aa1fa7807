//! `bench config`: configuration down to simulated bridges, as a fleet would take it.
//!
//! Every simulated device does what a bridge does on first boot: it subscribes (core NATS) to
//! its store's delta subject, takes the store's snapshot (a direct get), then applies the
//! deltas as they arrive on the subscription; like an in-step bridge, it holds no JetStream
//! consumer (a bridge's transient catch-up consumer is for one that was away). Head office
//! then publishes `--changes` tenant-wide change sets over the portal subject, one every
//! `--interval-ms`; each gives every store its next version. Publish-to-applied is measured per device and
//! version, from the moment the publish request was sent to the moment the device holds the
//! delta (it applies at once). Bytes are counted per device, for the snapshot and the deltas.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tillsync_broker::Broker;
use tillsync_schemas::config::{self, ChangeRequest, ChangeSet, ConfigDelta, ConfigSnapshot, PublishReply};
use tillsync_schemas::{codec, streams as names, DeviceAddr};

use super::env::Env;
use super::report::Report;
use super::{data, ingest};

#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Simulated devices (10 per store).
    #[arg(long, default_value_t = 1_000)]
    pub devices: usize,
    /// Change sets to publish after first boot; each gives every store a version.
    #[arg(long, default_value_t = 100)]
    pub changes: usize,
    /// Menu items in the first configuration (what a snapshot carries).
    #[arg(long, default_value_t = 200)]
    pub items: usize,
    /// Milliseconds between two publishes.
    #[arg(long, default_value_t = 200)]
    pub interval_ms: u64,
}

/// How long the run may wait for the fleet to take a version.
const STALL: Duration = Duration::from_secs(60);

/// What the simulated fleet saw.
struct Fleet {
    /// Send time of the publish that made each version (version 1: the first menu).
    sent: HashMap<u64, Instant>,
    latency: Histogram<u64>,
    snapshot_bytes: Vec<u64>,
    delta_bytes: Vec<u64>,
    /// Per device: highest version held.
    held: Vec<u64>,
    problem: Option<String>,
}

pub async fn run(args: ConfigArgs, env: &mut Env) -> anyhow::Result<Report> {
    if args.devices == 0 || args.changes == 0 || args.items == 0 {
        bail!("--devices, --changes and --items must be positive");
    }
    let client = env.nats().await?;
    let js = data::js(client.clone());
    env.ensure_empty_streams(&js).await?;
    let url = ingest::fresh(env).await?;
    super::commands::add_devices(&url, args.devices).await?;
    let broker = Broker::start(env.broker_config(&url)).await.context("broker start")?;
    let outcome = measure(&args, &client, &js).await;
    super::stop_broker(broker).await;
    let fleet = outcome?;
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let stores = args.devices.div_ceil(data::PER_STORE);
    let mut r = Report::new("config");
    r.param("devices", args.devices)
        .param("stores", stores)
        .param("changes", args.changes)
        .param("items", args.items)
        .param("interval_ms", args.interval_ms)
        .number("applied_p50_ms", q(&fleet.latency, 0.5))
        .number("applied_p99_ms", q(&fleet.latency, 0.99))
        .number("applied_max_ms", fleet.latency.max() as f64 / 1000.0)
        .number("snapshot_bytes_per_device", super::median(&as_f64(&fleet.snapshot_bytes)))
        .number("delta_bytes_per_device", super::median(&as_f64(&fleet.delta_bytes)))
        .number("delta_bytes_per_version", super::median(&as_f64(&fleet.delta_bytes)) / args.changes as f64)
        .note("applied_*: publish request sent -> the delta is at the device, across devices and versions; bytes: medians over devices of message payloads received");
    Ok(r)
}

fn as_f64(v: &[u64]) -> Vec<f64> {
    v.iter().map(|&b| b as f64).collect()
}

/// What the run reports.
struct Figures {
    latency: Histogram<u64>,
    snapshot_bytes: Vec<u64>,
    delta_bytes: Vec<u64>,
}

async fn measure(
    args: &ConfigArgs,
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<Figures> {
    let fleet = Arc::new(Mutex::new(Fleet {
        sent: HashMap::new(),
        latency: Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds"),
        snapshot_bytes: vec![0; args.devices],
        delta_bytes: vec![0; args.devices],
        held: vec![0; args.devices],
        problem: None,
    }));
    // Version 1 everywhere: the first menu, which first boot takes as a snapshot.
    fleet.lock().expect("not poisoned").sent.insert(1, Instant::now());
    publish(client, first_menu(args.items)).await?;
    wait_snapshots(js, args.devices).await?;
    let mut devices = Vec::with_capacity(args.devices);
    for i in 0..args.devices {
        devices.push(super::AbortOnDrop(tokio::spawn(device(js.clone(), i, fleet.clone()))));
    }
    wait_held(&fleet, &devices, 1).await.context("first boot")?;
    tracing::info!(devices = args.devices, "Every simulated device holds version 1; publishing.");
    for k in 0..args.changes {
        let version = k as u64 + 2;
        fleet.lock().expect("not poisoned").sent.insert(version, Instant::now());
        publish(client, price_change(k, args.items)).await?;
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    wait_held(&fleet, &devices, args.changes as u64 + 1).await?;
    drop(devices);
    let mut f = fleet.lock().expect("not poisoned");
    Ok(Figures {
        latency: f.latency.clone(),
        snapshot_bytes: std::mem::take(&mut f.snapshot_bytes),
        delta_bytes: std::mem::take(&mut f.delta_bytes),
    })
}

pub(super) fn first_menu(items: usize) -> ChangeSet {
    let mut changes = vec![upsert("menu_category", "mains", json!({"name": "Mains"}))];
    changes.extend((0..items).map(|i| {
        upsert(
            "menu_item",
            &format!("item-{i}"),
            json!({"name": format!("Item {i}"), "price_minor": 500 + i, "category_id": "mains"}),
        )
    }));
    change_set(changes)
}

pub(super) fn price_change(k: usize, items: usize) -> ChangeSet {
    let i = k % items;
    change_set(vec![upsert(
        "menu_item",
        &format!("item-{i}"),
        json!({"name": format!("Item {i}"), "price_minor": 1_000 + k, "category_id": "mains"}),
    )])
}

fn upsert(t: &str, id: &str, body: serde_json::Value) -> ChangeRequest {
    ChangeRequest { op: "upsert".into(), entity_type: t.into(), id: id.into(), body: Some(body) }
}

fn change_set(changes: Vec<ChangeRequest>) -> ChangeSet {
    ChangeSet { tenant_id: data::TENANT.into(), store_id: None, if_match: None, published_by: "bench".into(), changes }
}

/// Publishes as the portal does and insists on `published`.
pub(super) async fn publish(client: &async_nats::Client, cs: ChangeSet) -> anyhow::Result<()> {
    let subject = config::publish_subject(data::TENANT, None);
    let reply = tokio::time::timeout(Duration::from_secs(30), client.request(subject, codec::encode(&cs).into()))
        .await
        .context("no publish reply within 30 s")?
        .context("publish request")?;
    match codec::decode::<PublishReply>(&reply.payload).context("publish reply")? {
        PublishReply::Published { .. } => Ok(()),
        PublishReply::Refused { code, detail } => bail!("publish refused: {code} ({detail})"),
    }
}

/// Waits until every store's snapshot of version 1 is on the stream.
async fn wait_snapshots(js: &async_nats::jetstream::Context, devices: usize) -> anyhow::Result<()> {
    let stream = js.get_stream_no_info(names::CONFIG_SNAPSHOTS).await?;
    let deadline = Instant::now() + STALL;
    for s in 0..devices.div_ceil(data::PER_STORE) {
        let addr = data::device(s * data::PER_STORE);
        let subject = config::snapshot_subject(&addr.tenant_id, &addr.store_id);
        while stream.direct_get_last_for_subject(&subject).await.is_err() {
            if Instant::now() > deadline {
                bail!(
                    "no configuration snapshot for store {} after {STALL:?}; is the distributor running?",
                    addr.store_id
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Waits until every device holds `version`, failing on a device that stopped or a stall.
async fn wait_held(
    fleet: &Mutex<Fleet>,
    devices: &[super::AbortOnDrop<anyhow::Result<()>>],
    version: u64,
) -> anyhow::Result<()> {
    let mut progress = (usize::MAX, Instant::now());
    loop {
        let behind = {
            let f = fleet.lock().expect("not poisoned");
            if let Some(p) = &f.problem {
                bail!("{p}");
            }
            f.held.iter().filter(|&&v| v < version).count()
        };
        if behind == 0 {
            return Ok(());
        }
        if let Some(i) = devices.iter().position(|d| d.0.is_finished()) {
            bail!("simulated device {i} stopped");
        }
        if behind != progress.0 {
            progress = (behind, Instant::now());
        } else if progress.1.elapsed() > STALL {
            bail!("{behind} devices still below version {version} after {STALL:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One simulated bridge: its store's deltas subscribed, first boot from the snapshot, then the
/// deltas live.
async fn device(js: async_nats::jetstream::Context, i: usize, fleet: Arc<Mutex<Fleet>>) -> anyhow::Result<()> {
    let addr: DeviceAddr = data::device(i);
    // First: the direct get below goes out after it on the same connection, so every delta
    // stored after the snapshot reaches it.
    let mut messages = js.client().subscribe(config::delta_subject(&addr.tenant_id, &addr.store_id)).await?;
    let snapshots = js.get_stream_no_info(names::CONFIG_SNAPSHOTS).await?;
    let raw = snapshots.direct_get_last_for_subject(config::snapshot_subject(&addr.tenant_id, &addr.store_id)).await?;
    let snap: ConfigSnapshot = config::decode(&raw.payload).context("snapshot")?;
    let mut held = snap.version;
    {
        let mut f = fleet.lock().expect("not poisoned");
        f.snapshot_bytes[i] = raw.payload.len() as u64;
        f.held[i] = held;
    }
    while let Some(m) = messages.next().await {
        let now = Instant::now();
        let delta: ConfigDelta = config::decode(&m.payload).context("delta")?;
        let mut f = fleet.lock().expect("not poisoned");
        f.delta_bytes[i] += m.payload.len() as u64;
        if delta.version <= held {
            continue;
        }
        if delta.version != held + 1 && f.problem.is_none() {
            f.problem = Some(format!("device {i}: version {} after {held}", delta.version));
        }
        held = delta.version;
        f.held[i] = held;
        if let Some(&sent) = f.sent.get(&held) {
            let us = now.saturating_duration_since(sent).as_micros().max(1) as u64;
            f.latency.saturating_record(us);
        }
    }
    Ok(())
}
