//! The active part of `bench fleet`'s "today" phase, once the idle figures are taken: a
//! command to every device, each timed from its intake publish to the broker's `acked` status,
//! and a configuration change set for every store, timed from the publish request to each
//! device's SQLite file holding the new version; then both again while one node of the three
//! restarts. The second is the reconnect storm: the killed node's bridges reconnect to the
//! other two while their commands and configuration are published, and get them live or by
//! their catch-up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use async_nats::HeaderMap;
use futures::StreamExt;
use tillsync_schemas::config::ChangeSet;
use tillsync_schemas::subject::{self, Family};
use tillsync_schemas::{codec, streams as names, CommandState, CommandStatus};

use super::fleet_devices::Fleet;
use super::{commands, config, data};

/// Something sent to every device, timed until each device has it (a command: acked; a
/// configuration: applied).
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundTrips {
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// From the first publish until the last device has it.
    pub all_s: f64,
}

impl RoundTrips {
    /// The percentiles of per-device times `ms` (not empty).
    fn of(mut ms: Vec<f64>, all_s: f64) -> RoundTrips {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
        RoundTrips { p50_ms: at(0.5), p99_ms: at(0.99), all_s }
    }
}

/// Publishes the tenant-wide change set `cs` (every store's next version) as the portal does,
/// and waits (up to `timeout`) until every device holds `version`. A
/// publish that fails (the broker cannot store it while a stream leader is being elected) is
/// sent again until `timeout`; a retry of one that was stored only moves the fleet a version
/// further, which the wait accepts.
pub async fn config_round(
    client: &async_nats::Client,
    fleet: &Fleet,
    cs: ChangeSet,
    version: u64,
    timeout: Duration,
) -> anyhow::Result<RoundTrips> {
    let sent = Instant::now();
    let deadline = sent + timeout;
    loop {
        match config::publish(client, cs.clone()).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %e, "Configuration publish failed; sending it again.");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.context(format!("configuration publish not taken within {} s", timeout.as_secs()))),
        }
    }
    let ms = fleet.config_applied(version, sent, deadline).await?;
    let all_s = ms.iter().copied().fold(0.0, f64::max) / 1000.0;
    Ok(RoundTrips::of(ms, all_s))
}

/// One command to each of `devices` devices; waits (up to `timeout`) until every one is acked.
pub async fn round_trips(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    devices: usize,
    timeout: Duration,
) -> anyhow::Result<RoundTrips> {
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let done: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut statuses = client.subscribe(Family::Status.tenant_subjects(data::TENANT)).await?;
    client.flush().await?;
    let failed = Arc::new(Mutex::new(None::<String>));
    let _collector = {
        let (sent, done, failed) = (sent.clone(), done.clone(), failed.clone());
        super::AbortOnDrop(tokio::spawn(async move {
            while let Some(msg) = statuses.next().await {
                let Ok(st) = codec::decode::<CommandStatus>(&msg.payload) else { continue };
                if !st.state.is_final() {
                    continue;
                }
                let Some(at) = sent.lock().expect("not poisoned").remove(&st.command_id) else { continue };
                if st.state == CommandState::Acked {
                    done.lock().expect("not poisoned").push(at.elapsed().as_secs_f64() * 1000.0);
                } else {
                    failed.lock().expect("not poisoned").get_or_insert(format!("{} {:?}", st.state.as_str(), st.code));
                }
            }
        }))
    };
    let started = Instant::now();
    let deadline = started + timeout;
    let mut pending: Vec<_> = (0..devices).map(|k| commands::command(k, devices)).collect();
    for cmd in &pending {
        sent.lock().expect("not poisoned").insert(cmd.command_id.clone(), Instant::now());
    }
    // Pipelined; what JetStream did not store (a stream leader lost with the killed node, until
    // the next is elected) is published again with the same id, as a portal would.
    while !pending.is_empty() {
        let mut acks = Vec::with_capacity(pending.len());
        for cmd in &pending {
            let mut h = HeaderMap::new();
            h.insert(names::HEADER_MSG_ID, cmd.command_id.as_str());
            let intake = subject::intake(&cmd.tenant_id, &cmd.store_id, cmd.device_id.as_deref());
            acks.push(js.publish_with_headers(intake, h, codec::encode(cmd).into()).await);
        }
        let mut again = Vec::new();
        for (cmd, ack) in pending.into_iter().zip(acks) {
            let stored = match ack {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if !stored {
                again.push(cmd);
            }
        }
        if !again.is_empty() {
            if Instant::now() > deadline {
                bail!("{} intake publishes not stored within {} s", again.len(), timeout.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        pending = again;
    }
    loop {
        if let Some(problem) = failed.lock().expect("not poisoned").clone() {
            bail!("a command ended {problem}, not acked");
        }
        let n = done.lock().expect("not poisoned").len();
        if n == devices {
            break;
        }
        if Instant::now() > deadline {
            bail!("{n} of {devices} commands acked after {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_s = started.elapsed().as_secs_f64();
    let ms = done.lock().expect("not poisoned").clone();
    Ok(RoundTrips::of(ms, all_s))
}
