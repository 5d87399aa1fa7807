//! `bench latency`: publish-to-commit latency under a fixed, open-loop event rate.
//!
//! Event k has an intended send time `start + k / rate`, fixed before the run. The publisher
//! sends every event whose time has come, however late it is; latency is measured from the
//! intended time, not from the actual send, so a stall (in the publisher, NATS or the broker)
//! counts against every event it delayed. That is the coordinated-omission correction.
//!
//! The commit is observed the way a bridge observes it: the broker publishes an ack watermark
//! per device after each committed and acked batch, and a watermark w marks every seq <= w
//! of that device committed. This includes the acks and the watermark publish, so it is a
//! slight overestimate of the bare commit time.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tillsync_broker::Broker;
use tillsync_schemas::subject::Family;
use tillsync_schemas::{codec, Watermark};

use super::env::Env;
use super::report::Report;
use super::{data, diag, ingest};

#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    /// Events per second, fixed (open loop).
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// How long to publish, seconds.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Devices the events come from (round-robin).
    #[arg(long, default_value_t = 1_000)]
    pub devices: usize,
    /// Seconds published at the same rate before recording starts (0: the cold start, with
    /// every device actor activating, is part of the figures).
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Intended send times of published but not yet committed events, per device, in seq order.
type Pending = Arc<Mutex<HashMap<String, VecDeque<(u64, Instant, bool)>>>>;

pub async fn run(args: LatencyArgs, env: &mut Env) -> anyhow::Result<Report> {
    if args.rate == 0 || args.seconds <= 0.0 || args.devices == 0 {
        bail!("--rate, --seconds and --devices must be positive");
    }
    let total = ((args.rate as f64) * args.seconds).round().max(1.0) as u64;
    let warm = ((args.rate as f64) * args.warmup.max(0.0)).round() as u64;
    let client = env.nats().await?;
    let js = data::js(client.clone());
    env.ensure_empty_streams(&js).await?;
    let url = ingest::fresh(env).await?;
    let broker = Broker::start(env.broker_config(&url)).await.context("broker start")?;
    let mut watermarks = client.subscribe(Family::Watermarks.tenant_subjects(data::TENANT)).await?;
    client.flush().await?;

    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let collector = {
        let pending = pending.clone();
        tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds");
            let mut last_commit = Instant::now();
            while hist.len() < total {
                let Some(msg) = watermarks.next().await else { break };
                let Ok(wm) = codec::decode::<Watermark>(&msg.payload) else { continue };
                let now = Instant::now();
                let mut p = pending.lock().expect("not poisoned");
                if let Some(q) = p.get_mut(&wm.device_id) {
                    while q.front().is_some_and(|(seq, _, _)| *seq <= wm.seq) {
                        let (_, intended, measured) = q.pop_front().expect("front exists");
                        if measured {
                            hist.saturating_record(now.saturating_duration_since(intended).as_micros().max(1) as u64);
                            last_commit = now;
                        }
                    }
                }
            }
            (hist, last_commit)
        })
    };

    // PubAcks are awaited off the publishing path, in order, to catch refused publishes.
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel::<async_nats::jetstream::context::PublishAckFuture>(8_192);
    let acker = tokio::spawn(async move {
        let mut failed = 0u64;
        while let Some(ack) = ack_rx.recv().await {
            if ack.await.is_err() {
                failed += 1;
            }
        }
        failed
    });

    // Every event is generated and encoded before the clock starts: the load generator shares
    // the two cores with the broker it measures, and making events on the fly took ~6 % of
    // the process's CPU (perf). `occurred_at` is the intended send time as of generation.
    let mut rng = data::Rng::new(args.seed);
    let mut tills: Vec<data::Till> = (0..args.devices).map(|i| data::Till::new(data::device(i))).collect();
    let generated_ms = tillsync_broker::now_ms();
    let planned: Vec<(String, u64, data::Outgoing)> = (0..warm + total)
        .map(|k| {
            let till = &mut tills[(k as usize) % args.devices];
            let ev = till.next_event(&mut rng, generated_ms + (k * 1_000 / args.rate) as i64);
            (ev.device_id.clone(), ev.seq, data::outgoing(&ev, false))
        })
        .collect();
    let mut planned = planned.into_iter();
    let period = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = Instant::now() + Duration::from_millis(50);
    let mut k = 0u64;
    let mut batches_before = None;
    let mut cpu_before = None;
    let nats_pid = env.nats_pid();
    let mut measured_from = start;
    while k < warm + total {
        let now = Instant::now();
        let due = if now < start { 0 } else { ((now - start).as_secs_f64() * args.rate as f64) as u64 + 1 };
        while k < due.min(warm + total) {
            let intended = start + period.mul_f64(k as f64);
            if k == warm {
                batches_before = Some(diag::Batches::now());
                cpu_before = diag::CpuSplit::now(nats_pid);
                measured_from = intended;
            }
            let (device_id, seq, out) = planned.next().expect("one planned per event");
            pending.lock().expect("not poisoned").entry(device_id).or_default().push_back((seq, intended, k >= warm));
            let ack = data::send(&js, out).await?;
            ack_tx.send(ack).await.map_err(|_| anyhow::anyhow!("ack checker stopped"))?;
            k += 1;
        }
        if k < warm + total {
            tokio::time::sleep_until(tokio::time::Instant::from_std(start + period.mul_f64(k as f64))).await;
        }
    }
    let published_in = measured_from.elapsed().as_secs_f64();
    let cpu = cpu_before.zip(diag::CpuSplit::now(nats_pid));
    let busy_pct = cpu.map(|(before, after)| after.busy_pct_since(&before));
    let steal_pct = cpu.map(|(before, after)| after.steal_pct_since(&before));
    let split = cpu.map(|(before, after)| after.per_event_since(&before, total as f64));
    drop(ack_tx);
    let failed = acker.await?;
    if failed > 0 {
        bail!("{failed} publishes were not acknowledged by JetStream");
    }
    let waited = tokio::time::timeout(Duration::from_secs(120), collector).await;
    let (mean_batch, mean_apply_ms) = diag::Batches::now().since(&batches_before.unwrap_or_default());
    super::stop_broker(broker).await;
    let (hist, last_commit) = waited.context("events still uncommitted 120 s after the last publish")??;
    if hist.len() < total {
        bail!("only {} of {total} events were seen committed", hist.len());
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let mut r = Report::new("latency");
    r.param("rate", args.rate)
        .param("seconds", args.seconds)
        .param("devices", args.devices)
        .param("warmup", args.warmup)
        .param("events", total)
        .number("achieved_rate", total as f64 / published_in)
        .number("committed_rate", total as f64 / (last_commit - measured_from).as_secs_f64())
        .number("p50_ms", ms(0.5))
        .number("p99_ms", ms(0.99))
        .number("p999_ms", ms(0.999))
        .number("max_ms", hist.max() as f64 / 1000.0)
        .number("broker_mean_batch_events", mean_batch)
        .number("broker_mean_apply_ms", mean_apply_ms);
    if let Some(pct) = busy_pct {
        r.number("machine_busy_pct", pct);
    }
    if let Some(pct) = steal_pct {
        r.number("machine_steal_pct", pct);
    }
    if let Some(split) = split {
        split.report(&mut r);
    }
    Ok(r)
}
