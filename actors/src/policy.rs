//! Command decisions as pure functions: the approval policy at intake, and per device inbox what
//! to do now (deliver, redeliver, fail, expire) and what an ack does. No I/O, no clock: `now`
//! is always an argument, so every rule is unit-tested here.

use std::collections::HashSet;

use tillsync_schemas::approval::{self, Decision};
use tillsync_schemas::{CommandDecision, CommandEnvelope, CommandState, Outcome, Reason, WireError};

/// Code of a command that ran out of delivery attempts.
pub const MAX_ATTEMPTS_CODE: &str = "max_attempts";
/// Code of a command that expired in the broker.
pub const EXPIRED_CODE: &str = "expired";
/// Longest wait between two checks (or deliveries) of one command.
pub const MAX_RETRY_MS: u64 = 10 * 60 * 1000;
/// A copy the device's consumer acked counts as "ack lost" only once it was published this
/// many first retry delays ago: the device's ack is stored before it acks the copy, so only a
/// slow ack lane can be behind, and this leaves it time.
pub const ACK_GRACE_RETRIES: i64 = 4;

/// What a command's approvals add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approvals {
    /// As many distinct, verified approvers as its kind needs: the command may be delivered.
    Enough,
    /// Every approval verifies but there are fewer than the kind needs: it waits in
    /// `pending_approval` for the rest (`tillsync commands approve`).
    Pending { have: usize, need: usize },
}

/// The approval policy: refunds, voids and order changes need two distinct approvers, other
/// kinds one; the requester never approves their own command; an approval counts only as a
/// signature over this command by the key registered for that approver in the tenant
/// (`key_of`, `None` for someone not registered or revoked). A names-only approval is refused.
pub fn check_approvals<'k>(
    cmd: &CommandEnvelope,
    key_of: impl Fn(&str) -> Option<&'k str>,
) -> Result<Approvals, WireError> {
    let mut seen = HashSet::new();
    for a in &cmd.approvals {
        if a.approver == cmd.requested_by {
            return Err(self_approval(&a.approver));
        }
        if !seen.insert(a.approver.as_str()) {
            return Err(WireError::new(Reason::DuplicateApprover, format!("{} approved more than once", a.approver)));
        }
        let Some(signature) = a.signature.as_deref() else {
            return Err(WireError::new(
                Reason::UnsignedApproval,
                format!(
                    "the approval of {} carries no signature: approvals are signed by registered approvers",
                    a.approver
                ),
            ));
        };
        check_signature(cmd, &a.approver, Decision::Approve, signature, key_of(&a.approver))?;
    }
    let need = cmd.body.required_approvals();
    Ok(if seen.len() >= need { Approvals::Enough } else { Approvals::Pending { have: seen.len(), need } })
}

/// An approver's decision about a recorded command (`approved`: who approved it so far).
pub fn check_decision(
    cmd: &CommandEnvelope,
    approved: &[String],
    d: &CommandDecision,
    key: Option<&str>,
) -> Result<(), WireError> {
    if d.approver == cmd.requested_by {
        return Err(self_approval(&d.approver));
    }
    check_signature(cmd, &d.approver, d.decision, &d.signature, key)?;
    if approved.contains(&d.approver) {
        return Err(WireError::new(Reason::DuplicateApprover, format!("{} approved already", d.approver)));
    }
    Ok(())
}

fn self_approval(who: &str) -> WireError {
    WireError::new(Reason::SelfApproval, format!("{who} requested the command and cannot approve it"))
}

fn check_signature(
    cmd: &CommandEnvelope,
    approver: &str,
    decision: Decision,
    signature: &str,
    key: Option<&str>,
) -> Result<(), WireError> {
    let Some(key) = key else {
        return Err(WireError::new(
            Reason::UnknownApprover,
            format!("{approver} is not a registered approver of tenant {} (tillsync approvers add)", cmd.tenant_id),
        ));
    };
    if !approval::verify(key, cmd, approver, decision, signature) {
        return Err(WireError::new(
            Reason::BadApprovalSignature,
            format!("the signature of {approver} does not verify over this command with their registered key"),
        ));
    }
    Ok(())
}

