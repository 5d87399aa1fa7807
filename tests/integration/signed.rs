//! Signed commands against a real nats-server, real SQLite files and the real broker: a bridge
//! applies only commands signed by a key it trusts for its own subject, refuses the rest with
//! `rejected` / `bad_signature` (the handler never sees them), and a replayed signed command is
//! still answered from the ledger or refused as expired.

use std::path::Path;

use tillsync_edge::Bridge;
use tillsync_schemas::{codec, signature, subject, CommandEnvelope, DeviceAddr, Outcome};
use tillsync_tests::{eventually, eventually_eq, metric, InProcBroker, Stack};

use crate::common::add_tenant;
use crate::edge::support::*;

/// A stack with the broker running (so the streams exist) and one bridge for `d` with a
/// recording handler; returns the handler script too.
async fn bridge_for(stack: &Stack, d: &DeviceAddr, dir: &Path) -> (Bridge, std::path::PathBuf) {
    let handler = recording_handler(dir);
    let mut cfg = config(stack, d, dir);
    cfg.handler_exec = Some(handler.clone());
    let bridge = Bridge::start(cfg).await.unwrap();
    wait_connected(&bridge).await;
    (bridge, handler)
}

/// `cmd` as the broker would deliver it on `on`'s subject, signed for `signed_for`'s subject.
fn signed(cmd: &CommandEnvelope, signed_for: &DeviceAddr, on: &DeviceAddr) -> Delivery {
    let payload = codec::encode(cmd);
    let key = test_key();
    Delivery {
        subject: subject::commands(on),
        sig: Some(signature::sign(&key, &subject::commands(signed_for), &payload)),
        payload,
        key: Some(key.public_key()),
    }
}

/// Acks stored for `command_id` from `d`, as (outcome, code).
async fn acks_of(js: &async_nats::jetstream::Context, d: &DeviceAddr, command_id: &str) -> Vec<(Outcome, String)> {
    acks(js, d).await.into_iter().filter(|a| a.command_id == command_id).map(|a| (a.outcome, a.code)).collect()
}

async fn refused_ack(js: &async_nats::jetstream::Context, d: &DeviceAddr, command_id: &str) {
    let want = vec![(Outcome::Rejected, "bad_signature".to_string())];
    eventually_eq(T, "a rejected / bad_signature ack", want, || acks_of(js, d, command_id)).await;
}

