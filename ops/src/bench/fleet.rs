//! `bench fleet`: what N idle bridges cost the NATS cluster with today's downlink, against the
//! floor of the same devices holding only plain subscriptions (issue 27).
//!
//! Each phase gets a private 3-node cluster of its own (so neither inherits the other's
//! consumers or heap) with the streams created as the broker creates them (R3); no broker runs.
//! The devices ([`super::fleet_devices`]) connect with the bridge's connect code and beat every
//! 30 s as the bridge does; "today" runs the bridge's own command consumer and configuration
//! sync, "floor" subscribes to the same subjects. After setup (today: until the server holds
//! every device's two consumers) and a settle period, the three nats-servers' CPU time
//! (`/proc/<pid>/stat`) is taken over `--idle-s`, and their RSS (`VmRSS`) and the account's
//! consumer count at its end.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use clap::Args;
use serde_json::{json, Value};

use super::diag::{ticks_of, US_PER_TICK};
use super::env::Env;
use super::fleet_devices::{self as devices, Downlink};
use super::report::{round3, Report};
use super::{median, scale::NODES};
use crate::global::Global;

#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// Simulated devices (bridges).
    #[arg(long, default_value_t = 250)]
    pub devices: usize,
    /// Seconds each phase is measured for, once set up and settled.
    #[arg(long, default_value_t = 30)]
    pub idle_s: u64,
    /// Seconds between the end of setup and the start of the measurement.
    #[arg(long, default_value_t = 5)]
    pub settle_s: u64,
    /// Devices sharing one NATS connection (1: one connection per device, as real bridges).
    #[arg(long, default_value_t = 1)]
    pub devices_per_connection: usize,
    /// Rounds of (floor, today); the medians are reported.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Longest wait for today's consumers to exist, seconds.
    #[arg(long, default_value_t = 600)]
    pub setup_timeout_s: u64,
}

/// One phase's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    /// The devices' consumers: the server's, less those the streams had before the devices.
    consumers: usize,
    server_consumers: usize,
    /// Opening the devices' connections (not counted in `setup_s`).
    connect_s: f64,
    /// From the devices' start until the server holds their consumers (the floor: until their
    /// subscriptions are flushed).
    setup_s: f64,
    /// One core = 100.
    cpu_pct: f64,
    rss_mib: f64,
}

pub async fn run(args: FleetArgs, global: &Global) -> anyhow::Result<Fleet> {
    if args.devices == 0 || args.idle_s == 0 || args.runs == 0 || args.devices_per_connection == 0 {
        bail!("--devices, --idle-s, --runs and --devices-per-connection must be positive");
    }
    let (mut floor, mut today) = (Vec::new(), Vec::new());
    for round in 1..=args.runs {
        for (downlink, runs) in [(Downlink::Floor, &mut floor), (Downlink::Today, &mut today)] {
            let f = phase(&args, global, downlink).await.with_context(|| format!("phase {}", downlink.name()))?;
            eprintln!(
                "round {round}: {}: {} consumers, connected in {:.1} s, set up in {:.1} s, nats {:.2} % of a core, {:.1} MiB",
                downlink.name(),
                f.consumers,
                f.connect_s,
                f.setup_s,
                f.cpu_pct,
                f.rss_mib
            );
            runs.push(f);
        }
    }
    Ok(Fleet { args, floor: medians(&floor), today: medians(&today) })
}

/// One phase on a fresh cluster: devices started, set up, settled, measured, stopped.
async fn phase(args: &FleetArgs, global: &Global, downlink: Downlink) -> anyhow::Result<Figures> {
    // Env's cluster kills its nats-servers and removes their stores when dropped, also when
    // this future is dropped on Ctrl-C.
    let env = Env::start_cluster(global, NODES).await?;
    let js = jetstream::new(env.nats().await?);
    tillsync_broker::streams::ensure(&js, &env.broker_config("postgres://unused/unused")).await?;
    // The streams come with consumers of their own (the broker's); the devices' are counted
    // on top of them.
    let base = consumer_count(&js).await?;
    let dir = tempfile::TempDir::new()?;
    let connecting = Instant::now();
    let connections = devices::connect(&env.nats_urls, args.devices, args.devices_per_connection, dir.path()).await?;
    let connect_s = connecting.elapsed().as_secs_f64();
    let started = Instant::now();
    let fleet = devices::start(connections, downlink, dir.path()).await?;
    let want = match downlink {
        Downlink::Today => 2 * args.devices,
        Downlink::Floor => 0,
    };
    let outcome = measure(args, &env, &js, base, want, started).await.map(|f| Figures { connect_s, ..f });
    fleet.stop().await;
    env.cleanup().await;
    outcome
}

async fn measure(
    args: &FleetArgs,
    env: &Env,
    js: &jetstream::Context,
    base: usize,
    want: usize,
    started: Instant,
) -> anyhow::Result<Figures> {
    wait_consumers(js, base + want, Duration::from_secs(args.setup_timeout_s)).await?;
    let setup_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    let pids = env.nats_pids();
    let before = cpu_ticks(&pids)?;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_s)).await;
    let ticks = cpu_ticks(&pids)? - before;
    let seconds = from.elapsed().as_secs_f64();
    let cpu_pct = ticks as f64 * US_PER_TICK / (seconds * 1e6) * 100.0;
    let rss_mib = pids.iter().map(|p| rss_kib(*p)).sum::<anyhow::Result<u64>>()? as f64 / 1024.0;
    let server_consumers = consumer_count(js).await?;
    let consumers = server_consumers.saturating_sub(base);
    Ok(Figures { consumers, server_consumers, connect_s: 0.0, setup_s, cpu_pct, rss_mib })
}