/// Expiry at intake: `expires_at` must lie in the future and at most `max_ttl_ms` away.
pub fn check_expiry(cmd: &CommandEnvelope, now_ms: i64, max_ttl_ms: i64) -> Result<(), WireError> {
    if cmd.expires_at_ms <= now_ms {
        return Err(WireError::new(
            Reason::Expired,
            format!("expired {} ms before intake", now_ms - cmd.expires_at_ms),
        ));
    }
    if cmd.expires_at_ms - now_ms > max_ttl_ms {
        return Err(WireError::new(
            Reason::TtlTooLong,
            format!(
                "expires in {} s, more than the {} s allowed",
                (cmd.expires_at_ms - now_ms) / 1000,
                max_ttl_ms / 1000
            ),
        ));
    }
    Ok(())
}

/// Every intake rule: expiry, then approvals (`key_of` as in [`check_approvals`]).
pub fn check_intake<'k>(
    cmd: &CommandEnvelope,
    now_ms: i64,
    max_ttl_ms: i64,
    key_of: impl Fn(&str) -> Option<&'k str>,
) -> Result<Approvals, WireError> {
    check_expiry(cmd, now_ms, max_ttl_ms)?;
    check_approvals(cmd, key_of)
}

/// Wait after delivery `attempt` (1-based) before the next: `first_ms` doubling, capped.
pub fn retry_delay_ms(attempt: u32, first_ms: u64) -> u64 {
    first_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30)).min(MAX_RETRY_MS.max(first_ms))
}

/// Wait before checking again that a copy published `age_ms` ago is still in the stream: as
/// long as it has been there, at least `first_ms` and at most [`MAX_RETRY_MS`], so a copy
/// waiting for a device offline for days costs a few checks, not one every few seconds.
pub fn check_delay_ms(age_ms: i64, first_ms: u64) -> u64 {
    (age_ms.max(0) as u64).clamp(first_ms, MAX_RETRY_MS.max(first_ms))
}

/// Delivery knobs, from the broker configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxParams {
    /// Copies of one command the broker publishes at most (the first and every republish of a
    /// lost one) before it ends `failed` with [`MAX_ATTEMPTS_CODE`].
    pub max_attempts: u32,
    pub first_retry_ms: u64,
}

/// One unfinished command of a device, as the inbox holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    pub command_id: String,
    /// Issue order within the device.
    pub inbox_seq: i64,
    /// `Queued` (not yet published) or `Delivered` (published to the device's stream).
    pub state: CommandState,
    /// Copies published so far.
    pub attempts: u32,
    /// When the next check (or, queued, the first delivery) is due.
    pub next_attempt_at_ms: i64,
    pub expires_at_ms: i64,
    /// Stream sequence of the latest copy, once its publish was confirmed.
    pub stream_seq: Option<u64>,
    /// When the latest copy was published (0: never).
    pub published_at_ms: i64,
}

/// Why a copy is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// The first copy.
    First,
    /// The stream no longer holds the last copy (NATS lost the write) and no ack came.
    Lost,
    /// The device's consumer acked the last copy but its command ack never reached the broker
    /// (lost on the way): the device answers a copy it already ran with its stored ack.
    AckLost,
    /// The last publish was recorded but its PubAck never was (the broker stopped, or NATS did
    /// not answer): the same copy again, which the stream's duplicate window drops.
    Unconfirmed,
}

impl Publish {
    pub fn as_str(self) -> &'static str {
        match self {
            Publish::First => "first",
            Publish::Lost => "lost",
            Publish::AckLost => "ack_lost",
            Publish::Unconfirmed => "unconfirmed",
        }
    }
}

/// What the stream and the device's consumer say about the last copy of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyState {
    /// In the stream, not yet acked by the device's consumer: the device has not finished
    /// with it (offline, or applying). Nothing to do; JetStream redelivers it to the device.
    Waiting,
    /// Gone from the stream.
    Missing,
    /// Acked by the device's consumer, yet no command ack reached the broker.
    Consumed,
    /// No stream sequence recorded for it.
    Unconfirmed,
}

