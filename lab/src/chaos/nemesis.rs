//! The nemesis: a fault schedule drawn from the seed (pure, printed before the run) and its
//! execution against the fleet. Faults run one after another, except a bridge taken offline,
//! which stays offline for a long stretch (30 % of the run: minutes in a 10-minute run) while
//! the others go on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tillsync_schemas::{streams, subject};
use tokio::time::Instant;

use super::fleet::Fleet;
use tillsync_ops::partitions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    KillBroker,
    KillBridge,
    KillNats,
    KillPostgres,
    PauseBroker,
    PauseBridge,
    PauseNats,
    PausePostgres,
    BridgeOffline,
    DeleteEvents,
}

impl Fault {
    pub const ALL: &'static [Fault] = &[
        Fault::KillBroker,
        Fault::KillBridge,
        Fault::KillNats,
        Fault::KillPostgres,
        Fault::PauseBroker,
        Fault::PauseBridge,
        Fault::PauseNats,
        Fault::PausePostgres,
        Fault::BridgeOffline,
        Fault::DeleteEvents,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillBroker => "kill-broker",
            Fault::KillBridge => "kill-bridge",
            Fault::KillNats => "kill-nats",
            Fault::KillPostgres => "kill-postgres",
            Fault::PauseBroker => "pause-broker",
            Fault::PauseBridge => "pause-bridge",
            Fault::PauseNats => "pause-nats",
            Fault::PausePostgres => "pause-postgres",
            Fault::BridgeOffline => "bridge-offline",
            Fault::DeleteEvents => "delete-events",
        }
    }

    /// `all`, `none`, `kill` (every kill-*), `pause` (every pause-*) or fault names, comma separated.
    pub fn parse_list(list: &str) -> Result<Vec<Fault>, String> {
        let mut out = Vec::new();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "all" => out.extend_from_slice(Fault::ALL),
                "none" => {}
                "kill" | "pause" => out.extend(Fault::ALL.iter().filter(|f| f.name().starts_with(word))),
                _ => out.push(*Fault::ALL.iter().find(|f| f.name() == word).ok_or_else(|| {
                    let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                    format!("unknown fault {word:?}: all, none, kill, pause, {}", names.join(", "))
                })?),
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn targets_bridge(self) -> bool {
        matches!(self, Fault::KillBridge | Fault::PauseBridge | Fault::BridgeOffline)
    }

    /// How long the fault holds (down, paused, or the broker down while events are deleted).
    fn hold_ms(self, rng: &mut StdRng, run_ms: u64) -> u64 {
        match self {
            Fault::BridgeOffline => (run_ms * 3 / 10).max(3_000),
            Fault::KillBroker | Fault::KillBridge | Fault::KillNats | Fault::KillPostgres => {
                rng.random_range(500..3_000)
            }
            Fault::DeleteEvents => rng.random_range(1_500..3_000),
            _ => rng.random_range(1_000..5_000),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Step {
    /// Milliseconds after the traffic started.
    pub at_ms: u64,
    pub fault: Fault,
    /// Which broker or bridge (index); 0 for nats-server and Postgres.
    pub target: usize,
    pub hold_ms: u64,
}

/// The schedule for a run of `seconds`: after a warm-up, one fault after another with gaps of
/// 1-4 s, all over 2 s before the end; at most one bridge offline at a time, and no other
/// fault on a bridge while it is offline.
pub fn schedule(seed: u64, seconds: u64, faults: &[Fault], brokers: usize, bridges: usize) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let run_ms = seconds * 1_000;
    let end = run_ms.saturating_sub(2_000);
    let mut t = (run_ms / 6).min(5_000);
    let mut steps = Vec::new();
    let mut offline: Option<(usize, u64)> = None; // bridge, until
    while !faults.is_empty() && t < end {
        let fault = faults[rng.random_range(0..faults.len())];
        let hold = fault.hold_ms(&mut rng, run_ms).min(end - t);
        let busy = offline.filter(|&(_, until)| until > t).map(|(b, _)| b);
        let target = if fault.targets_bridge() {
            let free: Vec<usize> = (0..bridges).filter(|&b| Some(b) != busy).collect();
            if free.is_empty() || (fault == Fault::BridgeOffline && busy.is_some()) {
                t += 500;
                continue;
            }
            free[rng.random_range(0..free.len())]
        } else if matches!(fault, Fault::KillBroker | Fault::PauseBroker) {
            rng.random_range(0..brokers.max(1))
        } else {
            0
        };
        if fault == Fault::BridgeOffline {
            offline = Some((target, t + hold));
            steps.push(Step { at_ms: t, fault, target, hold_ms: hold });
            t += rng.random_range(1_000..4_000);
            continue;
        }
        steps.push(Step { at_ms: t, fault, target, hold_ms: hold });
        t += hold + rng.random_range(1_000..4_000);
    }
    steps
}

/// What the nemesis did that the report shows.
#[derive(Debug, Default)]
pub struct Done {
    pub faults: AtomicU64,
    pub deleted_events: AtomicU64,
}

/// Runs `steps` from `start`: the long bridge-offline faults in their own tasks, the rest in order.
pub async fn run(
    steps: Vec<Step>,
    start: Instant,
    fleet: Arc<Mutex<Fleet>>,
    js: async_nats::jetstream::Context,
    seed: u64,
    done: Arc<Done>,
) {
    let mut background = Vec::new();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65);
    for step in steps {
        let (fleet, js, done) = (fleet.clone(), js.clone(), done.clone());
        let delete_seed: u64 = rng.random();
        let offline = step.fault == Fault::BridgeOffline;
        let task = async move {
            tokio::time::sleep_until(start + Duration::from_millis(step.at_ms)).await;
            tracing::info!(fault = step.fault.name(), target = step.target, hold_ms = step.hold_ms, "Nemesis.");
            eprintln!(
                "[{:>6.1}s] {} {} for {:.1} s",
                step.at_ms as f64 / 1e3,
                step.fault.name(),
                step.target,
                step.hold_ms as f64 / 1e3
            );
            execute(&step, &fleet, &js, delete_seed, &done).await;
            done.faults.fetch_add(1, Ordering::Relaxed);
        };
        if offline {
            background.push(tokio::spawn(task));
        } else {
            task.await;
        }
    }
    for b in background {
        let _ = b.await;
    }
}

/// Runs `f` on the fleet off the async workers (stopping or starting a process blocks).
pub async fn with_fleet<T: Send + 'static>(
    fleet: &Arc<Mutex<Fleet>>,
    f: impl FnOnce(&mut Fleet) -> T + Send + 'static,
) -> T {
    let fleet = fleet.clone();
    tokio::task::spawn_blocking(move || f(&mut fleet.lock().expect("fleet lock"))).await.expect("fleet task")
}

