//! CPU time of groups of processes over a measured stretch (`bench scale`: the broker
//! processes, the nats-servers, the Postgres backends of the bench's database). Each process is
//! read from `/proc/<pid>/stat` every 100 ms, so one that exits meanwhile (a killed broker, a
//! backend whose connection closed) keeps what it had used by its last sample. Linux only: the
//! figures are 0 where `/proc` cannot be read.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::diag::{ticks_of, US_PER_TICK};

/// Processes of one group, and whether they started with the stretch (all their CPU counts),
/// or ran before it (only what they use from the first sample on counts).
pub struct Group {
    pub name: &'static str,
    pub pids: Vec<u32>,
    pub started_now: bool,
}

/// Samples until stopped; then says how much CPU each group used.
pub struct CpuWatch {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Sampler>,
}

/// Group of the Postgres backends serving the watched database.
pub const POSTGRES: &str = "postgres";

impl CpuWatch {
    /// `backends`: a one-connection pool on the database whose backends count as [`POSTGRES`]
    /// (backends already there at the start count from then on, later ones entirely; the
    /// pool's own backend is left out).
    pub fn start(groups: Vec<Group>, backends: Option<PgPool>) -> CpuWatch {
        let stop = CancellationToken::new();
        let mut s = Sampler { groups, backends, seen: HashMap::new(), first: true };
        let token = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                s.sample().await;
                s.first = false;
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            s.sample().await;
            s
        });
        CpuWatch { stop, task }
    }

    /// Microseconds of CPU each group used, divided over `events`.
    pub async fn stop(mut self, events: f64) -> BTreeMap<&'static str, f64> {
        self.stop.cancel();
        let Ok(s) = (&mut self.task).await else { return BTreeMap::new() };
        let mut out: BTreeMap<&'static str, f64> = s.groups.iter().map(|g| (g.name, 0.0)).collect();
        if s.backends.is_some() {
            out.insert(POSTGRES, 0.0);
        }
        for seen in s.seen.values() {
            *out.entry(seen.group).or_default() += (seen.last - seen.base) as f64 * US_PER_TICK / events.max(1.0);
        }
        out
    }
}

impl Drop for CpuWatch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Seen {
    group: &'static str,
    base: u64,
    last: u64,
}

struct Sampler {
    groups: Vec<Group>,
    backends: Option<PgPool>,
    seen: HashMap<u32, Seen>,
    first: bool,
}

impl Sampler {
    async fn sample(&mut self) {
        let mut pids: Vec<(&'static str, u32, bool)> =
            self.groups.iter().flat_map(|g| g.pids.iter().map(|p| (g.name, *p, g.started_now))).collect();
        if let Some(pool) = &self.backends {
            let backends: Vec<i32> = sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_all(pool)
            .await
            .unwrap_or_default();
            pids.extend(backends.into_iter().map(|p| (POSTGRES, p as u32, !self.first)));
        }
        for (group, pid, started_now) in pids {
            let Some(t) = ticks_of(pid) else { continue };
            let base = if started_now { 0 } else { t };
            self.seen.entry(pid).or_insert(Seen { group, base, last: t }).last = t;
        }
    }
}
