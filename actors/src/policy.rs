//! Command decisions as pure functions: the approval policy at intake, and per device inbox what
//! to do now (deliver, redeliver, fail, expire) and what an ack does. No I/O, no clock: `now`
//! is always an argument, so every rule is unit-tested here.

use std::collections::HashSet;

use tillsync_schemas::{CommandEnvelope, CommandState, Outcome, Reason, WireError};

/// Code of a command that ran out of delivery attempts.
pub const MAX_ATTEMPTS_CODE: &str = "max_attempts";
/// Code of a command that expired in the broker.
pub const EXPIRED_CODE: &str = "expired";
/// Longest wait between two deliveries of one command, however many attempts.
pub const MAX_RETRY_MS: u64 = 10 * 60 * 1000;

/// The approval policy: refunds, voids and order changes need two distinct approvers, other
/// kinds one; the requester never approves their own command.
pub fn check_approvals(cmd: &CommandEnvelope) -> Result<(), WireError> {
    if cmd.approvals.iter().any(|a| a.approver == cmd.requested_by) {
        return Err(WireError::new(
            Reason::SelfApproval,
            format!("{} requested the command and cannot approve it", cmd.requested_by),
        ));
    }
    let mut seen = HashSet::new();
    if let Some(dup) = cmd.approvals.iter().find(|a| !seen.insert(a.approver.as_str())) {
        return Err(WireError::new(Reason::DuplicateApprover, format!("{} approved more than once", dup.approver)));
    }
    let need = cmd.body.required_approvals();
    if seen.len() < need {
        return Err(WireError::new(
            Reason::MissingApproval,
            format!("{} needs {need} distinct approvers, has {}", cmd.body.kind(), seen.len()),
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

/// Every intake rule that needs no database: approvals, then expiry.
pub fn check_intake(cmd: &CommandEnvelope, now_ms: i64, max_ttl_ms: i64) -> Result<(), WireError> {
    check_approvals(cmd)?;
    check_expiry(cmd, now_ms, max_ttl_ms)
}

/// Wait after delivery `attempt` (1-based) before the next: `first_ms` doubling, capped.
pub fn retry_delay_ms(attempt: u32, first_ms: u64) -> u64 {
    first_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30)).min(MAX_RETRY_MS.max(first_ms))
}

/// Delivery knobs, from the broker configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxParams {
    pub max_attempts: u32,
    pub first_retry_ms: u64,
}

/// One unfinished command of a device, as the inbox holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    pub command_id: String,
    /// Issue order within the device.
    pub inbox_seq: i64,
    /// `Queued` or `Delivered`.
    pub state: CommandState,
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub expires_at_ms: i64,
}

/// What to do with one entry now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish delivery `attempt`; the next one is due at `next_attempt_at_ms`.
    Deliver {
        command_id: String,
        attempt: u32,
        next_attempt_at_ms: i64,
    },
    /// Out of attempts: end `failed` with [`MAX_ATTEMPTS_CODE`].
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
/// everything and does not need the device. Deliveries need the device online, so an offline
/// device spends no attempts (JetStream still holds what was already delivered). Deliveries are
/// pipelined in issue order, not one at a time: a command never has its first delivery while an
/// earlier command of the device is still waiting for its first.
pub fn plan(entries: &[PendingEntry], now_ms: i64, online: bool, p: InboxParams) -> Vec<Action> {
    let mut sorted: Vec<&PendingEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.inbox_seq);
    let mut actions = Vec::new();
    let mut earlier_waiting = false;
    for e in sorted {
        let command_id = e.command_id.clone();
        if now_ms >= e.expires_at_ms {
            actions.push(Action::Expire { command_id, attempts: e.attempts });
            continue;
        }
        if now_ms < e.next_attempt_at_ms {
            earlier_waiting |= e.state == CommandState::Queued;
            continue;
        }
        if e.attempts >= p.max_attempts {
            actions.push(Action::Fail { command_id, attempts: e.attempts });
            continue;
        }
        let first = e.state == CommandState::Queued;
        if !online || (first && earlier_waiting) {
            earlier_waiting |= first;
            continue;
        }
        let attempt = e.attempts + 1;
        let next = now_ms.saturating_add(retry_delay_ms(attempt, p.first_retry_ms) as i64);
        // Never schedule a redelivery past expiry: the expiry tick comes first anyway.
        actions.push(Action::Deliver { command_id, attempt, next_attempt_at_ms: next.min(e.expires_at_ms) });
    }
    actions
}