/// Waits until the account holds exactly `want` consumers.
async fn wait_consumers(js: &jetstream::Context, want: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = usize::MAX;
    loop {
        let n = consumer_count(js).await?;
        if n == want {
            return Ok(());
        }
        if n != last {
            eprintln!("  {n} consumers on the server, waiting for {want}");
            last = n;
        }
        if Instant::now() > deadline {
            bail!("{n} consumers after {} s, want {want}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The account's consumer count as JetStream reports it.
async fn consumer_count(js: &jetstream::Context) -> anyhow::Result<usize> {
    Ok(js.query_account().await.map_err(|e| anyhow::anyhow!("JetStream account info: {e}"))?.consumers)
}

fn cpu_ticks(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|p| ticks_of(*p).with_context(|| format!("cannot read /proc/{p}/stat"))).sum()
}

/// `VmRSS` of `/proc/<pid>/status`, KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_rss_kib(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn medians(runs: &[Figures]) -> Figures {
    let m = |f: fn(&Figures) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    Figures {
        consumers: m(|f| f.consumers as f64) as usize,
        server_consumers: m(|f| f.server_consumers as f64) as usize,
        connect_s: m(|f| f.connect_s),
        setup_s: m(|f| f.setup_s),
        cpu_pct: m(|f| f.cpu_pct),
        rss_mib: m(|f| f.rss_mib),
    }
}

/// The result: both phases and their ratios.
pub struct Fleet {
    args: FleetArgs,
    floor: Figures,
    today: Figures,
}

impl Fleet {
    fn phase_json(&self, f: &Figures) -> Value {
        let n = self.args.devices as f64;
        json!({
            "devices": self.args.devices,
            "consumers": f.consumers,
            "server_consumers": f.server_consumers,
            "connect_s": round3(f.connect_s),
            "setup_s": round3(f.setup_s),
            "nats_cpu_pct": round3(f.cpu_pct),
            // cpu_pct / 100 cores = s/s; per device-second in microseconds.
            "cpu_us_per_device_second": round3(f.cpu_pct / 100.0 * 1e6 / n),
            "nats_rss_mib": round3(f.rss_mib),
            "rss_kib_per_device": round3(f.rss_mib * 1024.0 / n),
        })
    }

    /// None when the floor measured nothing (a 10 ms tick is the resolution of `/proc`).
    fn ratio(today: f64, floor: f64) -> Value {
        if floor > 0.0 {
            json!(round3(today / floor))
        } else {
            Value::Null
        }
    }

    pub fn report(&self) -> Report {
        let a = &self.args;
        let mut r = Report::new("fleet");
        r.param("devices", a.devices)
            .param("idle_s", a.idle_s)
            .param("settle_s", a.settle_s)
            .param("devices_per_connection", a.devices_per_connection)
            .param("runs", a.runs)
            .param("nats_nodes", NODES)
            .result("today", self.phase_json(&self.today))
            .result("floor", self.phase_json(&self.floor))
            .result("cpu_ratio_to_floor", Self::ratio(self.today.cpu_pct, self.floor.cpu_pct))
            .result("rss_ratio_to_floor", Self::ratio(self.today.rss_mib, self.floor.rss_mib))
            .note("CPU and RSS are the sum over the three nats-servers; the bench itself shares the machine");
        r
    }

    pub fn table(&self) -> String {
        let a = &self.args;
        let mut out = format!(
            "bench fleet  (devices={} idle_s={} settle_s={} devices_per_connection={} runs={} nats_nodes={NODES})\n",
            a.devices, a.idle_s, a.settle_s, a.devices_per_connection, a.runs
        );
        let rows = [("today", self.phase_json(&self.today)), ("floor", self.phase_json(&self.floor))];
        let keys = [
            "consumers",
            "server_consumers",
            "setup_s",
            "nats_cpu_pct",
            "cpu_us_per_device_second",
            "nats_rss_mib",
            "rss_kib_per_device",
        ];
        out.push_str(&format!("  {:<26}{:>12}{:>12}\n", "", "today", "floor"));
        for k in keys {
            out.push_str(&format!("  {k:<26}{:>12}{:>12}\n", rows[0].1[k].to_string(), rows[1].1[k].to_string()));
        }
        let report = self.report().json();
        for k in ["cpu_ratio_to_floor", "rss_ratio_to_floor"] {
            out.push_str(&format!("  {k:<26}{:>12}\n", report[k].to_string()));
        }
        out
    }

    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.report().json());
        } else {
            print!("{}", self.table());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        assert_eq!(parse_rss_kib("Name:\tnats-server\nVmRSS:\t  81234 kB\nVmData: 1 kB\n"), Some(81234));
        assert_eq!(parse_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn ratio_is_null_without_a_floor() {
        assert_eq!(Fleet::ratio(2.0, 0.0), Value::Null);
        assert_eq!(Fleet::ratio(3.0, 1.5), json!(2.0));
    }
}
