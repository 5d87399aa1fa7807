//! Two-person approval on authenticated people, against real NATS and Postgres: a command that
//! needs approvals waits in `pending_approval`; registered approvers' signed decisions on
//! `tillsync.intake.<t>.<s>._approve` release it (or reject it); anything a leaked portal key
//! can forge (names, another approver's signature, the requester's own approval) is refused,
//! recorded and reported, and never delivered.

use tillsync_schemas::approval::{self, Decision};
use tillsync_schemas::{
    codec, subject, CommandBody, CommandCancel, CommandDecision, CommandEnvelope, CommandState, DeviceAddr,
    SCHEMA_VERSION,
};

use crate::commands::{command, menu, metric_at_least, online, send, setup, FakeEdge, Mode, Statuses};

fn refund(amount_minor: i64) -> CommandBody {
    CommandBody::RefundOrder {
        order_id: "o-1".into(),
        payment_id: "p-1".into(),
        amount_minor,
        currency: "EUR".into(),
        reason: "cold coffee".into(),
    }
}

/// `who`'s decision about `cmd`, signed with the key `key` (a test approver's).
fn decision(cmd: &CommandEnvelope, who: &str, key: &nkeys::KeyPair, d: Decision) -> CommandDecision {
    CommandDecision {
        schema_version: SCHEMA_VERSION,
        command_id: cmd.command_id.clone(),
        tenant_id: cmd.tenant_id.clone(),
        store_id: cmd.store_id.clone(),
        approver: who.into(),
        decision: d,
        signature: approval::sign(key, cmd, who, d),
        at_ms: tillsync_broker::now_ms(),
    }
}

async fn decide(js: &async_nats::jetstream::Context, d: &CommandDecision) {
    let to = subject::approve(&d.tenant_id, &d.store_id);
    js.publish(to, codec::encode(d).into()).await.unwrap().await.unwrap();
}

/// The status of `command_id` in `state` whose detail contains `needle`.
async fn status_with(statuses: &Statuses, command_id: &str, state: CommandState, needle: &str) -> Option<String> {
    let what = format!("{} status of {command_id} containing {needle:?}", state.as_str());
    tillsync_tests::eventually(crate::commands::T, &what, || async {
        statuses.all(command_id).into_iter().find(|s| s.state == state && s.detail.contains(needle)).map(|s| s.code)
    })
    .await
}

