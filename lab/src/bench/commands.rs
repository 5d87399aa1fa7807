//! `bench commands`: command round trips through the broker and simulated edge bridges.
//!
//! The portal side publishes `settings_patch` commands (one signed test approver, not the requester) to
//! intake at a fixed open-loop rate, with `Nats-Msg-Id` = command id. The simulated bridges
//! are one JetStream consumer over every device's command subject that acks each command as
//! `applied` right away. The round trip ends when the broker's `acked` status for the command
//! arrives; it is measured from the command's intended send time (coordinated omission
//! corrected, as in `bench latency`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::HeaderMap;
use clap::Args;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tillsync_broker::Broker;
use tillsync_schemas::ack::codes;
use tillsync_schemas::subject::{self, Family};
use tillsync_schemas::{
    codec, streams as names, CommandAck, CommandBody, CommandEnvelope, CommandState, CommandStatus, Heartbeat, Outcome,
    SCHEMA_VERSION,
};

use super::env::Env;
use super::report::Report;
use super::{data, ingest};

#[derive(Debug, Clone, Args)]
pub struct CommandsArgs {
    /// Commands to send.
    #[arg(long, default_value_t = 10_000)]
    pub commands: usize,
    /// Devices they are addressed to (round-robin).
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Commands per second, fixed (open loop).
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
}

/// How long the run may go without any command reaching a final state.
const STALL: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Tally {
    intended: HashMap<String, Instant>,
    acked: u64,
    other_final: BTreeMap<String, u64>,
    first_problem: Option<String>,
    last_final: Option<Instant>,
}

/// Where a round trip's time goes: from the intended send time to the `delivered` status, and
/// to the command reaching the simulated bridge (each recorded once per command).
struct Stages {
    delivered: Histogram<u64>,
    at_bridge: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds")
}

fn since_us(now: Instant, intended: Instant) -> u64 {
    now.saturating_duration_since(intended).as_micros().max(1) as u64
}

pub async fn run(args: CommandsArgs, env: &mut Env) -> anyhow::Result<Report> {
    if args.commands == 0 || args.devices == 0 || args.rate == 0 {
        bail!("--commands, --devices and --rate must be positive");
    }
    let client = env.nats().await?;
    let js = data::js(client.clone());
    env.ensure_empty_streams(&js).await?;
    let url = ingest::fresh(env).await?;
    add_devices(&url, args.devices).await?;
    let broker = Broker::start(env.broker_config(&url)).await.context("broker start")?;
    let beats = super::AbortOnDrop(tokio::spawn(heartbeats(js.clone(), args.devices)));
    let outcome = match wait_online(&url, args.devices).await {
        Ok(()) => round_trips(&args, &client, &js).await,
        Err(e) => Err(e),
    };
    drop(beats);
    super::stop_broker(broker).await;
    let (hist, stages, per_s) = outcome?;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let stage_ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let mut r = Report::new("commands");
    r.param("commands", args.commands)
        .param("devices", args.devices)
        .param("rate", args.rate)
        .number("commands_per_s", per_s)
        .number("p50_ms", ms(0.5))
        .number("p99_ms", ms(0.99))
        .number("p999_ms", ms(0.999))
        .number("max_ms", hist.max() as f64 / 1000.0)
        .number("delivered_p50_ms", stage_ms(&stages.delivered, 0.5))
        .number("delivered_p99_ms", stage_ms(&stages.delivered, 0.99))
        .number("at_bridge_p50_ms", stage_ms(&stages.at_bridge, 0.5))
        .number("at_bridge_p99_ms", stage_ms(&stages.at_bridge, 0.99))
        .note("delivered_*: intended send -> the broker's `delivered` status; at_bridge_*: -> the command reaches the simulated bridge");
    Ok(r)
}

pub(super) async fn add_devices(url: &str, devices: usize) -> anyhow::Result<()> {
    let pool = tillsync_broker::admin::db::connect(url, 2).await?;
    let addrs: Vec<_> = (0..devices).map(data::device).collect();
    sqlx::query(
        "INSERT INTO devices (tenant_id, store_id, device_id, provisioned)
         SELECT t, s, d, true FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(t, s, d)
         ON CONFLICT DO NOTHING",
    )
    .bind(addrs.iter().map(|a| a.tenant_id.clone()).collect::<Vec<_>>())
    .bind(addrs.iter().map(|a| a.store_id.clone()).collect::<Vec<_>>())
    .bind(addrs.iter().map(|a| a.device_id.clone()).collect::<Vec<_>>())
    .execute(&pool)
    .await?;
    pool.close().await;
    Ok(())
}