/// Reasons of the bridge's `refused_commands` rows (its SQLite file, read alongside it).
async fn refused_reasons(dir: &Path) -> Vec<String> {
    let url = format!("sqlite://{}?mode=ro", dir.join("edge.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let reasons = sqlx::query_scalar("SELECT reason FROM refused_commands ORDER BY id").fetch_all(&pool).await.unwrap();
    pool.close().await;
    reasons
}

fn bad_signatures(bridge: &Bridge) -> Option<f64> {
    metric(&bridge.metrics_text(), "tillsync_edge_commands_bad_signature_total", "")
}

#[tokio::test]
async fn an_altered_command_is_refused_bad_signature_and_the_genuine_one_still_applies() {
    let stack = Stack::start().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let js = stack.nats.jetstream().await;
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceAddr::new("acme", "s1", "till-a");
    let (bridge, handler) = bridge_for(&stack, &a, dir.path()).await;

    // A valid signature of the original, on a payload whose revision was changed.
    let original = settings_patch(&a, 3, tillsync_edge::now_ms(), 60_000);
    let genuine = signed(&original, &a, &a);
    let mut altered = original.clone();
    altered.body = settings_patch(&a, 99, 0, 1).body;
    let forged = Delivery { payload: codec::encode(&altered), ..genuine.clone() };
    forged.publish(&js, &original.command_id, 1).await;

    refused_ack(&js, &a, &original.command_id).await;
    assert!(handled(&handler).is_empty(), "the handler never saw the altered command");
    assert_eq!(bad_signatures(&bridge), Some(1.0));
    assert_eq!(refused_reasons(dir.path()).await, vec!["bad_signature"]);
    assert_eq!(bridge_status(&bridge).await.config_revision, 0);

    // The forged copy decided nothing for its command id: the genuine copy is applied and its
    // ack is stored next to the refusal (its own Nats-Msg-Id).
    genuine.publish(&js, &original.command_id, 2).await;
    let want = vec![(Outcome::Rejected, "bad_signature".to_string()), (Outcome::Applied, "ok".to_string())];
    eventually_eq(T, "the genuine copy applied", want, || acks_of(&js, &a, &original.command_id)).await;
    assert_eq!(handled(&handler).len(), 1);
    assert_eq!(bridge_status(&bridge).await.config_revision, 3);
    bridge.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_command_signed_for_another_device_is_refused_bad_signature() {
    let stack = Stack::start().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let js = stack.nats.jetstream().await;
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceAddr::new("acme", "s1", "till-a");
    let b = DeviceAddr::new("acme", "s1", "till-b");
    let (bridge, handler) = bridge_for(&stack, &a, dir.path()).await;

    // B's copy, byte for byte, republished on A's subject.
    let for_b = settings_patch(&b, 4, tillsync_edge::now_ms(), 60_000);
    signed(&for_b, &b, &a).publish(&js, &for_b.command_id, 1).await;
    refused_ack(&js, &a, &for_b.command_id).await;

    // B's signature on a payload readdressed to A.
    let readdressed = settings_patch(&a, 5, tillsync_edge::now_ms(), 60_000);
    signed(&readdressed, &b, &a).publish(&js, &readdressed.command_id, 1).await;
    refused_ack(&js, &a, &readdressed.command_id).await;

    assert!(handled(&handler).is_empty());
    assert_eq!(bad_signatures(&bridge), Some(2.0));
    assert_eq!(refused_reasons(dir.path()).await, vec!["bad_signature", "bad_signature"]);
    bridge.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn an_unsigned_command_or_one_signed_by_an_unknown_key_is_refused_bad_signature() {
    let stack = Stack::start().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let js = stack.nats.jetstream().await;
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceAddr::new("acme", "s1", "till-a");
    let (bridge, handler) = bridge_for(&stack, &a, dir.path()).await;

    let unsigned = settings_patch(&a, 6, tillsync_edge::now_ms(), 60_000);
    let d = Delivery { key: None, sig: None, ..signed(&unsigned, &a, &a) };
    d.publish(&js, &unsigned.command_id, 1).await;
    refused_ack(&js, &a, &unsigned.command_id).await;

    let stranger = nkeys::KeyPair::new_user();
    let cmd = settings_patch(&a, 7, tillsync_edge::now_ms(), 60_000);
    let payload = codec::encode(&cmd);
    let sig = signature::sign(&stranger, &subject::commands(&a), &payload);
    let d = Delivery { subject: subject::commands(&a), payload, key: Some(stranger.public_key()), sig: Some(sig) };
    d.publish(&js, &cmd.command_id, 1).await;
    refused_ack(&js, &a, &cmd.command_id).await;

    assert!(handled(&handler).is_empty());
    assert_eq!(bad_signatures(&bridge), Some(2.0));
    bridge.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_replayed_signed_command_is_not_applied_twice_and_an_expired_one_is_refused() {
    let stack = Stack::start().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let js = stack.nats.jetstream().await;
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceAddr::new("acme", "s1", "till-a");
    let (bridge, handler) = bridge_for(&stack, &a, dir.path()).await;

    let cmd = settings_patch(&a, 8, tillsync_edge::now_ms(), 60_000);
    let msg = signed(&cmd, &a, &a);
    msg.publish(&js, &cmd.command_id, 1).await;
    let want = vec![(Outcome::Applied, "ok".to_string())];
    eventually_eq(T, "applied once", want.clone(), || acks_of(&js, &a, &cmd.command_id)).await;

    // The same bytes and signature again (a new Nats-Msg-Id, so JetStream stores it).
    msg.publish(&js, &cmd.command_id, 2).await;
    eventually(T, "the replay answered from the ledger", || async {
        (metric(&bridge.metrics_text(), "tillsync_edge_command_duplicates_total", "") == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(handled(&handler).len(), 1, "the handler ran once");
    assert_eq!(acks_of(&js, &a, &cmd.command_id).await, want, "the re-ack was deduped by its Nats-Msg-Id");

    // Validly signed, but past its expiry: the existing expiry code.
    let late = settings_patch(&a, 9, tillsync_edge::now_ms() - 10_000, 5_000);
    signed(&late, &a, &a).publish(&js, &late.command_id, 1).await;
    let want = vec![(Outcome::Rejected, "expired".to_string())];
    eventually_eq(T, "the expired command refused", want, || acks_of(&js, &a, &late.command_id)).await;
    assert_eq!(handled(&handler).len(), 1);
    assert_eq!(bad_signatures(&bridge), Some(0.0));
    assert_eq!(bridge_status(&bridge).await.config_revision, 8);
    bridge.shutdown().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_bridge_without_command_keys_fails_a_portal_command_with_bad_signature() {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let d = DeviceAddr::new("acme", "s1", "till-n");
    sqlx::query("INSERT INTO devices (tenant_id, store_id, device_id, provisioned) VALUES ($1, $2, $3, true)")
        .bind(&d.tenant_id)
        .bind(&d.store_id)
        .bind(&d.device_id)
        .execute(&stack.db.pool)
        .await
        .unwrap();
    let broker = InProcBroker::start(stack.broker_config()).await;
    let js = stack.nats.jetstream().await;
    let dir = tempfile::tempdir().unwrap();
    let handler = recording_handler(dir.path());
    let mut cfg = config(&stack, &d, dir.path());
    cfg.handler_exec = Some(handler.clone());
    cfg.command_keys.clear();
    let bridge = Bridge::start(cfg).await.unwrap();

    let mut cmd = settings_patch(&d, 5, tillsync_edge::now_ms(), 60_000);
    cmd.approvals = vec![tillsync_schemas::Approval {
        approver: "bob".into(),
        role: "manager".into(),
        approved_at_ms: tillsync_edge::now_ms(),
    }];
    let mut h = async_nats::HeaderMap::new();
    h.insert(tillsync_schemas::streams::HEADER_MSG_ID, cmd.command_id.as_str());
    let intake = subject::intake(&d.tenant_id, &d.store_id, Some(&d.device_id));
    js.publish_with_headers(intake, h, codec::encode(&cmd).into()).await.unwrap().await.unwrap();

    let q = format!(
        "SELECT count(*) FROM command_inbox WHERE command_id = '{}' AND state = 'failed' AND last_code = 'bad_signature'",
        cmd.command_id
    );
    eventually_eq(T, "the command failed bad_signature in the broker's inbox", 1, || stack.db.count(&q)).await;
    assert!(handled(&handler).is_empty());
    assert_eq!(bad_signatures(&bridge), Some(1.0));
    bridge.shutdown().await;
    broker.stop().await;
}