/// What to do with one entry now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish copy `attempt`; its check is due at `next_attempt_at_ms`.
    Deliver {
        command_id: String,
        attempt: u32,
        next_attempt_at_ms: i64,
        why: Publish,
    },
    /// The published copy's check is due: ask the stream, then [`after_check`].
    Check {
        command_id: String,
    },
    /// Check again at `next_attempt_at_ms`.
    Recheck {
        command_id: String,
        next_attempt_at_ms: i64,
    },
    /// Every copy published was lost: end `failed` with [`MAX_ATTEMPTS_CODE`].
    Fail {
        command_id: String,
        attempts: u32,
    },
    Expire {
        command_id: String,
        attempts: u32,
    },
}

/// Plans a device's inbox at `now`. Entries are visited in issue order. Expiry wins over
/// everything and does not need the device. A command is published to the device's stream
/// once, when the device is online, in issue order: a command never has its first delivery
/// while an earlier command of the device still waits for its first. From then on the
/// device's durable consumer holds it and JetStream redelivers it to the device until the
/// device acks it, however long the device is away, so no attempt is spent on an offline or
/// slow device; the broker only checks, now and then, that the copy is still there.
pub fn plan(entries: &[PendingEntry], now_ms: i64, online: bool, p: InboxParams) -> Vec<Action> {
    let mut sorted: Vec<&PendingEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.inbox_seq);
    let mut actions = Vec::new();
    let mut earlier_waiting = false;
    for e in sorted {
        let command_id = e.command_id.clone();
        let first = e.state == CommandState::Queued;
        if now_ms >= e.expires_at_ms {
            actions.push(Action::Expire { command_id, attempts: e.attempts });
            continue;
        }
        if now_ms < e.next_attempt_at_ms {
            earlier_waiting |= first;
            continue;
        }
        if !first {
            actions.push(Action::Check { command_id });
            continue;
        }
        if !online || earlier_waiting {
            earlier_waiting = true;
            continue;
        }
        let attempt = e.attempts + 1;
        let next = now_ms.saturating_add(retry_delay_ms(1, p.first_retry_ms) as i64);
        // Never schedule a check past expiry: the expiry tick comes first anyway.
        let next_attempt_at_ms = next.min(e.expires_at_ms);
        actions.push(Action::Deliver { command_id, attempt, next_attempt_at_ms, why: Publish::First });
    }
    actions
}

/// What a due check of a published copy leads to, given what the stream says about it.
pub fn after_check(e: &PendingEntry, copy: CopyState, now_ms: i64, p: InboxParams) -> Action {
    let command_id = e.command_id.clone();
    let delay = check_delay_ms(now_ms - e.published_at_ms, p.first_retry_ms) as i64;
    let next_attempt_at_ms = now_ms.saturating_add(delay).min(e.expires_at_ms);
    let age = now_ms - e.published_at_ms;
    let why = match copy {
        CopyState::Waiting => return Action::Recheck { command_id, next_attempt_at_ms },
        CopyState::Consumed if age < ACK_GRACE_RETRIES * p.first_retry_ms as i64 => {
            return Action::Recheck { command_id, next_attempt_at_ms }
        }
        CopyState::Unconfirmed => {
            return Action::Deliver { command_id, attempt: e.attempts, next_attempt_at_ms, why: Publish::Unconfirmed }
        }
        CopyState::Missing => Publish::Lost,
        CopyState::Consumed => Publish::AckLost,
    };
    if e.attempts >= p.max_attempts {
        return Action::Fail { command_id, attempts: e.attempts };
    }
    let next = now_ms.saturating_add(p.first_retry_ms as i64).min(e.expires_at_ms);
    Action::Deliver { command_id, attempt: e.attempts + 1, next_attempt_at_ms: next, why }
}

/// Intake's direct first delivery: what [`plan`] would do for a command just accepted, so
/// intake can record and publish attempt 1 at once instead of waking the device actor. It
/// applies when `plan` would deliver it now: the device is online, no earlier command of the
/// device still waits for its first delivery (checked in the accepting statement) and attempts
/// are allowed at all. `Some(next_attempt_at_ms)` of attempt 1, as `plan` schedules it.
pub fn direct_first_delivery(now_ms: i64, expires_at_ms: i64, online: bool, p: InboxParams) -> Option<i64> {
    if p.max_attempts == 0 {
        return None;
    }
    let entry = PendingEntry {
        command_id: String::new(),
        inbox_seq: 0,
        state: CommandState::Queued,
        attempts: 0,
        next_attempt_at_ms: now_ms,
        expires_at_ms,
        stream_seq: None,
        published_at_ms: 0,
    };
    match plan(std::slice::from_ref(&entry), now_ms, online, p).pop() {
        Some(Action::Deliver { attempt: 1, next_attempt_at_ms, .. }) => Some(next_attempt_at_ms),
        _ => None,
    }
}

