//! `bench fleet`: what N connected bridges cost the NATS cluster with today's downlink, against
//! the floor of the same devices holding only plain subscriptions (issue 27), and how fast
//! today's downlink reaches every device, also after a node is lost.
//!
//! Each phase gets a private 3-node cluster of its own (so neither inherits the other's
//! consumers or heap), a fresh database and an in-process broker (R3 streams). The devices
//! ([`super::fleet_devices`]) connect with the bridge's connect code and beat every 30 s as the
//! bridge does; "today" runs the bridge's own command and configuration downlink, "floor"
//! subscribes to the same subjects. After setup (today: until every device's catch-up request
//! was answered) and a settle period, the three nats-servers' CPU time (`/proc/<pid>/stat`) is
//! taken over `--idle-s`, and their RSS (`VmRSS`) and the consumer counts at its end. Then,
//! today only ([`super::fleet_active`]): a command to every device, timed to `acked`, and a
//! configuration change set for every store, timed to each device holding it; then one node
//! killed, both again, and the node started again on its store 2 s later.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use clap::Args;
use serde_json::{json, Value};
use tillsync_broker::Broker;
use tillsync_schemas::streams as names;

use super::diag::{ticks_of, US_PER_TICK};
use super::env::Env;
use super::fleet_active::{self as active, RoundTrips};
use super::fleet_devices::{self as devices, Downlink};
use super::report::{round3, Report};
use super::{median, scale::NODES};
use tillsync_ops::global::Global;

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
    /// Longest wait for setup, and for every command of a round to be acked, seconds.
    #[arg(long, default_value_t = 600)]
    pub setup_timeout_s: u64,
    /// Measure the idle cost only: no commands, no node killed.
    #[arg(long)]
    pub idle_only: bool,
}

/// How long the restarted node stays down.
const RESTART_AFTER: Duration = Duration::from_secs(2);

