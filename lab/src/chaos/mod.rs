//! `tillsync chaos`: a Jepsen-style run against real processes. It starts a private
//! nats-server, a private Postgres cluster, the broker(s) and one real edge bridge per device,
//! feeds the bridges from a POS simulator and sends commands as the portal, while a nemesis
//! drawn from the seed kills, pauses and restarts every process, takes a bridge offline and
//! deletes acknowledged events from the stream. Then it heals, waits for quiescence (bounded),
//! and checks what was lost, doubled or reordered (see docs/chaos.md). NATS authorization is
//! on, as in production: accounts, the broker's auth callout, activated bridges.
//!
//! Exit codes: 0 no violations; 1 violations; 2 usage error; 4 the run itself could not be
//! carried out (a process did not start, a port was taken, ...).

mod auth;
mod checker;
mod collect;
mod fleet;
mod handler;
mod history;
mod model;
mod nemesis;
mod portal;
mod pos;
mod postgres;
pub mod procs;
mod report;
mod run;

use std::process::ExitCode;

use clap::Args;
use tillsync_ops::global::Global;

use nemesis::Fault;

/// Exit code when the run could not be carried out (distinct from a violation).
const RUN_FAILED: u8 = 4;

/// The tenant every chaos device belongs to (each device has its own store).
const TENANT: &str = "chaos";

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// How long traffic and faults run, seconds (then heal, quiesce, check).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..=86_400))]
    seconds: u64,
    /// Seed of the fault schedule, the POS histories and the commands.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Edge bridges (one device each, each in its own store).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    devices: u16,
    /// Broker processes (more than one needs the broker's scale-out).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    brokers: u16,
    /// Fault kinds, comma separated: all, none, kill, pause, or kill-broker, kill-bridge,
    /// kill-nats, kill-postgres, pause-broker, pause-bridge, pause-nats, pause-postgres,
    /// bridge-offline, delete-events.
    #[arg(long, default_value = "all", value_parser = parse_faults)]
    faults: FaultList,
    /// POS events per second per device.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Portal commands per second (all devices together).
    #[arg(long, default_value_t = 1.0)]
    command_rate: f64,
    /// Longest wait for quiescence after healing, seconds.
    #[arg(long, default_value_t = 60)]
    quiesce_s: u64,
    /// Keep the run directory even when the run passes.
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Clone)]
struct FaultList(Vec<Fault>);

fn parse_faults(s: &str) -> Result<FaultList, String> {
    Fault::parse_list(s).map(FaultList)
}

/// One device of the run: its address and its bridge's HTTP address.
#[derive(Debug, Clone)]
pub struct Device {
    pub tenant_id: String,
    pub store_id: String,
    pub device_id: String,
    pub http: String,
}

pub async fn run(args: ChaosArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new().prefix("tillsync-chaos-").tempdir()?;
    let outcome = run::execute(&args, dir.path()).await;
    let mut report = match outcome {
        Ok(r) => r,
        Err(e) => {
            let path = dir.keep();
            eprintln!("error: the chaos run could not be carried out: {e:#}");
            eprintln!("run directory (logs of every process): {}", path.display());
            return Ok(ExitCode::from(RUN_FAILED));
        }
    };
    if report.violations > 0 || args.keep {
        report.run_dir = Some(dir.keep().display().to_string());
    }
    tillsync_ops::output::emit(global.json, &report, report::human)?;
    Ok(if report.violations > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
