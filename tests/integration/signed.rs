//! Signed commands against a real nats-server, real SQLite files and the real broker: a bridge
//! applies only commands signed by a key it trusts for its own subject, refuses the rest with
//! `rejected` / `bad_signature` (the handler never sees them), and a replayed signed command is
//! still answered from the ledger or refused as expired.

use std::path::PathBuf;

use tillsync_edge::Bridge;
use tillsync_schemas::{codec, signature, subject, CommandEnvelope, DeviceAddr, Outcome};
use tillsync_tests::{eventually, eventually_eq, metric, InProcBroker, Stack};

use crate::common::add_tenant;
use crate::edge::support::*;

/// A stack with the broker running (so the streams exist) and one bridge for `till-a` with a
/// recording handler, trusting `command_keys` (the test key when None).
struct Fixture {
    stack: Stack,
    broker: InProcBroker,
    js: async_nats::jetstream::Context,
    dir: tempfile::TempDir,
    a: DeviceAddr,
    bridge: Bridge,
    handler: PathBuf,
}

impl Fixture {
    async fn start(command_keys: Option<Vec<String>>) -> Fixture {
        let stack = Stack::start().await;
        add_tenant(&stack.db.pool, "acme").await;
        let a = DeviceAddr::new("acme", "s1", "till-a");
        provision(&stack, &a).await;
        let broker = InProcBroker::start(stack.broker_config()).await;
        let js = stack.nats.jetstream().await;
        let dir = tempfile::tempdir().unwrap();
        let handler = recording_handler(dir.path());
        let mut cfg = config(&stack, &a, dir.path());
        cfg.handler_exec = Some(handler.clone());
        if let Some(keys) = command_keys {
            cfg.command_keys = keys;
        }
        let bridge = Bridge::start(cfg).await.unwrap();
        wait_commands_live(&bridge).await;
        Fixture { stack, broker, js, dir, a, bridge, handler }
    }

    async fn stop(self) {
        self.bridge.shutdown().await;
        self.broker.stop().await;
    }

    /// Acks stored for `command_id` from till-a, as (outcome, code).
    async fn acks_of(&self, command_id: &str) -> Vec<(Outcome, String)> {
        let all = acks(&self.js, &self.a).await;
        all.into_iter().filter(|a| a.command_id == command_id).map(|a| (a.outcome, a.code)).collect()
    }

    async fn wait_acks(&self, what: &str, command_id: &str, want: &[(Outcome, &str)]) {
        let want: Vec<_> = want.iter().map(|(o, c)| (*o, c.to_string())).collect();
        eventually_eq(T, what, want, || self.acks_of(command_id)).await;
    }

    async fn refused_ack(&self, command_id: &str) {
        self.wait_acks("a rejected / bad_signature ack", command_id, &[(Outcome::Rejected, "bad_signature")]).await;
    }

