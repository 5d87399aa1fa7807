//! The checks, as pure functions over [`Histories`]: events lost, duplicated or out of order
//! per device, read-model rows against what the accepted events imply, and the commands'
//! truth (one final state, applied at most once, never applied after the portal was told it
//! ended, acked only when applied).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::history::{AcceptedEvent, Histories, ModelRow};
use super::model::{expected_rows, supersedes};

/// How many examples a check keeps for the report.
const EXAMPLES: usize = 5;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckResult {
    pub check: &'static str,
    pub checked: u64,
    pub violations: u64,
    pub examples: Vec<String>,
}

impl CheckResult {
    fn new(check: &'static str) -> Self {
        CheckResult { check, checked: 0, violations: 0, examples: Vec::new() }
    }

    fn fail(&mut self, example: impl FnOnce() -> String) {
        self.violations += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(example());
        }
    }
}

/// Every check, in report order.
pub fn check_all(h: &Histories) -> Vec<CheckResult> {
    let accepted = unique_accepted(h);
    vec![
        events_lost(h, &accepted),
        events_duplicated(h, &accepted),
        events_out_of_order(h, &accepted),
        read_models(h, &accepted),
        commands_final(h),
        commands_applied_once(h),
        commands_applied_after_final(h),
        commands_acked_applied(h),
    ]
}

/// Accepted events keyed by (device, event_id); a repeated answer (200 for a retry) is kept
/// once. An event id answered with two seqs is reported by `events_duplicated`.
fn unique_accepted(h: &Histories) -> BTreeMap<(String, String), &AcceptedEvent> {
    let mut out = BTreeMap::new();
    for a in &h.accepted {
        out.entry((a.device_id.clone(), a.event_id.clone())).or_insert(a);
    }
    out
}

type Accepted<'a> = BTreeMap<(String, String), &'a AcceptedEvent>;

fn ledger_by_id(h: &Histories) -> BTreeMap<(String, String), &super::history::LedgerRow> {
    h.ledger.iter().map(|l| ((l.device_id.clone(), l.event_id.clone()), l)).collect()
}

/// Every accepted event has a ledger row.
fn events_lost(h: &Histories, accepted: &Accepted) -> CheckResult {
    let ledger = ledger_by_id(h);
    let mut r = CheckResult::new("events_lost");
    for ((device, id), a) in accepted {
        r.checked += 1;
        if !ledger.contains_key(&(device.clone(), id.clone())) {
            r.fail(|| format!("{device} seq {} ({id}) accepted, not in processed_events", a.seq));
        }
    }
    r
}

/// One seq is one event: no ledger row the bridges never accepted, no accepted event id under
/// two seqs, no seq recorded under two event ids, the ledger's seq equal to the accepted one.
fn events_duplicated(h: &Histories, accepted: &Accepted) -> CheckResult {
    let mut r = CheckResult::new("events_duplicated");
    let devices: BTreeSet<&str> = h.accepted.iter().map(|a| a.device_id.as_str()).collect();
    for a in &h.accepted {
        let first = accepted[&(a.device_id.clone(), a.event_id.clone())];
        if first.seq != a.seq {
            r.fail(|| format!("{} event {} answered with seq {} and {}", a.device_id, a.event_id, first.seq, a.seq));
        }
    }
    let mut ids_of_seq: BTreeMap<(&str, i64), BTreeSet<&str>> = BTreeMap::new();
    for a in accepted.values() {
        ids_of_seq.entry((&a.device_id, a.seq as i64)).or_default().insert(&a.event_id);
    }
    for l in h.ledger.iter().filter(|l| devices.contains(l.device_id.as_str())) {
        r.checked += 1;
        ids_of_seq.entry((&l.device_id, l.seq)).or_default().insert(&l.event_id);
        match accepted.get(&(l.device_id.clone(), l.event_id.clone())) {
            None => {
                r.fail(|| format!("{} seq {} ({}) in processed_events, never accepted", l.device_id, l.seq, l.event_id))
            }
            Some(a) if a.seq as i64 != l.seq => r.fail(|| {
                format!("{} event {} accepted as seq {}, recorded as {}", l.device_id, l.event_id, a.seq, l.seq)
            }),
            Some(_) => {}
        }
    }
    for ((device, seq), ids) in ids_of_seq {
        if ids.len() > 1 {
            r.fail(|| format!("{device} seq {seq} holds {} events: {ids:?}", ids.len()));
        }
    }
    r
}

