//! The portal: sends approved commands on intake (built as `tillsync commands send` builds
//! them) to the devices in turn, and reads every status from `TILLSYNC_STATUS` in stream order,
//! recording each with the time it was read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tillsync_schemas::{codec, now_ms, streams, subject, CommandBody, CommandEnvelope, CommandStatus, SCHEMA_VERSION};
use tokio_util::sync::CancellationToken;

use super::history::{SentCommand, StatusSeen};
use super::Device;

/// A command body for `device`, with the approvals its kind needs (two for money and order
/// changes, one otherwise), signed by the test approvers registered in the chaos tenant, and a TTL: mostly long, sometimes short enough to expire while a
/// bridge is offline.
pub fn build(device: &Device, n: u64, rng: &mut StdRng) -> CommandEnvelope {
    let order = format!("{}-o{}", device.device_id, rng.random_range(1..=5));
    let (body, approvers) = match rng.random_range(0..5) {
        0 => (
            CommandBody::RefundOrder {
                order_id: order.clone(),
                payment_id: format!("p-{order}"),
                amount_minor: rng.random_range(100..=500),
                currency: "EUR".into(),
                reason: "chaos refund".into(),
            },
            2,
        ),
        1 => (CommandBody::SetOrderStatus { order_id: order, status: "closed".into() }, 2),
        2 => (CommandBody::SettingsPatch { revision: n, settings: BTreeMap::from([("tip".into(), n.to_string())]) }, 1),
        3 => (CommandBody::ApplyMenuPublish { menu_id: "menu-1".into(), version: n }, 1),
        _ => (
            CommandBody::UserUpsert {
                user_id: format!("u{n}"),
                display_name: format!("User {n}"),
                role: "cashier".into(),
            },
            1,
        ),
    };
    let now = now_ms();
    let ttl_ms = if rng.random_bool(0.2) { 20_000 } else { 600_000 };
    let mut cmd = CommandEnvelope {
        schema_version: SCHEMA_VERSION,
        command_id: uuid::Builder::from_random_bytes(rng.random()).into_uuid().to_string(),
        tenant_id: device.tenant_id.clone(),
        store_id: device.store_id.clone(),
        device_id: Some(device.device_id.clone()),
        body,
        issued_at_ms: now,
        expires_at_ms: now + ttl_ms,
        requested_by: "chaos-portal".into(),
        approvals: Vec::new(),
        if_match: None,
    };
    cmd.approvals = tillsync_ops::approvers::test_approvals(&cmd, approvers, now);
    cmd
}

/// Sends a command every `every` to the next device until `stop`. Each is published until
/// JetStream confirms it (same id, so intake keeps one) or `give_up`.
pub async fn send(
    js: async_nats::jetstream::Context,
    devices: Vec<Device>,
    seed: u64,
    every: Duration,
    stop: CancellationToken,
    give_up: CancellationToken,
    record: Arc<Mutex<Vec<SentCommand>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x706f_7274_616c);
    let mut n = 0u64;
    while !stop.is_cancelled() {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => break,
        }
        n += 1;
        let device = &devices[(n as usize) % devices.len()];
        let cmd = build(device, n, &mut rng);
        let sent_ms = now_ms();
        let confirmed = publish(&js, &cmd, &give_up).await;
        let kind = serde_json::to_value(&cmd.body).ok().and_then(|v| v["kind"].as_str().map(String::from));
        record.lock().expect("history lock").push(SentCommand {
            command_id: cmd.command_id.clone(),
            device_id: device.device_id.clone(),
            kind: kind.unwrap_or_default(),
            sent_ms,
            confirmed,
        });
    }
}

async fn publish(js: &async_nats::jetstream::Context, cmd: &CommandEnvelope, give_up: &CancellationToken) -> bool {
    let subj = subject::intake(&cmd.tenant_id, &cmd.store_id, cmd.device_id.as_deref());
    let payload = bytes::Bytes::from(codec::encode(cmd));
    while !give_up.is_cancelled() {
        let mut h = async_nats::HeaderMap::new();
        h.insert(streams::HEADER_MSG_ID, cmd.command_id.as_str());
        h.insert(streams::HEADER_CONTENT_TYPE, streams::CONTENT_TYPE);
        let attempt = async {
            let ack = js.publish_with_headers(subj.clone(), h, payload.clone()).await.ok()?;
            ack.await.ok()
        };
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(3), attempt).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

/// Reads `TILLSYNC_STATUS` from `*next` on, in stream order, until nothing is left; returns
/// whether it could reach the server.
pub async fn read_statuses(
    js: &async_nats::jetstream::Context,
    tenant: &str,
    next: &mut u64,
    record: &Mutex<Vec<StatusSeen>>,
) -> bool {
    let Ok(stream) = js.get_stream_no_info(streams::STATUS).await else { return false };
    let filter = format!("tillsync.status.{tenant}.>");
    loop {
        let got = tokio::time::timeout(Duration::from_secs(2), stream.get_first_raw_message_by_subject(&filter, *next));
        let Ok(Ok(msg)) = got.await else { return true };
        *next = msg.sequence + 1;
        let Ok(st) = codec::decode::<CommandStatus>(&msg.payload) else { continue };
        record.lock().expect("history lock").push(StatusSeen {
            command_id: st.command_id,
            device_id: st.device_id,
            state: st.state.as_str().to_string(),
            code: st.code,
            at_ms: st.at_ms,
            received_ms: now_ms(),
        });
    }
}

/// Follows the statuses every 300 ms until `stop`.
pub async fn follow_statuses(
    js: async_nats::jetstream::Context,
    tenant: String,
    stop: CancellationToken,
    record: Arc<Mutex<Vec<StatusSeen>>>,
) -> u64 {
    let mut next = 1;
    while !stop.is_cancelled() {
        read_statuses(&js, &tenant, &mut next, &record).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = stop.cancelled() => {}
        }
    }
    next
}
