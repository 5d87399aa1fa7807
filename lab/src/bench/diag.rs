//! The broker's own view of a run, read from its in-process metrics recorder: what the bench
//! prints next to its figures to explain them (batch sizes, time per batch).

/// Sum over every label set of one sample name in the broker's Prometheus text.
pub fn metric(name: &str) -> f64 {
    let text = tillsync_broker::admin::metrics::install().render();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key.split('{').next()? == name).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Counts and sums of the batch histograms, to diff across one measured stretch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Batches {
    pub batches: f64,
    pub events: f64,
    /// Summed per message: from taking the batch off the stream to acking that message.
    pub apply_seconds: f64,
    pub applies: f64,
}

impl Batches {
    pub fn now() -> Batches {
        Batches {
            batches: metric("tillsync_batch_events_count"),
            events: metric("tillsync_batch_events_sum"),
            apply_seconds: metric("tillsync_apply_latency_seconds_sum"),
            applies: metric("tillsync_apply_latency_seconds_count"),
        }
    }

    /// Mean events per batch and mean apply latency (ms) since `before`.
    pub fn since(&self, before: &Batches) -> (f64, f64) {
        let b = (self.batches - before.batches).max(1.0);
        let n = (self.applies - before.applies).max(1.0);
        ((self.events - before.events) / b, (self.apply_seconds - before.apply_seconds) / n * 1e3)
    }
}

/// The machine's CPU time counters (`/proc/stat`, Linux only), to tell how busy all its cores
/// were over a measured stretch: a latency figure taken with the CPU full is a queueing figure.
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    busy: u64,
    /// Time the hypervisor ran something else while this machine wanted its CPU: neither our
    /// work nor idle, and on a shared host it comes and goes.
    steal: u64,
    total: u64,
}

impl CpuTimes {
    /// `None` where `/proc/stat` cannot be read.
    fn now() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        parse_cpu_line(stat.lines().next()?)
    }

    /// Percent of all cores' time spent busy (neither idle nor waiting for I/O nor stolen)
    /// since `before`.
    pub fn busy_pct_since(&self, before: &CpuTimes) -> f64 {
        self.pct_since(before, |c| c.busy)
    }

    /// Percent of all cores' time stolen by the hypervisor since `before`.
    pub fn steal_pct_since(&self, before: &CpuTimes) -> f64 {
        self.pct_since(before, |c| c.steal)
    }

    fn pct_since(&self, before: &CpuTimes, part: fn(&CpuTimes) -> u64) -> f64 {
        let total = self.total.saturating_sub(before.total).max(1);
        part(self).saturating_sub(part(before)) as f64 * 100.0 / total as f64
    }
}

/// `cpu  user nice system idle iowait irq softirq steal ...` (guest time is already in user;
/// kernels before 2.6.11 have no steal column).
fn parse_cpu_line(line: &str) -> Option<CpuTimes> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let steal = v.get(7).copied().unwrap_or(0);
    Some(CpuTimes { busy: total - v[3] - v[4] - steal, steal, total })
}

/// Where a measured stretch's CPU went: this process (the in-process broker, and in `bench
/// latency` the publisher and collector too), the private nats-server, and the rest of the
/// machine's busy time (Postgres, plus whatever else runs there). Linux only.
#[derive(Debug, Clone, Copy)]
pub struct CpuSplit {
    machine: CpuTimes,
    own: u64,
    nats: Option<(u32, u64)>,
}

/// Microseconds of CPU per event, by process group.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PerEvent {
    pub bench: f64,
    pub nats: Option<f64>,
    pub rest: f64,
}

/// `/proc` counts CPU time in USER_HZ ticks, which Linux fixes at 100 per second for user space.
pub const US_PER_TICK: f64 = 10_000.0;