/// One phase's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    /// Consumers on the commands and configuration streams (the devices' streams).
    consumers: usize,
    /// Every consumer of the account (the broker's own included).
    server_consumers: usize,
    /// Opening the devices' connections (not counted in `setup_s`).
    connect_s: f64,
    /// From the devices' start until the server holds their consumers (the floor: until their
    /// subscriptions are flushed).
    setup_s: f64,
    /// One core = 100.
    cpu_pct: f64,
    rss_mib: f64,
    /// A command to every device (today only).
    round_trips: Option<RoundTrips>,
    /// A configuration change set for every store, publish to applied (today only).
    config_applied: Option<RoundTrips>,
    /// The two while one node restarts (today only).
    restart_round_trips: Option<RoundTrips>,
    restart_config_applied: Option<RoundTrips>,
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
    let mut env = Env::start_cluster(global, NODES).await?;
    let client = env.nats().await?;
    let js = super::data::js(client.clone());
    let url = super::ingest::fresh(&mut env).await?;
    super::commands::add_devices(&url, args.devices).await?;
    let broker = Broker::start(env.broker_config(&url)).await.context("broker start")?;
    let dir = tempfile::TempDir::new()?;
    let connecting = Instant::now();
    let connections = devices::connect(&env.nats_urls, args.devices, args.devices_per_connection, dir.path()).await;
    let outcome = match connections {
        Ok(connections) => {
            let connect_s = connecting.elapsed().as_secs_f64();
            let started = Instant::now();
            match devices::start(connections, downlink, dir.path()).await {
                Ok(fleet) => {
                    let f = measure(args, &mut env, &client, &js, &fleet, downlink, started).await;
                    fleet.stop().await;
                    f.map(|f| Figures { connect_s, ..f })
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    super::stop_broker(broker).await;
    env.cleanup().await;
    outcome
}

async fn measure(
    args: &FleetArgs,
    env: &mut Env,
    client: &async_nats::Client,
    js: &jetstream::Context,
    fleet: &devices::Fleet,
    downlink: Downlink,
    started: Instant,
) -> anyhow::Result<Figures> {
    if downlink == Downlink::Today {
        wait_answered(fleet, args.devices, Duration::from_secs(args.setup_timeout_s)).await?;
    }
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
    let consumers = device_stream_consumers(js).await?;
    let mut f = Figures {
        consumers,
        server_consumers,
        connect_s: 0.0,
        setup_s,
        cpu_pct,
        rss_mib,
        round_trips: None,
        config_applied: None,
        restart_round_trips: None,
        restart_config_applied: None,
    };
    if downlink == Downlink::Today && !args.idle_only {
        let timeout = Duration::from_secs(args.setup_timeout_s);
        let rt = active::round_trips(client, js, args.devices, timeout).await.context("a command to every device")?;
        eprintln!("  a command to every device: {}", acked(&rt));
        f.round_trips = Some(rt);
        // A fresh database: the first change set is every store's version 1.
        let cs = super::config::first_menu(2);
        let c = active::config_round(client, fleet, cs, 1, timeout).await.context("a configuration for every store")?;
        eprintln!("  a configuration for every store: {}", applied(&c));
        f.config_applied = Some(c);
        // The broker and this client are on node 0; the devices are spread over all three.
        // The last node is killed, the commands and version 2 go out while it is down, and it
        // comes back on its store after RESTART_AFTER: a node restart with both in flight.
        env.kill_node(NODES - 1)?;
        let restart = async {
            tokio::time::sleep(RESTART_AFTER).await;
            env.start_node(NODES - 1)
        };
        let cs = super::config::price_change(1, 2);
        let (rt, c, restarted) = tokio::join!(
            active::round_trips(client, js, args.devices, timeout),
            active::config_round(client, fleet, cs, 2, timeout),
            restart
        );
        restarted?;
        let rt = rt.context("a command to every device while a node restarted")?;
        let c = c.context("a configuration for every store while a node restarted")?;
        eprintln!("  while a node restarted: commands {}; configuration {}", acked(&rt), applied(&c));
        (f.restart_round_trips, f.restart_config_applied) = (Some(rt), Some(c));
    }
    Ok(f)
}

fn acked(r: &RoundTrips) -> String {
    format!("p50 {:.1} ms, p99 {:.1} ms, all acked in {:.2} s", r.p50_ms, r.p99_ms, r.all_s)
}

fn applied(r: &RoundTrips) -> String {
    format!("p50 {:.1} ms, p99 {:.1} ms, all applied in {:.2} s", r.p50_ms, r.p99_ms, r.all_s)
}

/// Waits until every device's catch-up request was answered: its subscriptions are in place
/// and the broker has handed it what it had.
async fn wait_answered(fleet: &devices::Fleet, devices: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fleet.metrics.render();
        let answered = text
            .lines()
            .find(|l| l.starts_with("tillsync_edge_command_catchups_total{result=\"answered\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0) as usize;
        if answered >= devices {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{answered} of {devices} devices' catch-up answered after {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Consumers on the streams a device reads (commands and configuration deltas).
async fn device_stream_consumers(js: &jetstream::Context) -> anyhow::Result<usize> {
    let mut n = 0;
    for name in [names::COMMANDS, names::CONFIG] {
        n += js.get_stream(name).await?.info().await?.state.consumer_count;
    }
    Ok(n)
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
        round_trips: median_round_trips(runs.iter().filter_map(|f| f.round_trips)),
        config_applied: median_round_trips(runs.iter().filter_map(|f| f.config_applied)),
        restart_round_trips: median_round_trips(runs.iter().filter_map(|f| f.restart_round_trips)),
        restart_config_applied: median_round_trips(runs.iter().filter_map(|f| f.restart_config_applied)),
    }
}

fn median_round_trips(runs: impl Iterator<Item = RoundTrips>) -> Option<RoundTrips> {
    let runs: Vec<RoundTrips> = runs.collect();
    if runs.is_empty() {
        return None;
    }
    let m = |f: fn(&RoundTrips) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    Some(RoundTrips { p50_ms: m(|r| r.p50_ms), p99_ms: m(|r| r.p99_ms), all_s: m(|r| r.all_s) })
}

/// `all` names the last device's moment: `all_acked_s` for commands, `all_applied_s` for
/// configuration.
fn round_trips_json(r: Option<RoundTrips>, all: &str) -> Value {
    r.map_or(Value::Null, |r| json!({ "p50_ms": round3(r.p50_ms), "p99_ms": round3(r.p99_ms), all: round3(r.all_s) }))
}

/// The node restart: both rounds, and when the last device held its command and its
/// configuration (each round starts at the kill).
fn restart_json(f: &Figures) -> Value {
    match (f.restart_round_trips, f.restart_config_applied) {
        (Some(rt), Some(c)) => json!({
            "command_round_trip": round_trips_json(Some(rt), "all_acked_s"),
            "config_publish_to_applied": round_trips_json(Some(c), "all_applied_s"),
            "all_caught_up_s": round3(rt.all_s.max(c.all_s)),
        }),
        _ => Value::Null,
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
            "command_round_trip": round_trips_json(f.round_trips, "all_acked_s"),
            "config_publish_to_applied": round_trips_json(f.config_applied, "all_applied_s"),
            "after_node_restart": restart_json(f),
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
            .param("idle_only", a.idle_only)
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
        let t = &self.today;
        let rounds = [
            ("a command to every device", t.round_trips.map(|r| acked(&r))),
            ("a configuration for every store", t.config_applied.map(|r| applied(&r))),
            ("while a node restarted, commands", t.restart_round_trips.map(|r| acked(&r))),
            ("while a node restarted, configuration", t.restart_config_applied.map(|r| applied(&r))),
        ];
        for (what, r) in rounds {
            if let Some(r) = r {
                out.push_str(&format!("  {what}: {r}\n"));
            }
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