#[tokio::test]
async fn a_refund_waits_for_two_registered_approvers_and_forgeries_count_for_nothing() {
    let (stack, broker) = setup("appr", |_| {}).await;
    let pool = &stack.db.pool;
    let d = DeviceAddr::new("appr", "s1", "till-1");
    let edge = FakeEdge::start(&stack, &d, Mode::Apply).await;
    online(pool, &d).await;
    // The requester is an approver too (of other people's commands).
    sqlx::query("INSERT INTO approvers (tenant_id, approver_id, public_key) VALUES ('appr', 'requester', $1)")
        .bind(approval::test_key(0).public_key())
        .execute(pool)
        .await
        .unwrap();
    let statuses = Statuses::watch(&stack.nats.client().await, "appr").await;
    let js = stack.nats.jetstream().await;

    let cmd = command("appr", "s1", Some("till-1"), refund(350), &[], 60_000);
    send(&js, &cmd).await;
    let s = statuses.wait(&cmd.command_id, CommandState::PendingApproval).await;
    assert!(s.detail.contains("0 of 2"), "{}", s.detail);
    // Waiting is visible: how many, and for how long (alert TillsyncApprovalsWaiting).
    metric_at_least(broker.broker.http_addr, "tillsync_commands_awaiting_approval", "tenant=\"appr\"", 1.0).await;

    let alice = tillsync_tests::approver_key("alice");
    let bob = tillsync_tests::approver_key("bob");
    // carol approves for another tenant only.
    let carol = nkeys::KeyPair::new_user();
    crate::common::add_tenant(pool, "appr-other").await;
    sqlx::query("INSERT INTO approvers (tenant_id, approver_id, public_key) VALUES ('appr-other', 'carol', $1)")
        .bind(carol.public_key())
        .execute(pool)
        .await
        .unwrap();
    decide(&js, &decision(&cmd, "alice", &alice, Decision::Approve)).await;
    status_with(&statuses, &cmd.command_id, CommandState::PendingApproval, "approved by alice (1 of 2)").await;
    // What a leaked portal key can try: bob's name on alice's key, the requester approving
    // their own command, alice twice, someone never registered, another tenant's approver.
    let refusals = [
        (decision(&cmd, "bob", &alice, Decision::Approve), "bad_approval_signature"),
        (decision(&cmd, "requester", &alice, Decision::Approve), "self_approval"),
        (decision(&cmd, "mallory", &alice, Decision::Approve), "unknown_approver"),
        (decision(&cmd, "carol", &carol, Decision::Approve), "unknown_approver"),
    ];
    for (d, code) in &refusals {
        decide(&js, d).await;
        let what = format!("{code} refusal of {}", d.approver);
        let detail = tillsync_tests::eventually(crate::commands::T, &what, || async {
            let all = statuses.all(&cmd.command_id);
            all.into_iter()
                .find(|s| s.code.as_deref() == Some(*code) && s.detail.contains(&d.approver))
                .map(|s| s.detail)
        })
        .await;
        assert!(detail.starts_with("approve refused: ") && detail.contains(&d.approver), "{detail}");
        assert_eq!(statuses.all(&cmd.command_id).last().map(|s| s.state), Some(CommandState::PendingApproval));
    }
    // alice again, with another valid signature of hers (the reject one): still one approval.
    decide(&js, &decision(&cmd, "alice", &alice, Decision::Reject)).await;
    status_with(&statuses, &cmd.command_id, CommandState::PendingApproval, "reject refused").await;
    assert_eq!(edge.arrival_count(), 0, "nothing reaches the till before two approvals");
    assert_eq!(stack.db.count("SELECT count(*) FROM command_inbox").await, 0);

    decide(&js, &decision(&cmd, "bob", &bob, Decision::Approve)).await;
    statuses.wait(&cmd.command_id, CommandState::Acked).await;
    tillsync_tests::eventually(crate::commands::T, "nothing waits for approvals any more", || async {
        let text = crate::commands::scrape(broker.broker.http_addr).await;
        (tillsync_tests::metric(&text, "tillsync_commands_awaiting_approval", "tenant=\"appr\"")? == 0.0).then_some(())
    })
    .await;
    assert_eq!(edge.applied(&cmd.command_id), 1);
    let counted = "SELECT count(*) FROM command_decisions WHERE code IS NULL";
    assert_eq!(stack.db.count(counted).await, 2);
    let refused: Vec<(String, String)> =
        sqlx::query_as("SELECT approver_id, code FROM command_decisions WHERE code IS NOT NULL ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    let codes: Vec<&str> = refused.iter().map(|(_, c)| c.as_str()).collect();
    let expected =
        ["bad_approval_signature", "self_approval", "unknown_approver", "unknown_approver", "duplicate_approver"];
    assert_eq!(codes, expected);
    let approvers: Vec<String> = sqlx::query_scalar("SELECT unnest(approvers) FROM commands WHERE command_id = $1")
        .bind(&cmd.command_id)
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(approvers, ["alice", "bob"]);
    let http = broker.broker.http_addr;
    metric_at_least(http, "tillsync_approval_decisions_total", "decision=\"approve\",outcome=\"counted\"", 2.0).await;
    metric_at_least(
        http,
        "tillsync_approval_decisions_total",
        "decision=\"approve\",outcome=\"bad_approval_signature\"",
        1.0,
    )
    .await;
    metric_at_least(http, "tillsync_commands_pending_approval_total", "", 1.0).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_waiting_command_ends_rejected_expired_or_cancelled_and_names_prove_nothing() {
    let (stack, broker) = setup("appr-end", |_| {}).await;
    let pool = &stack.db.pool;
    let d = DeviceAddr::new("appr-end", "s1", "till-1");
    let edge = FakeEdge::start(&stack, &d, Mode::Apply).await;
    online(pool, &d).await;
    let statuses = Statuses::watch(&stack.nats.client().await, "appr-end").await;
    let js = stack.nats.jetstream().await;
    let alice = tillsync_tests::approver_key("alice");
    let bob = tillsync_tests::approver_key("bob");

    // The review's refund: 99,999.00 EUR with two invented names and no signatures.
    let mut named = command("appr-end", "s1", Some("till-1"), refund(9_999_900), &["alice", "bob"], 60_000);
    for a in &mut named.approvals {
        a.signature = None;
    }
    send(&js, &named).await;
    let s = statuses.wait(&named.command_id, CommandState::Rejected).await;
    assert_eq!(s.code.as_deref(), Some("unsigned_approval"));

    // One approver rejects: rejected, and a later approval changes nothing.
    let rejected = command("appr-end", "s1", Some("till-1"), refund(100), &[], 60_000);
    send(&js, &rejected).await;
    statuses.wait(&rejected.command_id, CommandState::PendingApproval).await;
    decide(&js, &decision(&rejected, "alice", &alice, Decision::Reject)).await;
    let s = statuses.wait(&rejected.command_id, CommandState::Rejected).await;
    assert_eq!((s.code.as_deref(), s.detail.as_str()), (Some("approval_rejected"), "rejected by alice"));
    decide(&js, &decision(&rejected, "bob", &bob, Decision::Approve)).await;
    let late = "SELECT count(*) FROM command_decisions WHERE code = 'not_pending_approval'";
    tillsync_tests::eventually_eq(crate::commands::T, "late approval recorded", 1, || stack.db.count(late)).await;

    // Expiry while waiting: rejected `expired` by the sweeper, never delivered.
    let expiring = command("appr-end", "s1", Some("till-1"), menu(), &[], 2_000);
    send(&js, &expiring).await;
    statuses.wait(&expiring.command_id, CommandState::PendingApproval).await;
    let s = statuses.wait(&expiring.command_id, CommandState::Rejected).await;
    assert_eq!(s.code.as_deref(), Some("expired"));

    // A cancel from the portal ends a waiting command at once.
    let cancelled = command("appr-end", "s1", Some("till-1"), menu(), &[], 60_000);
    send(&js, &cancelled).await;
    statuses.wait(&cancelled.command_id, CommandState::PendingApproval).await;
    let req = CommandCancel {
        schema_version: SCHEMA_VERSION,
        command_id: cancelled.command_id.clone(),
        tenant_id: "appr-end".into(),
        store_id: "s1".into(),
        requested_by: "requester".into(),
        at_ms: tillsync_broker::now_ms(),
    };
    js.publish(subject::cancel("appr-end", "s1"), codec::encode(&req).into()).await.unwrap().await.unwrap();
    statuses.wait(&cancelled.command_id, CommandState::Cancelled).await;
    decide(&js, &decision(&cancelled, "alice", &alice, Decision::Approve)).await;

    // One approved command after all of them: it is the only one the till ever sees.
    let ok = command("appr-end", "s1", Some("till-1"), menu(), &["alice"], 60_000);
    send(&js, &ok).await;
    statuses.wait(&ok.command_id, CommandState::Acked).await;
    tillsync_tests::eventually_eq(crate::commands::T, "two late approvals recorded", 2, || stack.db.count(late)).await;
    assert_eq!(edge.arrival_count(), 1);
    assert_eq!(stack.db.count("SELECT count(*) FROM commands WHERE pending_approval").await, 0);
    broker.stop().await;
}
