//! The run's outcome: a table (per check: checked, violations, and examples) plus what the
//! run did, or with `--json` one object.

use serde::Serialize;

use super::checker::CheckResult;
use super::nemesis::Step;
use tillsync_ops::output::table;

#[derive(Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub seconds: u64,
    pub devices: usize,
    pub brokers: usize,
    /// NATS authorization was on: nats-server with the accounts and auth callout of `tillsync
    /// auth init`, brokers answering the callout, every bridge activated with a one-time code,
    /// and a client without credentials refused.
    pub authorization: bool,
    pub faults: Vec<&'static str>,
    pub schedule: Vec<Step>,
    pub observed: Observed,
    pub checks: Vec<CheckResult>,
    pub violations: u64,
    pub run_dir: Option<String>,
}

/// What happened during the run (not checks: context for reading them).
#[derive(Debug, Default, Serialize)]
pub struct Observed {
    pub faults_injected: u64,
    pub events_deleted_from_stream: u64,
    pub process_restarts_by_supervisor: u32,
    pub events_accepted: usize,
    pub events_refused: u64,
    pub commands_sent: usize,
    pub statuses_read: usize,
    pub handler_applications: usize,
    pub quiesced: bool,
    pub quiesce_s: f64,
}

pub fn human(r: &Report) -> String {
    let o = &r.observed;
    let mut out = format!(
        "chaos run: seed {}, {} s, {} devices, {} broker(s), faults {}\n\
         NATS authorization {}\n\
         {} faults injected ({} events deleted from TILLSYNC_EVENTS), {} supervisor restarts\n\
         {} events accepted ({} refused), {} commands sent, {} statuses read, {} handler runs\n\
         quiesce: {} after {:.1} s\n\n",
        r.seed,
        r.seconds,
        r.devices,
        r.brokers,
        if r.faults.is_empty() { "none".to_string() } else { r.faults.join(",") },
        if r.authorization { "on: accounts, auth callout, activated bridges" } else { "OFF" },
        o.faults_injected,
        o.events_deleted_from_stream,
        o.process_restarts_by_supervisor,
        o.events_accepted,
        o.events_refused,
        o.commands_sent,
        o.statuses_read,
        o.handler_applications,
        if o.quiesced { "reached" } else { "NOT reached (bound passed)" },
        o.quiesce_s,
    );
    let rows: Vec<Vec<String>> =
        r.checks.iter().map(|c| vec![c.check.to_string(), c.checked.to_string(), c.violations.to_string()]).collect();
    out.push_str(&table(&["CHECK", "CHECKED", "VIOLATIONS"], &rows));
    for c in r.checks.iter().filter(|c| !c.examples.is_empty()) {
        out.push_str(&format!("\n{} (first {}):\n", c.check, c.examples.len()));
        for e in &c.examples {
            out.push_str(&format!("  {e}\n"));
        }
    }
    out.push_str(&format!("\n{} violation(s)\n", r.violations));
    if let Some(d) = &r.run_dir {
        out.push_str(&format!("run directory (logs of every process, histories): {d}\n"));
    }
    out
}