/// The earliest moment `plan` would do something for these entries (for timers and sweeps).
pub fn next_due_ms(entries: &[PendingEntry]) -> Option<i64> {
    entries.iter().map(|e| e.next_attempt_at_ms.min(e.expires_at_ms)).min()
}

/// What an ack did, recorded with it in `command_acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckEffect {
    /// It moved the command to its final state.
    AppliedTransition,
    /// The command was already final by an earlier ack: a resent ack.
    Duplicate,
    /// The command was already final by the broker (expired, out of attempts, cancelled) and
    /// the device did not apply it: recorded only.
    AfterFinal,
    /// The device applied the command after the portal was told it ended: recorded on the
    /// entry, and the portal gets a correcting `acked` status.
    AppliedAfterFinal,
    /// No such command for this device.
    UnknownCommand,
}

impl AckEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            AckEffect::AppliedTransition => "applied_transition",
            AckEffect::Duplicate => "duplicate",
            AckEffect::AfterFinal => "after_final",
            AckEffect::AppliedAfterFinal => "applied_after_final",
            AckEffect::UnknownCommand => "unknown_command",
        }
    }
}

/// An ack's effect and, for a transition, the new state. `applied` ends `acked`; `failed` and
/// `rejected` (refused without trying: precondition failed, expired on arrival) both end
/// `failed`, carrying the device's code so the portal can tell them apart. An `applied` ack
/// for an entry the broker had ended otherwise is the truth arriving late: it is recorded as
/// [`AckEffect::AppliedAfterFinal`] (once) and corrects what the portal was told; the state
/// itself never changes again.
pub fn on_ack(
    current: Option<CommandState>,
    acked_before: bool,
    outcome: Outcome,
) -> (AckEffect, Option<CommandState>) {
    match current {
        None => (AckEffect::UnknownCommand, None),
        Some(s) if s.is_final() && acked_before => (AckEffect::Duplicate, None),
        Some(s) if s.is_final() && outcome == Outcome::Applied && s != CommandState::Acked => {
            (AckEffect::AppliedAfterFinal, None)
        }
        Some(s) if s.is_final() => (AckEffect::AfterFinal, None),
        Some(_) => (AckEffect::AppliedTransition, Some(ack_target(outcome))),
    }
}

/// The state an ack moves an unfinished entry to.
pub fn ack_target(outcome: Outcome) -> CommandState {
    match outcome {
        Outcome::Applied => CommandState::Acked,
        Outcome::Failed | Outcome::Rejected => CommandState::Failed,
    }
}

#[cfg(test)]
mod tests {
    use tillsync_schemas::{Approval, CommandBody, SCHEMA_VERSION};

    use super::*;

    fn cmd(body: CommandBody, approvers: &[&str]) -> CommandEnvelope {
        let mut c = CommandEnvelope {
            schema_version: SCHEMA_VERSION,
            command_id: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
            tenant_id: "acme".into(),
            store_id: "s1".into(),
            device_id: Some("d1".into()),
            body,
            issued_at_ms: 1_000,
            expires_at_ms: 61_000,
            requested_by: "req".into(),
            approvals: vec![],
            if_match: None,
        };
        c.approvals = approvers.iter().map(|a| signed(&c, a)).collect();
        c
    }

    /// `a`'s approval signed with the test key of that name ("approver-a"/"approver-b"), else
    /// with approver-a's key.
    fn signed(c: &CommandEnvelope, a: &str) -> Approval {
        let key = approval::test_key(usize::from(a == "approver-b"));
        let signature = Some(approval::sign(&key, c, a, Decision::Approve));
        Approval { approver: a.into(), role: "manager".into(), approved_at_ms: 1_000, signature }
    }