async fn execute(step: &Step, fleet: &Arc<Mutex<Fleet>>, js: &async_nats::jetstream::Context, seed: u64, done: &Done) {
    let (fault, i) = (step.fault, step.target);
    with_fleet(fleet, move |f| match fault {
        Fault::KillBroker => f.brokers[i].kill9(),
        Fault::KillBridge => f.bridges[i].kill9(),
        Fault::KillNats => f.nats.kill9(),
        Fault::KillPostgres if seed.is_multiple_of(2) => f.pg.kill9(),
        Fault::KillPostgres => f.pg.stop_immediate(),
        Fault::PauseBroker => f.brokers[i].pause(),
        Fault::PauseBridge => f.bridges[i].pause(),
        Fault::PauseNats => f.nats.pause(),
        Fault::PausePostgres => f.pg.pause(),
        Fault::BridgeOffline => f.bridges[i].terminate(Duration::from_secs(10)),
        Fault::DeleteEvents => f.brokers.iter_mut().for_each(|b| b.kill9()),
    })
    .await;
    tokio::time::sleep(Duration::from_millis(step.hold_ms)).await;
    if fault == Fault::DeleteEvents {
        let n = delete_unread_events(js, seed).await;
        done.deleted_events.fetch_add(n, Ordering::Relaxed);
    }
    if let Err(e) = with_fleet(fleet, move |f| f.undo(fault, i)).await {
        tracing::error!(error = %e, fault = fault.name(), "Could not undo a fault.");
    }
}