/// An event the broker recorded `stale` (or anything but applied) although no later event of
/// its device writes every fact it carries: the arrival order showed through to the read
/// models. A stale event that a later one supersedes is what in-order delivery implies too
/// (resends and redeliveries do reorder a device's events).
fn events_out_of_order(h: &Histories, accepted: &Accepted) -> CheckResult {
    let mut r = CheckResult::new("events_out_of_order");
    let mut by_device: BTreeMap<&str, Vec<&AcceptedEvent>> = BTreeMap::new();
    for a in accepted.values() {
        by_device.entry(&a.device_id).or_default().push(a);
    }
    for l in &h.ledger {
        let Some(ev) = accepted.get(&(l.device_id.clone(), l.event_id.clone())) else { continue };
        r.checked += 1;
        let superseded = || {
            by_device[l.device_id.as_str()].iter().any(|later| later.seq > ev.seq && supersedes(&later.body, &ev.body))
        };
        let justified = l.outcome == "applied" || (l.outcome == "stale" && superseded());
        if !justified {
            r.fail(|| format!("{} seq {} recorded {:?}, not applied", l.device_id, l.seq, l.outcome));
        }
    }
    r
}

/// Each device's read-model rows equal the rows its accepted events imply.
fn read_models(h: &Histories, accepted: &Accepted) -> CheckResult {
    let mut r = CheckResult::new("read_model_rows");
    let mut by_device: BTreeMap<&str, Vec<&AcceptedEvent>> = BTreeMap::new();
    for a in accepted.values() {
        by_device.entry(&a.device_id).or_default().push(a);
    }
    let mut actual: BTreeMap<(&str, &str, &str), &ModelRow> = BTreeMap::new();
    for row in &h.rows {
        actual.insert((&row.device_id, row.table, &row.key), row);
    }
    let mut seen: BTreeSet<(String, &str, String)> = BTreeSet::new();
    for (device, events) in &by_device {
        for want in expected_rows(device, events) {
            r.checked += 1;
            match actual.get(&(want.device_id.as_str(), want.table, want.key.as_str())) {
                None => r.fail(|| format!("{device} {} {} missing (want {})", want.table, want.key, want.value)),
                Some(got) if got.value != want.value => {
                    r.fail(|| format!("{device} {} {}: got {}, want {}", want.table, want.key, got.value, want.value))
                }
                Some(_) => {}
            }
            seen.insert((want.device_id.clone(), want.table, want.key.clone()));
        }
    }
    for row in &h.rows {
        if by_device.contains_key(row.device_id.as_str())
            && !seen.contains(&(row.device_id.clone(), row.table, row.key.clone()))
        {
            r.checked += 1;
            r.fail(|| {
                format!("{} {} {} = {} implied by no accepted event", row.device_id, row.table, row.key, row.value)
            });
        }
    }
    r
}

