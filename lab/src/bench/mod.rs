//! `tillsync bench <scenario>`: benchmarks against real NATS and Postgres.
//!
//! Each scenario starts what it needs (a private nats-server unless `NATS_URL` is given, fresh
//! databases on the configured Postgres), runs the broker in this process (`scale`: as
//! processes, on a private cluster), measures, cleans up and prints a table, or one JSON
//! object with `--json`. Progress goes to stderr. The figures
//! and how to reproduce them are in docs/performance.md.

mod actors;
mod baseline;
mod brokers;
mod commands;
mod config;
mod cpu;
mod data;
mod diag;
mod env;
mod fleet;
mod fleet_active;
mod fleet_devices;
mod fsync;
mod ingest;
mod latency;
mod naive;
mod owners;
mod replay;
mod report;
mod scale;

use std::process::ExitCode;

use clap::{Args, Subcommand};
use tillsync_ops::global::Global;

use env::Env;
use report::Report;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Without --nats-url or NATS_URL the bench starts its own nats-server.
    #[command(flatten)]
    pub nats: tillsync_ops::global::NatsArgs,
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Drain a preloaded stream: broker vs a minimal pipeline vs one transaction per event.
    Ingest(ingest::IngestArgs),
    /// Open-loop publishing at a fixed rate: publish-to-commit latency percentiles.
    Latency(latency::LatencyArgs),
    /// Command round trips (intake -> device applies -> acked) through simulated bridges.
    Commands(commands::CommandsArgs),
    /// Configuration publishes down to simulated bridges: publish-to-applied and bytes per device.
    Config(config::ConfigArgs),
    /// Rebuild a fresh database from the stream through the ingest code path.
    Replay(replay::ReplayArgs),
    /// Memory and activation rate of resident device actors.
    Actors(actors::ActorsArgs),
    /// JetStream publish rate with nats-server's default fsync and with `sync_interval: always`.
    Fsync(fsync::FsyncArgs),
    /// One and two broker processes on a 3-node NATS cluster: drain rate, CPU per event, and
    /// the takeover after a broker is killed.
    Scale(scale::ScaleArgs),
    /// N idle bridges on a 3-node NATS cluster: the servers' CPU, RSS and consumers with the
    /// bridge's downlink as it is, against plain subscriptions (the floor).
    Fleet(fleet::FleetArgs),
}

/// A timed drain.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub messages: usize,
    pub seconds: f64,
}

impl Measured {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.seconds.max(1e-9)
    }
}

/// Aborts a spawned task when dropped, so an early return leaves nothing running.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Stops an in-process broker, giving up (with a warning) if it does not stop in 30 s, so a
/// benchmark always reports.
pub async fn stop_broker(broker: tillsync_broker::Broker) {
    if tokio::time::timeout(std::time::Duration::from_secs(30), broker.shutdown()).await.is_err() {
        tracing::warn!("The broker did not shut down within 30 s; leaving it.");
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub async fn run(args: BenchArgs, global: &Global) -> anyhow::Result<ExitCode> {
    if let Scenario::Fsync(a) = args.scenario {
        // Starts servers of its own with set fsync policies and needs no Postgres.
        fsync::run(a).await?.print(global.json);
        return Ok(ExitCode::SUCCESS);
    }
    if let Scenario::Fleet(a) = args.scenario {
        // A fresh private cluster per phase, killed when its phase ends or this future is
        // dropped on Ctrl-C or SIGTERM.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let fleet = tokio::select! {
            r = fleet::run(a, global) => r?,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            _ = term.recv() => anyhow::bail!("terminated"),
        };
        fleet.print(global.json);
        return Ok(ExitCode::SUCCESS);
    }
    let mut env = match args.scenario {
        Scenario::Scale(_) => Env::start_cluster(global, scale::NODES).await?,
        _ => Env::start(global, &args.nats).await?,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // On Ctrl-C or SIGTERM the databases are still dropped and the private nats-server killed.
    let outcome = tokio::select! {
        r = scenario(args.scenario, &mut env) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    env.cleanup().await;
    let report = outcome?;
    report.print(global.json);
    Ok(ExitCode::SUCCESS)
}

async fn scenario(s: Scenario, env: &mut Env) -> anyhow::Result<Report> {
    match s {
        Scenario::Ingest(a) => ingest::run(a, env).await,
        Scenario::Latency(a) => latency::run(a, env).await,
        Scenario::Commands(a) => commands::run(a, env).await,
        Scenario::Config(a) => config::run(a, env).await,
        Scenario::Replay(a) => replay::run(a, env).await,
        Scenario::Actors(a) => actors::run(a, env).await,
        Scenario::Scale(a) => scale::run(a, env).await,
        Scenario::Fsync(_) | Scenario::Fleet(_) => {
            unreachable!("run() handles fsync and fleet before starting an environment")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