/// NATS write loss: deletes up to three messages of `TILLSYNC_EVENTS` that JetStream acked to
/// a bridge but the broker has not acked yet (above the ack floor of their partition's
/// consumer; a partition without a consumer has read nothing), as a power cut before
/// JetStream's fsync would. Returns how many it deleted.
async fn delete_unread_events(js: &async_nats::jetstream::Context, seed: u64) -> u64 {
    let Ok(mut stream) = js.get_stream(streams::EVENTS).await else { return 0 };
    let Ok(info) = stream.info().await else { return 0 };
    if info.config.deny_delete {
        tracing::error!(
            "delete-events deleted nothing: {} denies deletes. Only a debug build's broker makes \
             streams the nemesis may delete from (TILLSYNC_FAULT_STREAMS_DELETABLE); see docs/chaos.md.",
            streams::EVENTS
        );
        return 0;
    }
    let last = info.state.last_sequence;
    let Ok(consumers) = partitions::consumers(js, streams::EVENTS, streams::BROKER_EVENTS_CONSUMER).await else {
        return 0;
    };
    let floors: HashMap<u16, u64> = consumers.iter().map(|(p, c)| (*p, c.ack_floor.stream_sequence)).collect();
    let floor = |p: u16| floors.get(&p).copied().unwrap_or(0);
    // Below every partition's floor everything is read.
    let lowest = (0..partitions_in(&floors)).map(floor).min().unwrap_or(0);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut deleted = 0;
    // Draws land on read messages of other partitions too; a few more draws than deletions.
    for _ in 0..12 {
        if last <= lowest || deleted == 3 {
            break;
        }
        let seq = rng.random_range(lowest + 1..=last);
        let Ok(msg) = stream.get_raw_message(seq).await else { continue };
        let Some(p) = subject::parse(&msg.subject).ok().and_then(|s| s.partition) else { continue };
        if seq > floor(p) && matches!(stream.delete_message(seq).await, Ok(true)) {
            eprintln!(
                "          deleted TILLSYNC_EVENTS seq {seq} (partition {p}, its ack floor {}, last {last})",
                floor(p)
            );
            deleted += 1;
        }
    }
    deleted
}

/// The partition count, as far as the consumers tell (the highest partition with one, + 1).
fn partitions_in(floors: &HashMap<u16, u64>) -> u16 {
    floors.keys().max().map_or(0, |p| p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_a_function_of_the_seed() {
        let a = schedule(7, 60, Fault::ALL, 1, 4);
        assert_eq!(a, schedule(7, 60, Fault::ALL, 1, 4));
        assert_ne!(a, schedule(8, 60, Fault::ALL, 1, 4));
        assert!(a.len() >= 8, "{a:?}");
        assert!(a.iter().all(|s| s.at_ms + s.hold_ms <= 58_000), "{a:?}");
    }

    #[test]
    fn a_bridge_offline_is_long_and_alone_on_its_bridge() {
        for seed in 0..50 {
            let steps = schedule(seed, 600, &[Fault::BridgeOffline, Fault::KillBridge, Fault::PauseBridge], 1, 3);
            for off in steps.iter().filter(|s| s.fault == Fault::BridgeOffline) {
                assert!(off.hold_ms >= 60_000 || off.at_ms + off.hold_ms == 598_000, "{off:?}");
                let end = off.at_ms + off.hold_ms;
                let clash = |s: &Step| s != off && s.target == off.target && s.at_ms < end && s.at_ms >= off.at_ms;
                assert!(!steps.iter().any(clash), "{steps:?}");
            }
        }
    }

    #[test]
    fn only_the_selected_faults_are_scheduled() {
        let only = Fault::parse_list("kill,pause-nats").unwrap();
        assert_eq!(only.len(), 5);
        assert!(schedule(3, 120, &only, 1, 2).iter().all(|s| only.contains(&s.fault)));
        assert!(schedule(3, 120, &[], 1, 2).is_empty());
        assert!(Fault::parse_list("kill,typo").is_err());
        assert_eq!(Fault::parse_list("all").unwrap(), Fault::ALL);
    }
}
