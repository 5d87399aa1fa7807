//! A cancel or an approval decision is admitted like every other intake message: its subject's
//! partition token must be its store's partition. Two brokers share the partitions; a cancel
//! and a decision about a store of broker `b` reach broker `a` on one of `a`'s partitions
//! (published around the stream's subject transform, docs/protocol.md section 3, which a stream
//! given one more subject lets through). `a` does not own the store: it quarantines both
//! (`bad_subject`), as it would a command on that subject, and changes nothing of the store's
//! commands. The same cancel on the store's own partition still cancels.

use std::time::Duration;

use tillsync_schemas::approval::{self, Decision};
use tillsync_schemas::{
    codec, partition, streams, subject, CommandBody, CommandCancel, CommandDecision, DeviceAddr, SCHEMA_VERSION,
};
use tillsync_tests::{eventually, InProcBroker, Stack};

use crate::commands::{command, inbox_state, menu, provision, send};

const TENANT: &str = "cxl-part";
const PARTITIONS: u16 = 4;
const T: Duration = Duration::from_secs(60);

/// Starts broker `id` on `stack`; with ids `a` and `b`, `a` ends up owning the even partitions.
async fn broker(stack: &Stack, id: &str) -> InProcBroker {
    let mut c = stack.broker_config();
    c.partitions = PARTITIONS;
    c.lease_ttl_s = 5;
    c.instance_id = Some(id.into());
    InProcBroker::start(c).await
}

/// Lets the intake stream take subjects that already carry a partition token, as a stream
/// edited by hand (or by whoever may edit streams) would: they are stored as published.
async fn open_around_the_transform(js: &async_nats::jetstream::Context) {
    let mut stream = js.get_stream(streams::INTAKE).await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.subjects.push("tillsync.intake.*.*.*.*".into());
    js.update_stream(config).await.unwrap();
}

/// Publishes `payload` on `published` with partition token `p` appended; the stream stores it
/// under that subject.
async fn publish_on(js: &async_nats::jetstream::Context, published: &str, p: u16, payload: Vec<u8>) {
    let stored = format!("{published}.{p}");
    let seq = js.publish(stored.clone(), payload.into()).await.unwrap().await.unwrap().sequence;
    let stream = js.get_stream(streams::INTAKE).await.unwrap();
    assert_eq!(stream.get_raw_message(seq).await.unwrap().subject.as_str(), stored);
}

/// The quarantine reason of the intake message published on `published` with any token.
async fn quarantined(pool: &sqlx::PgPool, published: &str) -> Option<String> {
    sqlx::query_scalar("SELECT reason FROM quarantine WHERE stream = $1 AND subject = $2")
        .bind(streams::INTAKE)
        .bind(published)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_cancel_or_decision_on_a_partition_not_its_stores_is_quarantined_not_applied() {
    let stack = Stack::start().await;
    let pool = &stack.db.pool;
    crate::common::add_tenant(pool, TENANT).await;
    let a = broker(&stack, "a").await;
    let b = broker(&stack, "b").await;
    let owned = |x: &InProcBroker| x.broker.ctx.partitions.owned();
    eventually(T, "a owns the even partitions and b the odd ones", || async {
        (owned(&a) == [0, 2] && owned(&b) == [1, 3]).then_some(())
    })
    .await;

    let store = (0..100).map(|i| format!("s{i}")).find(|s| partition::of(TENANT, s, PARTITIONS) % 2 == 1).unwrap();
    let own = partition::of(TENANT, &store, PARTITIONS);
    let foreign = (own + 1) % PARTITIONS;
    assert!(!owned(&b).contains(&foreign) && owned(&a).contains(&foreign));
    let js = stack.nats.jetstream().await;
    let d = DeviceAddr::new(TENANT, &store, "till-1");
    provision(pool, &d).await;
    // Offline: it stays queued until cancelled.
    let cmd = command(TENANT, &store, Some("till-1"), menu(), &["alice"], 600_000);
    send(&js, &cmd).await;
    let refund = CommandBody::RefundOrder {
        order_id: "o-1".into(),
        payment_id: "p-1".into(),
        amount_minor: 350,
        currency: "EUR".into(),
        reason: "cold coffee".into(),
    };
    let held = command(TENANT, &store, Some("till-1"), refund, &[], 600_000);
    send(&js, &held).await;
    eventually(T, "the command queued by b", || async {
        (inbox_state(pool, &cmd.command_id, "till-1").await.as_deref() == Some("queued")).then_some(())
    })
    .await;
    let pending = "SELECT count(*) FROM commands WHERE command_id = $1 AND pending_approval";
    let waits =
        || async { sqlx::query_scalar::<_, i64>(pending).bind(&held.command_id).fetch_one(pool).await.unwrap() == 1 };
    eventually(T, "the refund waits for approvals", || async { waits().await.then_some(()) }).await;

    open_around_the_transform(&js).await;
    let cancel = CommandCancel {
        schema_version: SCHEMA_VERSION,
        command_id: cmd.command_id.clone(),
        tenant_id: TENANT.into(),
        store_id: store.clone(),
        requested_by: "rita".into(),
        at_ms: tillsync_broker::now_ms(),
    };
    let cancel_subject = subject::cancel(TENANT, &store);
    publish_on(&js, &cancel_subject, foreign, codec::encode(&cancel)).await;
    let alice = tillsync_tests::approver_key("alice");
    let decision = CommandDecision {
        schema_version: SCHEMA_VERSION,
        command_id: held.command_id.clone(),
        tenant_id: TENANT.into(),
        store_id: store.clone(),
        approver: "alice".into(),
        decision: Decision::Approve,
        signature: approval::sign(&alice, &held, "alice", Decision::Approve),
        at_ms: tillsync_broker::now_ms(),
    };
    let approve_subject = subject::approve(TENANT, &store);
    publish_on(&js, &approve_subject, foreign, codec::encode(&decision)).await;

    // Whatever a does with them, it does within a few seconds: wait for either outcome.
    let approvals = "SELECT count(*) FROM command_log WHERE command_id = $1 AND detail LIKE '%approved by alice%'";
    let counted =
        || async { sqlx::query_scalar::<_, i64>(approvals).bind(&held.command_id).fetch_one(pool).await.unwrap() > 0 };
    eventually(T, "the cancel handled by a", || async {
        let cancelled = inbox_state(pool, &cmd.command_id, "till-1").await.as_deref() == Some("cancelled");
        (cancelled || quarantined(pool, &cancel_subject).await.is_some()).then_some(())
    })
    .await;
    eventually(T, "the decision handled by a", || async {
        (counted().await || quarantined(pool, &approve_subject).await.is_some()).then_some(())
    })
    .await;
    assert_eq!(
        inbox_state(pool, &cmd.command_id, "till-1").await.as_deref(),
        Some("queued"),
        "a broker that does not own the store's partition cancelled its command"
    );
    assert_eq!(quarantined(pool, &cancel_subject).await.as_deref(), Some("bad_subject"));
    assert!(!counted().await, "a broker that does not own the store's partition counted an approval");
    assert!(waits().await);
    assert_eq!(quarantined(pool, &approve_subject).await.as_deref(), Some("bad_subject"));

    // On the store's own partition the same cancel is b's, and cancels.
    publish_on(&js, &cancel_subject, own, codec::encode(&cancel)).await;
    eventually(T, "the command cancelled by b", || async {
        (inbox_state(pool, &cmd.command_id, "till-1").await.as_deref() == Some("cancelled")).then_some(())
    })
    .await;
    tokio::join!(a.stop(), b.stop());
}
