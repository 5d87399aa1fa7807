//! The broker's own view of a run, read from its in-process metrics recorder: what the bench
//! prints next to its figures to explain them (batch sizes, time per batch).

/// Sum over every label set of one sample name in the broker's Prometheus text.
pub fn metric(name: &str) -> f64 {
    let text = tillsync_broker::metrics::install().render();
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
    total: u64,
}

impl CpuTimes {
    /// `None` where `/proc/stat` cannot be read.
    pub fn now() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        parse_cpu_line(stat.lines().next()?)
    }

    /// Percent of all cores' time spent busy (neither idle nor waiting for I/O) since `before`.
    pub fn busy_pct_since(&self, before: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(before.total).max(1);
        self.busy.saturating_sub(before.busy) as f64 * 100.0 / total as f64
    }
}

/// `cpu  user nice system idle iowait irq softirq steal ...` (guest time is already in user).
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
    Some(CpuTimes { busy: total - v[3] - v[4], total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_share_leaves_out_idle_and_iowait() {
        let before = parse_cpu_line("cpu  100 0 50 800 50 0 0 0 0 0").unwrap();
        let after = parse_cpu_line("cpu  250 0 100 900 50 0 0 0 0 0").unwrap();
        // 200 busy ticks out of 300.
        assert!((after.busy_pct_since(&before) - 66.666).abs() < 0.01);
        assert!(parse_cpu_line("cpu0 1 2 3 4 5").is_none());
        assert!(parse_cpu_line("cpu  1 2").is_none());
    }
}
