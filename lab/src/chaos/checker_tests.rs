//! The checker on recorded histories: a clean run passes, and each kind of fault the chaos run
//! injects (or that today's code lets through) is reported by its check.

use tillsync_schemas::event::{OrderItemAdded, OrderOpened, OrderStatusChanged};
use tillsync_schemas::EventBody;

use super::*;
use crate::chaos::history::*;
use crate::chaos::model::{item_value, order_value};

fn accepted(seq: u64, body: EventBody) -> AcceptedEvent {
    AcceptedEvent { device_id: "till-1".into(), seq, event_id: format!("e{seq}"), body, at_ms: seq as i64 }
}

fn ledger(seq: i64, outcome: &str) -> LedgerRow {
    LedgerRow { device_id: "till-1".into(), event_id: format!("e{seq}"), seq, outcome: outcome.into() }
}

fn row(table: &'static str, key: &str, value: String) -> ModelRow {
    ModelRow { device_id: "till-1".into(), table, key: key.into(), value }
}

/// Three events of one order, all committed, rows as they imply; one command acked once.
fn clean() -> Histories {
    let opened = EventBody::OrderOpened(OrderOpened { order_id: "o1".into(), currency: "EUR".into(), table: None });
    let item = EventBody::OrderItemAdded(OrderItemAdded {
        order_id: "o1".into(),
        line_id: "l1".into(),
        sku: "tea".into(),
        name: "Tea".into(),
        quantity: 2,
        unit_price_minor: 300,
    });
    let paid = EventBody::OrderStatusChanged(OrderStatusChanged { order_id: "o1".into(), status: "paid".into() });
    Histories {
        accepted: vec![accepted(1, opened), accepted(2, item), accepted(3, paid)],
        ledger: vec![ledger(1, "applied"), ledger(2, "applied"), ledger(3, "applied")],
        rows: vec![
            row("orders", "o1", order_value("EUR", None, "paid")),
            row("order_items", "o1/l1", item_value("tea", "Tea", 2, 300, false)),
        ],
        sent: vec![SentCommand {
            command_id: "c1".into(),
            device_id: "till-1".into(),
            kind: "user_upsert".into(),
            sent_ms: 100,
            confirmed: true,
        }],
        statuses: vec![status("queued", 101), status("delivered", 102), status("acked", 110)],
        applications: vec![Application { command_id: "c1".into(), device_id: "till-1".into(), at_ms: 105 }],
        commands: vec![CommandRecord {
            command_id: "c1".into(),
            device_id: "till-1".into(),
            inbox_state: Some("acked".into()),
            rejected_code: None,
            final_log_states: vec!["acked".into()],
        }],
    }
}

fn status(state: &str, at_ms: i64) -> StatusSeen {
    StatusSeen {
        command_id: "c1".into(),
        device_id: Some("till-1".into()),
        state: state.into(),
        code: None,
        at_ms,
        received_ms: at_ms,
    }
}

fn violations(h: &Histories) -> BTreeMap<&'static str, u64> {
    check_all(h).into_iter().filter(|r| r.violations > 0).map(|r| (r.check, r.violations)).collect()
}

#[test]
fn a_clean_history_passes_every_check() {
    let h = clean();
    let results = check_all(&h);
    assert!(results.iter().all(|r| r.violations == 0), "{results:#?}");
    let checked: BTreeMap<_, _> = results.iter().map(|r| (r.check, r.checked)).collect();
    assert_eq!(checked["events_lost"], 3);
    assert_eq!(checked["read_model_rows"], 2);
    assert_eq!(checked["commands_one_final_state"], 1);
}

#[test]
fn an_acked_event_deleted_from_the_stream_is_lost_and_its_row_differs() {
    // What today's code leaves after the nemesis deletes seq 3 from TILLSYNC_EVENTS before
    // the broker read it: no ledger row, and the order still says open.
    let mut h = clean();
    h.ledger.pop();
    h.rows[0] = row("orders", "o1", order_value("EUR", None, "open"));
    let v = violations(&h);
    assert_eq!(v.get("events_lost"), Some(&1), "{v:?}");
    assert_eq!(v.get("read_model_rows"), Some(&1), "{v:?}");
}

