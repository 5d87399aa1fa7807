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