    /// The registry of the tests: the two test approvers, and "req" registered too (a
    /// requester may be an approver of other commands).
    fn key_of(a: &str) -> Option<&'static str> {
        static KEYS: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();
        let keys = KEYS.get_or_init(|| {
            vec![
                ("approver-a", approval::test_key(0).public_key()),
                ("approver-b", approval::test_key(1).public_key()),
                ("req", approval::test_key(0).public_key()),
            ]
        });
        keys.iter().find(|(n, _)| *n == a).map(|(_, k)| k.as_str())
    }

    fn void() -> CommandBody {
        CommandBody::VoidOrder { order_id: "o1".into(), reason: "x".into() }
    }

    fn menu() -> CommandBody {
        CommandBody::ApplyMenuPublish { menu_id: "m".into(), version: 1 }
    }

    fn reason<T>(r: Result<T, WireError>) -> Option<Reason> {
        r.err().map(|e| e.reason)
    }

    fn check(c: &CommandEnvelope) -> Result<Approvals, WireError> {
        check_approvals(c, key_of)
    }

    const A: &str = "approver-a";
    const B: &str = "approver-b";

    #[test]
    fn approvals() {
        assert_eq!(check(&cmd(void(), &[A, B])), Ok(Approvals::Enough));
        assert_eq!(check(&cmd(void(), &[A])), Ok(Approvals::Pending { have: 1, need: 2 }));
        assert_eq!(check(&cmd(void(), &[])), Ok(Approvals::Pending { have: 0, need: 2 }));
        assert_eq!(reason(check(&cmd(void(), &[A, A]))), Some(Reason::DuplicateApprover));
        assert_eq!(reason(check(&cmd(void(), &[A, "req"]))), Some(Reason::SelfApproval));
        assert_eq!(check(&cmd(menu(), &[A])), Ok(Approvals::Enough));
        assert_eq!(check(&cmd(menu(), &[])), Ok(Approvals::Pending { have: 0, need: 1 }));
        assert_eq!(reason(check(&cmd(menu(), &["req"]))), Some(Reason::SelfApproval));
        let status = CommandBody::SetOrderStatus { order_id: "o".into(), status: "closed".into() };
        assert_eq!(check(&cmd(status, &[A, B])), Ok(Approvals::Enough));
    }

    #[test]
    fn an_approval_is_a_registered_key_signing_this_very_command() {
        // Names only: the protocol 1.x envelope.
        let mut c = cmd(void(), &[A, B]);
        c.approvals[1].signature = None;
        assert_eq!(reason(check(&c)), Some(Reason::UnsignedApproval));
        // Signed by someone not registered.
        let c = cmd(void(), &[A, "mallory"]);
        assert_eq!(reason(check(&c)), Some(Reason::UnknownApprover));
        // B's name on A's signature.
        let mut c = cmd(void(), &[A, B]);
        c.approvals[1].signature = c.approvals[0].signature.clone();
        assert_eq!(reason(check(&c)), Some(Reason::BadApprovalSignature));
        // Approved for one order, sent for another.
        let mut c = cmd(void(), &[A, B]);
        c.body = CommandBody::VoidOrder { order_id: "o2".into(), reason: "x".into() };
        assert_eq!(reason(check(&c)), Some(Reason::BadApprovalSignature));
    }

    #[test]
    fn a_decision_counts_once_per_registered_approver_who_did_not_ask() {
        let c = cmd(void(), &[]);
        let decide = |who: &str, key: usize, decision| CommandDecision {
            schema_version: SCHEMA_VERSION,
            command_id: c.command_id.clone(),
            tenant_id: "acme".into(),
            store_id: "s1".into(),
            approver: who.into(),
            decision,
            signature: approval::sign(&approval::test_key(key), &c, who, decision),
            at_ms: 2_000,
        };
        assert_eq!(check_decision(&c, &[], &decide(A, 0, Decision::Approve), key_of(A)), Ok(()));
        assert_eq!(check_decision(&c, &[], &decide(A, 0, Decision::Reject), key_of(A)), Ok(()));
        let again = check_decision(&c, &[A.into()], &decide(A, 0, Decision::Approve), key_of(A));
        assert_eq!(reason(again), Some(Reason::DuplicateApprover));
        let forged = check_decision(&c, &[], &decide(B, 0, Decision::Approve), key_of(B));
        assert_eq!(reason(forged), Some(Reason::BadApprovalSignature));
        let own = check_decision(&c, &[], &decide("req", 0, Decision::Approve), key_of("req"));
        assert_eq!(reason(own), Some(Reason::SelfApproval));
        let stranger = check_decision(&c, &[], &decide("mallory", 0, Decision::Approve), None);
        assert_eq!(reason(stranger), Some(Reason::UnknownApprover));
    }

    #[test]
    fn expiry_and_ttl() {
        let c = cmd(menu(), &[A]);
        assert_eq!(reason(check_expiry(&c, 2_000, 86_400_000)), None);
        assert_eq!(reason(check_expiry(&c, 61_000, 86_400_000)), Some(Reason::Expired));
        assert_eq!(reason(check_expiry(&c, 2_000, 30_000)), Some(Reason::TtlTooLong));
        assert_eq!(reason(check_intake(&c, 70_000, 1, key_of)), Some(Reason::Expired));
        assert_eq!(
            check_intake(&cmd(void(), &[A]), 2_000, 86_400_000, key_of),
            Ok(Approvals::Pending { have: 1, need: 2 })
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(retry_delay_ms(1, 500), 500);
        assert_eq!(retry_delay_ms(3, 500), 2_000);
        assert_eq!(retry_delay_ms(2, 500), 1_000);
        assert_eq!(retry_delay_ms(4, 500), 4_000);
        assert_eq!(retry_delay_ms(40, 5_000), MAX_RETRY_MS);
        assert_eq!(retry_delay_ms(0, 500), 500);
        assert_eq!(check_delay_ms(0, 500), 500);
        assert_eq!(check_delay_ms(-5, 500), 500);
        assert_eq!(check_delay_ms(8_000, 500), 8_000);
        assert_eq!(check_delay_ms(86_400_000, 500), MAX_RETRY_MS);
    }

    const P: InboxParams = InboxParams { max_attempts: 3, first_retry_ms: 100 };

    fn entry(id: &str, seq: i64, state: CommandState, attempts: u32, next: i64) -> PendingEntry {
        PendingEntry {
            command_id: id.into(),
            inbox_seq: seq,
            state,
            attempts,
            next_attempt_at_ms: next,
            expires_at_ms: 10_000,
            stream_seq: (state == CommandState::Delivered).then_some(7),
            published_at_ms: 0,
        }
    }

    fn first(id: &str, next: i64) -> Action {
        Action::Deliver { command_id: id.into(), attempt: 1, next_attempt_at_ms: next, why: Publish::First }
    }

    #[test]
    fn delivers_queued_in_issue_order() {
        let es = [entry("b", 2, CommandState::Queued, 0, 0), entry("a", 1, CommandState::Queued, 0, 0)];
        assert_eq!(plan(&es, 1_000, true, P), vec![first("a", 1_100), first("b", 1_100)]);
    }

    #[test]
    fn offline_spends_no_attempts_but_expires() {
        let mut es = vec![entry("a", 1, CommandState::Queued, 0, 0), entry("b", 2, CommandState::Delivered, 1, 5_000)];
        assert!(plan(&es, 1_000, false, P).is_empty());
        es[0].expires_at_ms = 900;
        assert_eq!(plan(&es, 1_000, false, P), vec![Action::Expire { command_id: "a".into(), attempts: 0 }]);
    }

    /// A published copy is never republished on a timer: a due check asks the stream, and only
    /// a copy that is gone (or consumed without an ack reaching the broker) is published again.
    #[test]
    fn a_published_copy_is_checked_not_republished() {
        let e = entry("a", 1, CommandState::Delivered, 1, 1_000);
        assert!(plan(std::slice::from_ref(&e), 999, true, P).is_empty(), "not due yet");
        let check = vec![Action::Check { command_id: "a".into() }];
        assert_eq!(plan(std::slice::from_ref(&e), 1_000, true, P), check);
        assert_eq!(plan(std::slice::from_ref(&e), 1_000, false, P), check, "offline too: the stream is asked");
        // Still there: check again later, the later the longer it has been there.
        assert_eq!(
            after_check(&e, CopyState::Waiting, 1_000, P),
            Action::Recheck { command_id: "a".into(), next_attempt_at_ms: 2_000 }
        );
        assert_eq!(
            after_check(&e, CopyState::Waiting, 9_500, P),
            Action::Recheck { command_id: "a".into(), next_attempt_at_ms: 10_000 },
            "never past expiry"
        );
        let lost =
            Action::Deliver { command_id: "a".into(), attempt: 2, next_attempt_at_ms: 1_100, why: Publish::Lost };
        assert_eq!(after_check(&e, CopyState::Missing, 1_000, P), lost);
        let ack_lost =
            Action::Deliver { command_id: "a".into(), attempt: 2, next_attempt_at_ms: 1_100, why: Publish::AckLost };
        assert_eq!(after_check(&e, CopyState::Consumed, 1_000, P), ack_lost);
        let mut fresh = e.clone();
        fresh.published_at_ms = 900;
        assert!(
            matches!(after_check(&fresh, CopyState::Consumed, 1_000, P), Action::Recheck { .. }),
            "the ack lane gets time to catch up"
        );
        let again = Action::Deliver {
            command_id: "a".into(),
            attempt: 1,
            next_attempt_at_ms: 2_000,
            why: Publish::Unconfirmed,
        };
        assert_eq!(after_check(&e, CopyState::Unconfirmed, 1_000, P), again, "same copy, same attempt");
        let spent = entry("a", 1, CommandState::Delivered, 3, 1_000);
        assert_eq!(
            after_check(&spent, CopyState::Missing, 1_000, P),
            Action::Fail { command_id: "a".into(), attempts: 3 }
        );
        assert!(matches!(after_check(&spent, CopyState::Waiting, 1_000, P), Action::Recheck { .. }), "waiting is free");
    }

    #[test]
    fn redelivery_never_scheduled_past_expiry() {
        let mut e = entry("a", 1, CommandState::Queued, 0, 0);
        e.expires_at_ms = 1_050;
        assert_eq!(plan(&[e], 1_000, true, P), vec![first("a", 1_050)]);
    }

    #[test]
    fn later_command_waits_for_earlier_first_delivery() {
        let es = [entry("a", 1, CommandState::Queued, 0, 5_000), entry("b", 2, CommandState::Queued, 0, 0)];
        assert!(plan(&es, 1_000, true, P).is_empty());
        assert_eq!(next_due_ms(&es), Some(0));
    }

    #[test]
    fn acks() {
        use CommandState::*;
        assert_eq!(on_ack(None, false, Outcome::Applied), (AckEffect::UnknownCommand, None));
        assert_eq!(on_ack(Some(Delivered), false, Outcome::Applied), (AckEffect::AppliedTransition, Some(Acked)));
        assert_eq!(on_ack(Some(Delivered), false, Outcome::Failed), (AckEffect::AppliedTransition, Some(Failed)));
        assert_eq!(on_ack(Some(Queued), false, Outcome::Rejected), (AckEffect::AppliedTransition, Some(Failed)));
        assert_eq!(on_ack(Some(Acked), true, Outcome::Applied), (AckEffect::Duplicate, None));
        assert_eq!(on_ack(Some(Expired), false, Outcome::Applied), (AckEffect::AppliedAfterFinal, None));
        assert_eq!(on_ack(Some(Failed), false, Outcome::Applied), (AckEffect::AppliedAfterFinal, None));
        assert_eq!(on_ack(Some(Cancelled), false, Outcome::Applied), (AckEffect::AppliedAfterFinal, None));
        assert_eq!(on_ack(Some(Cancelled), true, Outcome::Applied), (AckEffect::Duplicate, None), "corrected once");
        assert_eq!(on_ack(Some(Expired), false, Outcome::Rejected), (AckEffect::AfterFinal, None));
    }

    #[test]
    fn direct_first_delivery_is_what_plan_does_for_a_new_command() {
        let p = InboxParams { max_attempts: 3, first_retry_ms: 500 };
        assert_eq!(direct_first_delivery(1_000, 60_000, true, p), Some(1_500));
        // Never scheduled past expiry.
        assert_eq!(direct_first_delivery(1_000, 1_200, true, p), Some(1_200));
        assert_eq!(direct_first_delivery(1_000, 60_000, false, p), None, "offline: wait");
        assert_eq!(direct_first_delivery(1_000, 900, true, p), None, "expired: the tick expires it");
        let none = InboxParams { max_attempts: 0, first_retry_ms: 500 };
        assert_eq!(direct_first_delivery(1_000, 60_000, true, none), None, "no attempts allowed");
    }
}