    /// Reasons of the bridge's `refused_commands` rows (its SQLite file, read alongside it).
    async fn refused_reasons(&self) -> Vec<String> {
        let url = format!("sqlite://{}?mode=ro", self.dir.path().join("edge.db").display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let reasons =
            sqlx::query_scalar("SELECT reason FROM refused_commands ORDER BY id").fetch_all(&pool).await.unwrap();
        pool.close().await;
        reasons
    }

    fn bad_signatures(&self) -> Option<f64> {
        metric(&self.bridge.metrics_text(), "tillsync_edge_commands_bad_signature_total", "")
    }

    /// Commands the bridge's ledger holds as applied (settings_patch no longer moves the
    /// configuration version: only configuration sync does).
    async fn commands_applied(&self) -> u64 {
        bridge_status(&self.bridge).await.commands_applied
    }
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

#[tokio::test]
async fn an_altered_command_is_refused_bad_signature_and_the_genuine_one_still_applies() {
    let f = Fixture::start(None).await;
    // A valid signature of the original, on a payload whose revision was changed.
    let original = settings_patch(&f.a, 3, tillsync_edge::now_ms(), 60_000);
    let genuine = signed(&original, &f.a, &f.a);
    let mut altered = original.clone();
    altered.body = settings_patch(&f.a, 99, 0, 1).body;
    let forged = Delivery { payload: codec::encode(&altered), ..genuine.clone() };
    forged.publish(&f.js, &original.command_id, 1).await;

    f.refused_ack(&original.command_id).await;
    assert!(handled(&f.handler).is_empty(), "the handler never saw the altered command");
    assert_eq!(f.bad_signatures(), Some(1.0));
    assert_eq!(f.refused_reasons().await, vec!["bad_signature"]);
    assert_eq!(f.commands_applied().await, 0);

    // The forged copy decided nothing for its command id: the genuine copy is applied and its
    // ack is stored next to the refusal (its own Nats-Msg-Id).
    genuine.publish(&f.js, &original.command_id, 2).await;
    let want = [(Outcome::Rejected, "bad_signature"), (Outcome::Applied, "ok")];
    f.wait_acks("the genuine copy applied", &original.command_id, &want).await;
    assert_eq!(handled(&f.handler).len(), 1);
    assert_eq!(f.commands_applied().await, 1);
    f.stop().await;
}

#[tokio::test]
async fn a_command_signed_for_another_device_is_refused_bad_signature() {
    let f = Fixture::start(None).await;
    let b = DeviceAddr::new("acme", "s1", "till-b");
    // B's copy, byte for byte, republished on A's subject.
    let for_b = settings_patch(&b, 4, tillsync_edge::now_ms(), 60_000);
    signed(&for_b, &b, &f.a).publish(&f.js, &for_b.command_id, 1).await;
    f.refused_ack(&for_b.command_id).await;

    // B's signature on a payload readdressed to A.
    let readdressed = settings_patch(&f.a, 5, tillsync_edge::now_ms(), 60_000);
    signed(&readdressed, &b, &f.a).publish(&f.js, &readdressed.command_id, 1).await;
    f.refused_ack(&readdressed.command_id).await;

    assert!(handled(&f.handler).is_empty());
    assert_eq!(f.bad_signatures(), Some(2.0));
    assert_eq!(f.refused_reasons().await, vec!["bad_signature", "bad_signature"]);
    f.stop().await;
}

#[tokio::test]
async fn an_unsigned_command_or_one_signed_by_an_unknown_key_is_refused_bad_signature() {
    let f = Fixture::start(None).await;
    let unsigned = settings_patch(&f.a, 6, tillsync_edge::now_ms(), 60_000);
    let d = Delivery { key: None, sig: None, ..signed(&unsigned, &f.a, &f.a) };
    d.publish(&f.js, &unsigned.command_id, 1).await;
    f.refused_ack(&unsigned.command_id).await;

    let stranger = nkeys::KeyPair::new_user();
    let cmd = settings_patch(&f.a, 7, tillsync_edge::now_ms(), 60_000);
    let payload = codec::encode(&cmd);
    let sig = signature::sign(&stranger, &subject::commands(&f.a), &payload);
    let d = Delivery { subject: subject::commands(&f.a), payload, key: Some(stranger.public_key()), sig: Some(sig) };
    d.publish(&f.js, &cmd.command_id, 1).await;
    f.refused_ack(&cmd.command_id).await;

    assert!(handled(&f.handler).is_empty());
    assert_eq!(f.bad_signatures(), Some(2.0));
    f.stop().await;
}

#[tokio::test]
async fn a_replayed_signed_command_is_not_applied_twice_and_an_expired_one_is_refused() {
    let f = Fixture::start(None).await;
    let cmd = settings_patch(&f.a, 8, tillsync_edge::now_ms(), 60_000);
    let msg = signed(&cmd, &f.a, &f.a);
    msg.publish(&f.js, &cmd.command_id, 1).await;
    f.wait_acks("applied once", &cmd.command_id, &[(Outcome::Applied, "ok")]).await;

    // The same bytes and signature again (a new Nats-Msg-Id, so JetStream stores it).
    msg.publish(&f.js, &cmd.command_id, 2).await;
    eventually(T, "the replay answered from the ledger", || async {
        (metric(&f.bridge.metrics_text(), "tillsync_edge_command_duplicates_total", "") == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(handled(&f.handler).len(), 1, "the handler ran once");
    let once = vec![(Outcome::Applied, "ok".to_string())];
    assert_eq!(f.acks_of(&cmd.command_id).await, once, "the re-ack was deduped by its Nats-Msg-Id");

    // Validly signed, but past its expiry: the existing expiry code.
    let late = settings_patch(&f.a, 9, tillsync_edge::now_ms() - 10_000, 5_000);
    signed(&late, &f.a, &f.a).publish(&f.js, &late.command_id, 1).await;
    f.wait_acks("the expired command refused", &late.command_id, &[(Outcome::Rejected, "expired")]).await;
    assert_eq!(handled(&f.handler).len(), 1);
    assert_eq!(f.bad_signatures(), Some(0.0));
    assert_eq!(f.commands_applied().await, 1, "applied once, the replay and the expired one not");
    f.stop().await;
}

#[tokio::test]
async fn a_bridge_without_command_keys_fails_a_portal_command_with_bad_signature() {
    let f = Fixture::start(Some(Vec::new())).await;
    let cmd = send_via_portal(&f.js, &f.a, 5).await;
    let q = format!(
        "SELECT count(*) FROM command_inbox WHERE command_id = '{}' AND state = 'failed' AND last_code = 'bad_signature'",
        cmd.command_id
    );
    eventually_eq(T, "the command failed bad_signature in the broker's inbox", 1, || f.stack.db.count(&q)).await;
    assert!(handled(&f.handler).is_empty());
    assert_eq!(f.bad_signatures(), Some(1.0));
    f.stop().await;
}

/// A neighbour in the same store knows a store-wide command's id, and JetStream dedupes acks by
/// `Nats-Msg-Id` across the whole stream whatever the subject. Acks published first on the
/// neighbour's own subject under every name-only form of till-a's ack id once made till-a's
/// real ack a dropped duplicate; the nonce in till-a's id (docs/protocol.md section 5) means
/// none of them is its id.
#[tokio::test]
async fn a_neighbour_publishing_till_as_ack_id_first_drops_nothing() {
    let f = Fixture::start(None).await;
    let original = settings_patch(&f.a, 3, tillsync_edge::now_ms(), 60_000);
    let genuine = signed(&original, &f.a, &f.a);
    let neighbour = DeviceAddr::new("acme", "s1", "till-b");
    let id = &original.command_id;
    for guess in [format!("till-a:{id}:ack"), format!("acme.s1.till-a:{id}:ack"), format!("acme.s1.till-a.:{id}:ack")] {
        let mut h = async_nats::HeaderMap::new();
        h.insert(tillsync_schemas::streams::HEADER_MSG_ID, guess.as_str());
        let ack = f.js.publish_with_headers(subject::command_acks(&neighbour), h, "x".into()).await.unwrap();
        assert!(!ack.await.unwrap().duplicate);
    }
    genuine.publish(&f.js, id, 1).await;
    f.wait_acks("till-a's real ack is stored", id, &[(Outcome::Applied, "ok")]).await;
    assert_eq!(handled(&f.handler).len(), 1);
    f.stop().await;
}
