//! `bench fsync`: what JetStream's `sync_interval: always` costs a publisher on this machine.
//!
//! nats-server acknowledges a JetStream write once it is in the operating system's page cache
//! and fsyncs every two minutes by default, so a power cut can lose acknowledged writes.
//! `sync_interval: always` fsyncs each write before acknowledging it. tillsync does not rely on
//! it (a bridge resends what Postgres has not committed: docs/reliability.md), but an operator
//! may set it; this prices it. Two private servers, one each way, take the same event-sized
//! messages published as a bridge publishes (a window of acks in flight); the runs alternate
//! so both see the same host, and the medians and their ratio are reported.

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use clap::Args;

use super::env::start_nats;
use super::median;
use super::report::Report;

#[derive(Debug, Clone, Args)]
pub struct FsyncArgs {
    /// Messages per run.
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Publishes awaiting their ack at once (the bridge's `--publish-window` default).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Payload bytes per message (an encoded event is about 300).
    #[arg(long, default_value_t = 300)]
    pub size: usize,
    /// Runs per setting, alternated.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

const STREAM: &str = "BENCH_FSYNC";
const SUBJECT: &str = "bench.fsync";

pub async fn run(args: FsyncArgs) -> anyhow::Result<Report> {
    let (default_url, _default) = start_nats(None).await?;
    let (always_url, _always) = start_nats(Some("always")).await?;
    let (mut default_rates, mut always_rates) = (Vec::new(), Vec::new());
    for run in 1..=args.runs.max(1) {
        default_rates.push(publish(&default_url, &args).await.context("publishing, default sync")?);
        always_rates.push(publish(&always_url, &args).await.context("publishing, sync_interval: always")?);
        eprintln!("run {run}: default {:.0} msg/s, always {:.0} msg/s", default_rates[run - 1], always_rates[run - 1]);
    }
    let (d, a) = (median(&default_rates), median(&always_rates));
    let mut r = Report::new("fsync");
    r.param("messages", args.messages)
        .param("window", args.window)
        .param("size", args.size)
        .param("runs", args.runs)
        .number("default_msgs_per_s", d)
        .number("always_msgs_per_s", a)
        .number("slowdown", d / a.max(1e-9))
        .note("medians of alternated runs; each run publishes to an empty file-backed stream");
    Ok(r)
}

/// Publishes `messages` to a fresh stream with `window` acks outstanding; returns messages/s.
async fn publish(url: &str, args: &FsyncArgs) -> anyhow::Result<f64> {
    let js = jetstream::new(async_nats::connect(url).await?);
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec![SUBJECT.into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = Bytes::from(vec![b'x'; args.size]);
    let started = Instant::now();
    let mut in_flight = VecDeque::with_capacity(args.window);
    for _ in 0..args.messages {
        in_flight.push_back(js.publish(SUBJECT, payload.clone()).await?);
        if in_flight.len() >= args.window.max(1) {
            in_flight.pop_front().expect("window is not empty").await?;
        }
    }
    for ack in in_flight {
        ack.await?;
    }
    Ok(args.messages as f64 / started.elapsed().as_secs_f64().max(1e-9))
}