/// Intake's direct first delivery: what [`plan`] would do for a command just accepted, so
/// intake can record and publish attempt 1 at once instead of waking the device actor. It
/// applies when `plan` would deliver it now: the device is online, no earlier command of the
/// device still waits for its first delivery (checked in the accepting statement) and attempts
/// are allowed at all. `Some(next_attempt_at_ms)` of attempt 1, as `plan` schedules it.
pub fn direct_first_delivery(now_ms: i64, expires_at_ms: i64, online: bool, p: InboxParams) -> Option<i64> {
    let entry = PendingEntry {
        command_id: String::new(),
        inbox_seq: 0,
        state: CommandState::Queued,
        attempts: 0,
        next_attempt_at_ms: now_ms,
        expires_at_ms,
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
    /// The command was already final by the broker (expired, out of attempts): recorded only.
    AfterFinal,
    /// No such command for this device.
    UnknownCommand,
}

impl AckEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            AckEffect::AppliedTransition => "applied_transition",
            AckEffect::Duplicate => "duplicate",
            AckEffect::AfterFinal => "after_final",
            AckEffect::UnknownCommand => "unknown_command",
        }
    }
}

/// An ack's effect and, for a transition, the new state. `applied` ends `acked`; `failed` and
/// `rejected` (refused without trying: precondition failed, expired on arrival) both end
/// `failed`, carrying the device's code so the portal can tell them apart.
pub fn on_ack(
    current: Option<CommandState>,
    acked_before: bool,
    outcome: Outcome,
) -> (AckEffect, Option<CommandState>) {
    match current {
        None => (AckEffect::UnknownCommand, None),
        Some(s) if s.is_final() && acked_before => (AckEffect::Duplicate, None),
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
        CommandEnvelope {
            schema_version: SCHEMA_VERSION,
            command_id: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
            tenant_id: "acme".into(),
            store_id: "s1".into(),
            device_id: Some("d1".into()),
            body,
            issued_at_ms: 1_000,
            expires_at_ms: 61_000,
            requested_by: "req".into(),
            approvals: approvers
                .iter()
                .map(|a| Approval { approver: (*a).into(), role: "manager".into(), approved_at_ms: 1_000 })
                .collect(),
            if_match: None,
        }
    }

    fn void() -> CommandBody {
        CommandBody::VoidOrder { order_id: "o1".into(), reason: "x".into() }
    }

    fn menu() -> CommandBody {
        CommandBody::ApplyMenuPublish { menu_id: "m".into(), version: 1 }
    }

    fn reason(r: Result<(), WireError>) -> Option<Reason> {
        r.err().map(|e| e.reason)
    }

    #[test]
    fn approvals() {
        assert_eq!(reason(check_approvals(&cmd(void(), &["a", "b"]))), None);
        assert_eq!(reason(check_approvals(&cmd(void(), &["a"]))), Some(Reason::MissingApproval));
        assert_eq!(reason(check_approvals(&cmd(void(), &[]))), Some(Reason::MissingApproval));
        assert_eq!(reason(check_approvals(&cmd(void(), &["a", "a"]))), Some(Reason::DuplicateApprover));
        assert_eq!(reason(check_approvals(&cmd(void(), &["a", "req"]))), Some(Reason::SelfApproval));
        assert_eq!(reason(check_approvals(&cmd(menu(), &["a"]))), None);
        assert_eq!(reason(check_approvals(&cmd(menu(), &[]))), Some(Reason::MissingApproval));
        assert_eq!(reason(check_approvals(&cmd(menu(), &["req"]))), Some(Reason::SelfApproval));
        let refund = CommandBody::RefundOrder {
            order_id: "o".into(),
            payment_id: "p".into(),
            amount_minor: 1,
            currency: "EUR".into(),
            reason: "r".into(),
        };
        assert_eq!(reason(check_approvals(&cmd(refund, &["a"]))), Some(Reason::MissingApproval));
        let status = CommandBody::SetOrderStatus { order_id: "o".into(), status: "closed".into() };
        assert_eq!(reason(check_approvals(&cmd(status, &["a", "b"]))), None);
    }

    #[test]
    fn expiry_and_ttl() {
        let c = cmd(menu(), &["a"]);
        assert_eq!(reason(check_expiry(&c, 2_000, 86_400_000)), None);
        assert_eq!(reason(check_expiry(&c, 61_000, 86_400_000)), Some(Reason::Expired));
        assert_eq!(reason(check_expiry(&c, 2_000, 30_000)), Some(Reason::TtlTooLong));
        assert_eq!(reason(check_intake(&c, 70_000, 1)), Some(Reason::Expired));
        assert_eq!(reason(check_intake(&cmd(void(), &["a"]), 70_000, 1)), Some(Reason::MissingApproval));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(retry_delay_ms(1, 500), 500);
        assert_eq!(retry_delay_ms(3, 500), 2_000);
        assert_eq!(retry_delay_ms(2, 500), 1_000);
        assert_eq!(retry_delay_ms(4, 500), 4_000);
        assert_eq!(retry_delay_ms(40, 5_000), MAX_RETRY_MS);
        assert_eq!(retry_delay_ms(0, 500), 500);
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
        }
    }

    #[test]
    fn delivers_queued_in_issue_order() {
        let es = [entry("b", 2, CommandState::Queued, 0, 0), entry("a", 1, CommandState::Queued, 0, 0)];
        let got = plan(&es, 1_000, true, P);
        assert_eq!(
            got,
            vec![
                Action::Deliver { command_id: "a".into(), attempt: 1, next_attempt_at_ms: 1_100 },
                Action::Deliver { command_id: "b".into(), attempt: 1, next_attempt_at_ms: 1_100 },
            ]
        );
    }

    #[test]
    fn offline_spends_no_attempts_but_expires() {
        let mut es = vec![entry("a", 1, CommandState::Queued, 0, 0), entry("b", 2, CommandState::Delivered, 1, 500)];
        assert!(plan(&es, 1_000, false, P).is_empty());
        es[0].expires_at_ms = 900;
        assert_eq!(plan(&es, 1_000, false, P), vec![Action::Expire { command_id: "a".into(), attempts: 0 }]);
    }

    #[test]
    fn redelivers_with_backoff_then_fails() {
        let e = entry("a", 1, CommandState::Delivered, 2, 1_000);
        assert!(plan(std::slice::from_ref(&e), 999, true, P).is_empty(), "not due yet");
        assert_eq!(
            plan(std::slice::from_ref(&e), 1_000, true, P),
            vec![Action::Deliver { command_id: "a".into(), attempt: 3, next_attempt_at_ms: 1_400 }]
        );
        let spent = entry("a", 1, CommandState::Delivered, 3, 1_400);
        assert_eq!(
            plan(std::slice::from_ref(&spent), 1_400, false, P),
            vec![Action::Fail { command_id: "a".into(), attempts: 3 }]
        );
        assert_eq!(next_due_ms(&[spent]), Some(1_400));
    }

    #[test]
    fn redelivery_never_scheduled_past_expiry() {
        let mut e = entry("a", 1, CommandState::Queued, 0, 0);
        e.expires_at_ms = 1_050;
        assert_eq!(
            plan(&[e], 1_000, true, P),
            vec![Action::Deliver { command_id: "a".into(), attempt: 1, next_attempt_at_ms: 1_050 }]
        );
    }

    #[test]
    fn later_command_waits_for_earlier_first_delivery() {
        let es = [entry("a", 1, CommandState::Queued, 0, 5_000), entry("b", 2, CommandState::Queued, 0, 0)];
        assert!(plan(&es, 1_000, true, P).is_empty());
    }

    #[test]
    fn acks() {
        use CommandState::*;
        assert_eq!(on_ack(None, false, Outcome::Applied), (AckEffect::UnknownCommand, None));
        assert_eq!(on_ack(Some(Delivered), false, Outcome::Applied), (AckEffect::AppliedTransition, Some(Acked)));
        assert_eq!(on_ack(Some(Delivered), false, Outcome::Failed), (AckEffect::AppliedTransition, Some(Failed)));
        assert_eq!(on_ack(Some(Queued), false, Outcome::Rejected), (AckEffect::AppliedTransition, Some(Failed)));
        assert_eq!(on_ack(Some(Acked), true, Outcome::Applied), (AckEffect::Duplicate, None));
        assert_eq!(on_ack(Some(Expired), false, Outcome::Applied), (AckEffect::AfterFinal, None));
        assert_eq!(on_ack(Some(Failed), false, Outcome::Applied), (AckEffect::AfterFinal, None));
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