/// The command copies the broker accepted (sent by the portal, recorded without a rejection).
/// A copy the portal could not confirm and Postgres never saw never reached the broker.
fn accepted_copies(h: &Histories) -> Vec<(String, String)> {
    let recorded: BTreeMap<(&str, &str), &super::history::CommandRecord> =
        h.commands.iter().map(|c| ((c.command_id.as_str(), c.device_id.as_str()), c)).collect();
    h.sent
        .iter()
        .filter(|s| match recorded.get(&(s.command_id.as_str(), s.device_id.as_str())) {
            Some(c) => c.rejected_code.is_none(),
            None => s.confirmed,
        })
        .map(|s| (s.command_id.clone(), s.device_id.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn statuses_of<'a>(h: &'a Histories, command: &str, device: &str) -> Vec<&'a super::history::StatusSeen> {
    let mut v: Vec<_> =
        h.statuses.iter().filter(|s| s.command_id == command && s.device_id.as_deref() == Some(device)).collect();
    v.sort_by_key(|s| s.at_ms);
    v
}

/// Each accepted copy ends in exactly one final state in `command_log`, and the portal was
/// told that one (and no other final state).
fn commands_final(h: &Histories) -> CheckResult {
    let mut r = CheckResult::new("commands_one_final_state");
    for (cmd, device) in accepted_copies(h) {
        r.checked += 1;
        let logged: Vec<&String> = h
            .commands
            .iter()
            .filter(|c| c.command_id == cmd && c.device_id == device)
            .flat_map(|c| &c.final_log_states)
            .collect();
        let told: BTreeSet<&str> =
            statuses_of(h, &cmd, &device).into_iter().filter(|s| s.is_final()).map(|s| s.state.as_str()).collect();
        if logged.len() != 1 {
            r.fail(|| format!("{cmd} at {device}: {} final states in command_log {logged:?}", logged.len()));
        } else if told.len() != 1 || !told.contains(logged[0].as_str()) {
            r.fail(|| format!("{cmd} at {device}: logged {}, portal told {told:?}", logged[0]));
        }
    }
    r
}

/// The handler ran at most once per copy, only for commands sent to that device.
fn commands_applied_once(h: &Histories) -> CheckResult {
    let mut r = CheckResult::new("commands_applied_at_most_once");
    let sent: BTreeSet<(&str, &str)> = h.sent.iter().map(|s| (s.command_id.as_str(), s.device_id.as_str())).collect();
    let mut runs: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for a in &h.applications {
        *runs.entry((&a.command_id, &a.device_id)).or_default() += 1;
    }
    for ((cmd, device), n) in runs {
        r.checked += 1;
        if !sent.contains(&(cmd, device)) {
            r.fail(|| format!("{cmd} applied at {device}, never sent there"));
        } else if n > 1 {
            r.fail(|| format!("{cmd} applied {n} times at {device}"));
        }
    }
    r
}

/// No application after the portal was told the copy ended without being applied, unless a
/// later status told it the truth.
fn commands_applied_after_final(h: &Histories) -> CheckResult {
    let mut r = CheckResult::new("commands_not_applied_after_final");
    for a in &h.applications {
        r.checked += 1;
        let statuses = statuses_of(h, &a.command_id, &a.device_id);
        let told_ended = statuses.iter().find(|s| s.is_final() && !s.reports_applied() && s.at_ms < a.at_ms);
        let Some(ended) = told_ended else { continue };
        let corrected = statuses.iter().any(|s| s.reports_applied() && s.at_ms >= a.at_ms);
        if !corrected {
            r.fail(|| {
                format!(
                    "{} at {}: portal told {} ({}) at {}, applied {} ms later",
                    a.command_id,
                    a.device_id,
                    ended.state,
                    ended.code.as_deref().unwrap_or("-"),
                    ended.at_ms,
                    a.at_ms - ended.at_ms
                )
            });
        }
    }
    r
}

/// A copy the portal was told is `acked` was applied by the handler.
fn commands_acked_applied(h: &Histories) -> CheckResult {
    let mut r = CheckResult::new("commands_acked_were_applied");
    let applied: BTreeSet<(&str, &str)> =
        h.applications.iter().map(|a| (a.command_id.as_str(), a.device_id.as_str())).collect();
    for (cmd, device) in accepted_copies(h) {
        if !statuses_of(h, &cmd, &device).iter().any(|s| s.state == "acked") {
            continue;
        }
        r.checked += 1;
        if !applied.contains(&(cmd.as_str(), device.as_str())) {
            r.fail(|| format!("{cmd} at {device}: acked, handler never ran"));
        }
    }
    r
}

#[cfg(test)]
#[path = "checker_tests.rs"]
mod tests;