impl CpuSplit {
    /// `nats_pid`: the private nats-server, if the bench started one. `None` without `/proc`.
    pub fn now(nats_pid: Option<u32>) -> Option<CpuSplit> {
        let machine = CpuTimes::now()?;
        let own = process_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        let nats = nats_pid.and_then(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, process_ticks(&stat)?))
        });
        Some(CpuSplit { machine, own, nats })
    }

    /// Percent of all cores' time spent busy since `before` (see [`CpuTimes::busy_pct_since`]).
    pub fn busy_pct_since(&self, before: &CpuSplit) -> f64 {
        self.machine.busy_pct_since(&before.machine)
    }

    /// Percent of all cores' time stolen by the hypervisor since `before`.
    pub fn steal_pct_since(&self, before: &CpuSplit) -> f64 {
        self.machine.steal_pct_since(&before.machine)
    }

    /// The CPU spent since `before`, divided over `events`.
    pub fn per_event_since(&self, before: &CpuSplit, events: f64) -> PerEvent {
        let us = |ticks: u64| ticks as f64 * US_PER_TICK / events.max(1.0);
        let own = self.own.saturating_sub(before.own);
        let nats = match (self.nats, before.nats) {
            (Some((pid, after)), Some((was, ticks))) if pid == was => Some(after.saturating_sub(ticks)),
            _ => None,
        };
        let busy = self.machine.busy.saturating_sub(before.machine.busy);
        let rest = busy.saturating_sub(own + nats.unwrap_or(0));
        PerEvent { bench: us(own), nats: nats.map(us), rest: us(rest) }
    }
}

impl PerEvent {
    /// Adds the split to a report as `cpu_us_per_event_{bench,nats,rest}`.
    pub fn report(&self, r: &mut super::report::Report) {
        r.number("cpu_us_per_event_bench", self.bench);
        if let Some(n) = self.nats {
            r.number("cpu_us_per_event_nats", n);
        }
        r.number("cpu_us_per_event_rest", self.rest);
    }
}

/// CPU time (utime + stime) process `pid` has used, in ticks of [`US_PER_TICK`]; `None` when it
/// is gone or `/proc` cannot be read.
pub fn ticks_of(pid: u32) -> Option<u64> {
    process_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime of `/proc/<pid>/stat`: the 12th and 13th fields after the `(comm)`, which may
/// itself hold spaces and parentheses.
fn process_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_share_leaves_out_idle_iowait_and_steal() {
        let before = parse_cpu_line("cpu  100 0 50 800 50 0 0 0 0 0").unwrap();
        let after = parse_cpu_line("cpu  250 0 100 900 50 0 0 100 0 0").unwrap();
        // 200 busy ticks and 100 stolen out of 400.
        assert!((after.busy_pct_since(&before) - 50.0).abs() < 0.01);
        assert!((after.steal_pct_since(&before) - 25.0).abs() < 0.01);
        assert!(parse_cpu_line("cpu0 1 2 3 4 5").is_none());
        assert!(parse_cpu_line("cpu  1 2").is_none());
    }

    #[test]
    fn process_ticks_survive_odd_names_and_the_rest_is_what_is_left() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 700 300 0 0 20 0 1 0 5 0 0";
        assert_eq!(process_ticks(stat), Some(1_000));
        assert_eq!(process_ticks("garbage"), None);
        let at =
            |busy, own, nats| CpuSplit { machine: CpuTimes { busy, steal: 0, total: 0 }, own, nats: Some((7, nats)) };
        let split = at(1_100, 500, 300).per_event_since(&at(100, 100, 100), 100.0);
        // 1,000 busy ticks: 400 ours, 200 nats', 400 the rest; a tick is 10 ms, over 100 events.
        assert_eq!(split, PerEvent { bench: 40_000.0, nats: Some(20_000.0), rest: 40_000.0 });
        let restarted = CpuSplit { nats: Some((8, 0)), ..at(1_100, 500, 0) };
        assert_eq!(restarted.per_event_since(&at(100, 100, 100), 100.0).nats, None);
    }
}