#[test]
fn a_stale_event_is_out_of_order_and_hides_the_currency() {
    // seq 3 arrived before seq 1: the ledger says stale, the order has no currency.
    let mut h = clean();
    h.ledger[0].outcome = "stale".into();
    h.rows[0] = row("orders", "o1", order_value("", None, "paid"));
    let v = violations(&h);
    assert_eq!(v.get("events_out_of_order"), Some(&1), "{v:?}");
    assert_eq!(v.get("read_model_rows"), Some(&1), "{v:?}");
}

#[test]
fn a_seq_reused_or_an_event_never_accepted_is_a_duplicate() {
    let mut h = clean();
    h.ledger.push(LedgerRow { device_id: "till-1".into(), event_id: "x".into(), seq: 2, outcome: "applied".into() });
    let v = violations(&h);
    // one ledger row nobody accepted, and seq 2 holding two event ids
    assert_eq!(v.get("events_duplicated"), Some(&2), "{v:?}");
}

#[test]
fn a_command_applied_after_the_portal_was_told_failed_is_reported() {
    // Today's code: max_attempts failed it at 108, the bridge came back and applied it at 115.
    let mut h = clean();
    h.statuses = vec![status("queued", 101), status("delivered", 102), status("failed", 108)];
    h.applications[0].at_ms = 115;
    h.commands[0].final_log_states = vec!["failed".into()];
    let v = violations(&h);
    assert_eq!(v.get("commands_not_applied_after_final"), Some(&1), "{v:?}");
    // A later status that tells the portal it was applied after all corrects it.
    h.statuses.push(status("acked", 116));
    let v = violations(&h);
    assert_eq!(v.get("commands_not_applied_after_final"), None, "{v:?}");
}

#[test]
fn two_final_states_or_two_applications_are_reported() {
    let mut h = clean();
    h.commands[0].final_log_states.push("failed".into());
    h.applications.push(h.applications[0].clone());
    let v = violations(&h);
    assert_eq!(v.get("commands_one_final_state"), Some(&1), "{v:?}");
    assert_eq!(v.get("commands_applied_at_most_once"), Some(&1), "{v:?}");
}

#[test]
fn a_command_without_a_final_state_or_acked_without_running_is_reported() {
    let mut h = clean();
    h.applications.clear();
    let v = violations(&h);
    assert_eq!(v.get("commands_acked_were_applied"), Some(&1), "{v:?}");
    h.commands[0].final_log_states.clear();
    h.statuses.truncate(2);
    let v = violations(&h);
    assert_eq!(v.get("commands_one_final_state"), Some(&1), "{v:?}");
}

#[test]
fn a_command_rejected_at_intake_or_never_received_is_not_checked() {
    let mut h = clean();
    h.commands[0].rejected_code = Some("unknown_device".into());
    h.commands[0].final_log_states.clear();
    h.applications.clear();
    h.statuses = vec![status("rejected", 101)];
    assert!(violations(&h).is_empty());
    let mut h = clean();
    h.commands.clear();
    h.sent[0].confirmed = false;
    h.statuses.clear();
    h.applications.clear();
    assert!(violations(&h).is_empty());
}

#[test]
fn a_stale_event_that_a_later_one_supersedes_is_not_out_of_order() {
    // A resend of seq 1 arrived after seq 3 reopened the same order: in order, seq 3's facts
    // win too, so the broker may record seq 1 stale.
    let mut h = clean();
    let later = h.accepted[0].clone();
    h.accepted.push(AcceptedEvent { seq: 9, event_id: "e-9".into(), ..later });
    h.ledger.push(LedgerRow { device_id: "till-1".into(), event_id: "e-9".into(), seq: 9, outcome: "applied".into() });
    h.ledger[0].outcome = "stale".into();
    assert_eq!(violations(&h).get("events_out_of_order"), None);
}