/// The simulated bridges' heartbeats: the broker delivers commands only to online devices.
async fn heartbeats(js: async_nats::jetstream::Context, devices: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(20));
    loop {
        tick.tick().await;
        for i in 0..devices {
            let addr = data::device(i);
            let hb = Heartbeat {
                schema_version: SCHEMA_VERSION,
                tenant_id: addr.tenant_id.clone(),
                store_id: addr.store_id.clone(),
                device_id: addr.device_id.clone(),
                at_ms: tillsync_broker::now_ms(),
                software_version: "bench".into(),
                outbox_depth: 0,
                oldest_unsent_age_s: 0,
                last_acked_seq: 0,
                config_revision: 0,
                uptime_s: started.elapsed().as_secs(),
                watermarks_refused: 0,
            };
            js.publish(subject::heartbeats(&addr), codec::encode(&hb).into()).await?.await?;
        }
    }
}

async fn wait_online(url: &str, devices: usize) -> anyhow::Result<()> {
    let pool = super::env::quiet_pool(url, 1).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let result = loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM devices WHERE online").fetch_one(&pool).await?;
        if n as usize >= devices {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("only {n} of {devices} simulated devices online after 30 s of heartbeats"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    pool.close().await;
    result
}

/// The simulated bridges: apply every delivered command at once and ack it `applied`.
async fn bridges(
    js: async_nats::jetstream::Context,
    tally: Arc<Mutex<Tally>>,
    stages: Arc<Mutex<Stages>>,
) -> anyhow::Result<()> {
    let stream = js.get_stream(names::COMMANDS).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench-bridges".into()),
            filter_subject: Family::Commands.tenant_subjects(data::TENANT),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.stream().max_messages_per_batch(500).messages().await?;
    while let Some(m) = messages.next().await {
        let m = m?;
        let Ok(cmd) = codec::decode_command(&m.subject, &m.payload) else {
            let _ = m.ack().await;
            continue;
        };
        let now = Instant::now();
        if let Some(&intended) = tally.lock().expect("not poisoned").intended.get(&cmd.command_id) {
            stages.lock().expect("not poisoned").at_bridge.saturating_record(since_us(now, intended));
        }
        let ack = CommandAck {
            schema_version: SCHEMA_VERSION,
            command_id: cmd.command_id.clone(),
            tenant_id: cmd.tenant_id.clone(),
            store_id: cmd.store_id.clone(),
            device_id: cmd.device_id.clone().unwrap_or_default(),
            outcome: Outcome::Applied,
            code: codes::OK.into(),
            detail: String::new(),
            at_ms: tillsync_broker::now_ms(),
        };
        let subject = subject::command_acks(&ack.addr());
        // The PubAck is not awaited here: a bridge keeps applying while acks are confirmed.
        drop(js.publish(subject, codec::encode(&ack).into()).await?);
        m.ack().await.map_err(|e| anyhow::anyhow!("ack command message: {e}"))?;
    }
    Ok(())
}

pub(super) fn command(k: usize, devices: usize) -> CommandEnvelope {
    let addr = data::device(k % devices);
    let now = tillsync_broker::now_ms();
    let mut cmd = CommandEnvelope {
        schema_version: SCHEMA_VERSION,
        command_id: uuid::Uuid::now_v7().to_string(),
        tenant_id: addr.tenant_id,
        store_id: addr.store_id,
        device_id: Some(addr.device_id),
        body: CommandBody::SettingsPatch {
            revision: k as u64 + 1,
            settings: BTreeMap::from([("receipt_footer".to_string(), format!("bench {k}"))]),
        },
        issued_at_ms: now,
        expires_at_ms: now + 600_000,
        requested_by: "bench-portal".into(),
        approvals: Vec::new(),
        if_match: None,
    };
    cmd.approvals = tillsync_ops::approvers::test_approvals(&cmd, 1, now);
    cmd
}

async fn round_trips(
    args: &CommandsArgs,
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<(Histogram<u64>, Stages, f64)> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stages = Arc::new(Mutex::new(Stages { delivered: histogram(), at_bridge: histogram() }));
    let mut statuses = client.subscribe(Family::Status.tenant_subjects(data::TENANT)).await?;
    client.flush().await?;
    let hist = Arc::new(Mutex::new(histogram()));
    let _collector = {
        let (tally, hist, stages) = (tally.clone(), hist.clone(), stages.clone());
        super::AbortOnDrop(tokio::spawn(async move {
            while let Some(msg) = statuses.next().await {
                let Ok(st) = codec::decode::<CommandStatus>(&msg.payload) else { continue };
                let now = Instant::now();
                if st.state == CommandState::Delivered && st.attempt == 1 {
                    if let Some(&intended) = tally.lock().expect("not poisoned").intended.get(&st.command_id) {
                        stages.lock().expect("not poisoned").delivered.saturating_record(since_us(now, intended));
                    }
                }
                if !st.state.is_final() {
                    continue;
                }
                let mut t = tally.lock().expect("not poisoned");
                let Some(intended) = t.intended.remove(&st.command_id) else { continue };
                t.last_final = Some(now);
                if st.state == CommandState::Acked {
                    t.acked += 1;
                    hist.lock().expect("not poisoned").saturating_record(since_us(now, intended));
                } else {
                    *t.other_final.entry(st.state.as_str().to_string()).or_default() += 1;
                    if t.first_problem.is_none() {
                        t.first_problem = Some(format!("{} {:?}: {}", st.state.as_str(), st.code, st.detail));
                    }
                }
            }
        }))
    };
    let mut sims = super::AbortOnDrop(tokio::spawn(bridges(js.clone(), tally.clone(), stages.clone())));

    let period = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = Instant::now() + Duration::from_millis(50);
    let mut k = 0usize;
    // PubAcks are awaited off the sending path (a bounded number may be outstanding).
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel::<async_nats::jetstream::context::PublishAckFuture>(1_024);
    let acker = tokio::spawn(async move {
        let mut failed = 0u64;
        while let Some(ack) = ack_rx.recv().await {
            failed += u64::from(ack.await.is_err());
        }
        failed
    });
    while k < args.commands {
        let now = Instant::now();
        let due = if now < start { 0 } else { ((now - start).as_secs_f64() * args.rate as f64) as usize + 1 };
        while k < due.min(args.commands) {
            let cmd = command(k, args.devices);
            tally
                .lock()
                .expect("not poisoned")
                .intended
                .insert(cmd.command_id.clone(), start + period.mul_f64(k as f64));
            let mut h = HeaderMap::new();
            h.insert(names::HEADER_MSG_ID, cmd.command_id.as_str());
            h.insert(names::HEADER_CONTENT_TYPE, names::CONTENT_TYPE);
            let subject = subject::intake(&cmd.tenant_id, &cmd.store_id, cmd.device_id.as_deref());
            let ack = js.publish_with_headers(subject, h, codec::encode(&cmd).into()).await?;
            ack_tx.send(ack).await.map_err(|_| anyhow::anyhow!("ack checker stopped"))?;
            k += 1;
        }
        if k < args.commands {
            tokio::time::sleep_until(tokio::time::Instant::from_std(start + period.mul_f64(k as f64))).await;
        }
    }
    drop(ack_tx);
    let failed = acker.await?;
    if failed > 0 {
        bail!("{failed} intake publishes were not acknowledged by JetStream");
    }

    let mut last_progress = (usize::MAX, Instant::now());
    let result = loop {
        let (left, acked, others, problem, last_final) = {
            let t = tally.lock().expect("not poisoned");
            (t.intended.len(), t.acked, t.other_final.clone(), t.first_problem.clone(), t.last_final)
        };
        if left == 0 {
            if !others.is_empty() {
                break Err(anyhow::anyhow!(
                    "{acked} commands acked, others ended {others:?}; first: {}",
                    problem.unwrap_or_default()
                ));
            }
            let end = last_final.unwrap_or_else(Instant::now);
            break Ok(acked as f64 / (end - start).as_secs_f64());
        }
        if sims.0.is_finished() {
            break Err(anyhow::anyhow!("simulated bridges stopped"));
        }
        if left != last_progress.0 {
            last_progress = (left, Instant::now());
        } else if last_progress.1.elapsed() > STALL {
            break Err(anyhow::anyhow!(
                "{left} of {} commands got no final status for {STALL:?} ({acked} acked, others {others:?}); \
                 is the broker's command path running?",
                args.commands
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let per_s = if sims.0.is_finished() {
        match (&mut sims.0).await {
            Ok(Err(e)) => return Err(e.context("simulated bridges")),
            Err(e) => return Err(anyhow::anyhow!("simulated bridges: {e}")),
            Ok(Ok(())) => result?,
        }
    } else {
        result?
    };
    let hist = hist.lock().expect("not poisoned").clone();
    let stages = std::mem::replace(
        &mut *stages.lock().expect("not poisoned"),
        Stages { delivered: histogram(), at_bridge: histogram() },
    );
    Ok((hist, stages, per_s))
}
