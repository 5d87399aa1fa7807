//! Commands down against real NATS JetStream and Postgres: intake, approval policy, delivery,
//! redelivery, expiry, acks, fan-out, status feedback and a broker kill -9.
//!
//! The device is simulated by [`FakeEdge`]: it heartbeats (so the broker sees it online),
//! consumes its command subject through a durable JetStream consumer, dedupes by command id
//! (re-sending its stored ack when a command comes again, as the edge bridge does) and acks
//! according to its [`Mode`]. Each test uses its own tenant so by-tenant gauges do not mix.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::HeaderMap;
use futures::StreamExt;
use sqlx::PgPool;
use tillsync_broker::config::Config;
use tillsync_schemas::subject::Family;
use tillsync_schemas::{
    codec, streams, subject, CommandAck, CommandBody, CommandEnvelope, CommandState, CommandStatus, DeviceAddr,
    Heartbeat, Outcome, SCHEMA_VERSION,
};
use tillsync_tests::{eventually, eventually_eq, http_get, metric, BrokerProc, InProcBroker, Stack};

use crate::common::add_tenant;

pub(crate) const T: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Builders

pub(crate) fn command(
    tenant: &str,
    store: &str,
    device: Option<&str>,
    body: CommandBody,
    approvers: &[&str],
    ttl_ms: i64,
) -> CommandEnvelope {
    let now = tillsync_broker::now_ms();
    let mut cmd = CommandEnvelope {
        schema_version: SCHEMA_VERSION,
        command_id: uuid::Uuid::new_v4().to_string(),
        tenant_id: tenant.into(),
        store_id: store.into(),
        device_id: device.map(Into::into),
        body,
        issued_at_ms: now,
        expires_at_ms: now + ttl_ms,
        requested_by: "requester".into(),
        approvals: vec![],
        if_match: None,
    };
    tillsync_tests::approve(&mut cmd, approvers);
    cmd
}

fn refund() -> CommandBody {
    CommandBody::RefundOrder {
        order_id: "o-1".into(),
        payment_id: "p-1".into(),
        amount_minor: 350,
        currency: "EUR".into(),
        reason: "cold coffee".into(),
    }
}

fn void() -> CommandBody {
    CommandBody::VoidOrder { order_id: "o-1".into(), reason: "mistake".into() }
}

pub(crate) fn menu() -> CommandBody {
    CommandBody::ApplyMenuPublish { menu_id: "spring".into(), version: 3 }
}

/// Publishes a command on intake as the portal does, `Nats-Msg-Id` = `msg_id`.
async fn send_with_id(js: &async_nats::jetstream::Context, cmd: &CommandEnvelope, msg_id: &str) {
    let mut h = HeaderMap::new();
    h.insert(streams::HEADER_MSG_ID, msg_id);
    let subj = subject::intake(&cmd.tenant_id, &cmd.store_id, cmd.device_id.as_deref());
    js.publish_with_headers(subj, h, codec::encode(cmd).into()).await.unwrap().await.unwrap();
}

pub(crate) async fn send(js: &async_nats::jetstream::Context, cmd: &CommandEnvelope) {
    send_with_id(js, cmd, &cmd.command_id).await;
}

/// A device known to the broker, as `tillsync devices add` provisions it.
pub(crate) async fn provision(pool: &PgPool, a: &DeviceAddr) {
    sqlx::query(
        "INSERT INTO devices (tenant_id, store_id, device_id, provisioned) VALUES ($1, $2, $3, true)
         ON CONFLICT DO NOTHING",
    )
    .bind(&a.tenant_id)
    .bind(&a.store_id)
    .bind(&a.device_id)
    .execute(pool)
    .await
    .unwrap();
    tillsync_tests::register_test_approvers(pool, &a.tenant_id).await;
}

pub(crate) async fn inbox(pool: &PgPool, command_id: &str, device: &str) -> Option<(String, i32, Option<String>)> {
    sqlx::query_as("SELECT state, attempts, last_code FROM command_inbox WHERE command_id = $1 AND device_id = $2")
        .bind(command_id)
        .bind(device)
        .fetch_optional(pool)
        .await
        .unwrap()
}

pub(crate) async fn inbox_state(pool: &PgPool, command_id: &str, device: &str) -> Option<String> {
    inbox(pool, command_id, device).await.map(|r| r.0)
}

/// The command log of one command: (device, state, attempt, code), in order.
pub(crate) async fn log(pool: &PgPool, command_id: &str) -> Vec<(Option<String>, String, i32, Option<String>)> {
    sqlx::query_as("SELECT device_id, state, attempt, code FROM command_log WHERE command_id = $1 ORDER BY id")
        .bind(command_id)
        .fetch_all(pool)
        .await
        .unwrap()
}

pub(crate) async fn ack_effects(pool: &PgPool, command_id: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT effect FROM command_acks WHERE command_id = $1 ORDER BY id")
        .bind(command_id)
        .fetch_all(pool)
        .await
        .unwrap()
}

pub(crate) async fn scrape(addr: std::net::SocketAddr) -> String {
    http_get(addr, "/metrics").await.expect("metrics endpoint").1
}

pub(crate) async fn metric_at_least(addr: std::net::SocketAddr, name: &str, labels: &str, min: f64) {
    eventually(T, &format!("{name}{{{labels}}} >= {min}"), || async move {
        let v = metric(&scrape(addr).await, name, labels)?;
        (v >= min).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Status messages to the portal

/// Collects every status message of a tenant.
#[derive(Clone)]
pub(crate) struct Statuses(Arc<Mutex<Vec<CommandStatus>>>);

impl Statuses {
    pub(crate) async fn watch(client: &async_nats::Client, tenant: &str) -> Statuses {
        let mut sub = client.subscribe(Family::Status.tenant_subjects(tenant)).await.unwrap();
        client.flush().await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = seen.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Ok(s) = codec::decode::<CommandStatus>(&m.payload) {
                    out.lock().unwrap().push(s);
                }
            }
        });
        Statuses(seen)
    }

    /// (device, state, attempt, code) of one command, in arrival order.
    pub(crate) fn of(&self, command_id: &str) -> Vec<(Option<String>, CommandState, u32, Option<String>)> {
        let all = self.0.lock().unwrap();
        all.iter()
            .filter(|s| s.command_id == command_id)
            .map(|s| (s.device_id.clone(), s.state, s.attempt, s.code.clone()))
            .collect()
    }

    /// Every status of one command, in arrival order.
    pub(crate) fn all(&self, command_id: &str) -> Vec<CommandStatus> {
        self.0.lock().unwrap().iter().filter(|s| s.command_id == command_id).cloned().collect()
    }

    pub(crate) async fn wait(&self, command_id: &str, state: CommandState) -> CommandStatus {
        let what = format!("status {} for {command_id}", state.as_str());
        eventually(T, &what, || async {
            self.0.lock().unwrap().iter().find(|s| s.command_id == command_id && s.state == state).cloned()
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// The fake edge

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Apply and ack.
    Apply,
    /// Apply but lose the ack (the broker redelivers).
    LoseAcks,
    /// Neither apply nor ack.
    Ignore,
}

#[derive(Default)]
struct EdgeState {
    /// (command id, Tillsync-Attempt header) of every delivery received.
    arrivals: Vec<(String, u32)>,
    /// How many times each command was applied (must never exceed 1).
    applied: HashMap<String, u32>,
    /// The ack stored per applied command, re-sent when the command comes again.
    acks: HashMap<String, CommandAck>,
}

pub(crate) struct FakeEdge {
    addr: DeviceAddr,
    mode: Arc<Mutex<Mode>>,
    state: Arc<Mutex<EdgeState>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FakeEdge {
    pub(crate) async fn start(stack: &Stack, addr: &DeviceAddr, mode: Mode) -> FakeEdge {
        let client = stack.nats.client().await;
        let js = async_nats::jetstream::new(client);
        let mode = Arc::new(Mutex::new(mode));
        let state = Arc::new(Mutex::new(EdgeState::default()));
        let mut tasks = vec![tokio::spawn(heartbeat(js.clone(), addr.clone()))];
        // The broker creates the streams; wait for the commands stream.
        let stream = eventually(T, "commands stream", || {
            let js = js.clone();
            async move { js.get_stream(streams::COMMANDS).await.ok() }
        })
        .await;
        let consumer = stream
            .get_or_create_consumer(
                &streams::device_commands_consumer(addr),
                pull::Config {
                    durable_name: Some(streams::device_commands_consumer(addr)),
                    filter_subject: subject::commands(addr),
                    ack_policy: AckPolicy::Explicit,
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let (m, s, a) = (mode.clone(), state.clone(), addr.clone());
        tasks.push(tokio::spawn(async move {
            let mut messages = consumer.messages().await.unwrap();
            while let Some(Ok(msg)) = messages.next().await {
                let attempt = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(streams::HEADER_ATTEMPT))
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(0);
                let cmd = codec::decode_command(&msg.subject, &msg.payload).expect("broker sends valid commands");
                assert_eq!(cmd.device_id.as_deref(), Some(a.device_id.as_str()), "device id filled in");
                let mode = *m.lock().unwrap();
                let ack = {
                    let mut st = s.lock().unwrap();
                    st.arrivals.push((cmd.command_id.clone(), attempt));
                    match st.acks.get(&cmd.command_id) {
                        // Seen before: never apply twice, re-send the stored ack.
                        Some(stored) => (mode != Mode::LoseAcks).then(|| stored.clone()),
                        None if mode == Mode::Ignore => None,
                        None => {
                            *st.applied.entry(cmd.command_id.clone()).or_default() += 1;
                            let ack = edge_ack(&a, &cmd.command_id, Outcome::Applied, "ok");
                            st.acks.insert(cmd.command_id.clone(), ack.clone());
                            (mode == Mode::Apply).then_some(ack)
                        }
                    }
                };
                if let Some(ack) = ack {
                    publish_ack(&js, &ack).await;
                }
                let _ = msg.ack().await;
            }
        }));
        FakeEdge { addr: addr.clone(), mode, state, tasks }
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn arrivals(&self, command_id: &str) -> Vec<u32> {
        let st = self.state.lock().unwrap();
        st.arrivals.iter().filter(|(c, _)| c == command_id).map(|(_, a)| *a).collect()
    }

    /// The commands received, first arrivals only, in arrival order.
    fn arrival_order(&self) -> Vec<String> {
        let st = self.state.lock().unwrap();
        let mut seen = std::collections::HashSet::new();
        st.arrivals.iter().filter(|(c, _)| seen.insert(c.clone())).map(|(c, _)| c.clone()).collect()
    }

    pub(crate) fn arrival_count(&self) -> usize {
        self.state.lock().unwrap().arrivals.len()
    }

    pub(crate) fn applied(&self, command_id: &str) -> u32 {
        self.state.lock().unwrap().applied.get(command_id).copied().unwrap_or(0)
    }
}

impl Drop for FakeEdge {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub(crate) fn edge_ack(a: &DeviceAddr, command_id: &str, outcome: Outcome, code: &str) -> CommandAck {
    CommandAck {
        schema_version: SCHEMA_VERSION,
        command_id: command_id.into(),
        tenant_id: a.tenant_id.clone(),
        store_id: a.store_id.clone(),
        device_id: a.device_id.clone(),
        outcome,
        code: code.into(),
        detail: String::new(),
        at_ms: tillsync_broker::now_ms(),
    }
}

pub(crate) async fn publish_ack(js: &async_nats::jetstream::Context, ack: &CommandAck) {
    let published = js.publish(subject::command_acks(&ack.addr()), codec::encode(ack).into()).await;
    if let Ok(confirm) = published {
        let _ = confirm.await;
    }
}

/// Heartbeats every 500 ms so the broker keeps the device online.
async fn heartbeat(js: async_nats::jetstream::Context, a: DeviceAddr) {
    let started = tillsync_broker::now_ms();
    loop {
        let hb = Heartbeat {
            schema_version: SCHEMA_VERSION,
            tenant_id: a.tenant_id.clone(),
            store_id: a.store_id.clone(),
            device_id: a.device_id.clone(),
            at_ms: tillsync_broker::now_ms(),
            software_version: "fake-edge".into(),
            outbox_depth: 0,
            oldest_unsent_age_s: 0,
            last_acked_seq: 0,
            config_revision: 0,
            uptime_s: ((tillsync_broker::now_ms() - started) / 1000) as u64,
            watermarks_refused: 0,
        };
        if let Ok(f) = js.publish(subject::heartbeats(&a), codec::encode(&hb).into()).await {
            let _ = f.await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(crate) async fn online(pool: &PgPool, a: &DeviceAddr) {
    eventually_eq(T, "device online", Some(true), || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT online FROM devices WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3",
        )
        .bind(&a.tenant_id)
        .bind(&a.store_id)
        .bind(&a.device_id)
        .fetch_optional(pool)
        .await
        .unwrap()
    })
    .await;
}

/// A stack with one tenant and a broker with `tune` applied to its test config.
pub(crate) async fn setup(tenant: &str, tune: impl FnOnce(&mut Config)) -> (Stack, InProcBroker) {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, tenant).await;
    let mut config = stack.broker_config();
    tune(&mut config);
    let broker = InProcBroker::start(config).await;
    (stack, broker)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn happy_path_queued_delivered_acked() {
    let (stack, broker) = setup("cmd-happy", |_| {}).await;
    let pool = &stack.db.pool;
    let d = DeviceAddr::new("cmd-happy", "s1", "till-1");
    let edge = FakeEdge::start(&stack, &d, Mode::Apply).await;
    online(pool, &d).await;
    let statuses = Statuses::watch(&stack.nats.client().await, "cmd-happy").await;
    let js = stack.nats.jetstream().await;

    let cmd = command("cmd-happy", "s1", Some("till-1"), refund(), &["alice", "bob"], 60_000);
    send(&js, &cmd).await;
    let acked = statuses.wait(&cmd.command_id, CommandState::Acked).await;
    assert_eq!(acked.attempt, 1);
    assert_eq!(acked.code.as_deref(), Some("ok"));
    assert_eq!(acked.device_id.as_deref(), Some("till-1"));

    let seen: Vec<CommandState> = statuses.of(&cmd.command_id).iter().map(|s| s.1).collect();
    assert_eq!(seen, vec![CommandState::Queued, CommandState::Delivered, CommandState::Acked]);
    assert_eq!(inbox(pool, &cmd.command_id, "till-1").await, Some(("acked".into(), 1, Some("ok".into()))));
    let states: Vec<String> = log(pool, &cmd.command_id).await.into_iter().map(|r| r.1).collect();
    assert_eq!(states, vec!["queued", "delivered", "acked"]);
    let actors: Vec<String> = sqlx::query_scalar("SELECT actor FROM command_log WHERE command_id = $1 ORDER BY id")
        .bind(&cmd.command_id)
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(actors, vec!["portal", "broker", "device"]);
    assert_eq!(ack_effects(pool, &cmd.command_id).await, vec!["applied_transition"]);
    assert_eq!(edge.applied(&cmd.command_id), 1);
    assert_eq!(edge.arrivals(&cmd.command_id), vec![1], "Tillsync-Attempt header of the first delivery");

    let http = broker.broker.http_addr;
    metric_at_least(http, "tillsync_commands_acked_total", "", 1.0).await;
    metric_at_least(http, "tillsync_command_round_trip_seconds_count", "", 1.0).await;
    eventually_eq(T, "inbox depth back to 0", Some(0.0), || async {
        metric(&scrape(http).await, "tillsync_command_inbox_depth", "tenant=\"cmd-happy\"")
    })
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn duplicate_intake_is_queued_once() {
    let (stack, broker) = setup("cmd-dup", |_| {}).await;
    let pool = &stack.db.pool;
    let d = DeviceAddr::new("cmd-dup", "s1", "till-1");
    let edge = FakeEdge::start(&stack, &d, Mode::Apply).await;
    online(pool, &d).await;
    let statuses = Statuses::watch(&stack.nats.client().await, "cmd-dup").await;
    let js = stack.nats.jetstream().await;

    let cmd = command("cmd-dup", "s1", Some("till-1"), menu(), &["alice"], 60_000);
    send(&js, &cmd).await;
    // Other message ids, so JetStream's duplicate window does not hide them: the broker must.
    send_with_id(&js, &cmd, "resend-1").await;
    send_with_id(&js, &cmd, "resend-2").await;
    statuses.wait(&cmd.command_id, CommandState::Acked).await;
    let marker = command("cmd-dup", "s1", Some("till-1"), menu(), &["alice"], 60_000);
    send(&js, &marker).await;
    statuses.wait(&marker.command_id, CommandState::Acked).await;

    let n =
        stack.db.count(&format!("SELECT count(*) FROM command_inbox WHERE command_id = '{}'", cmd.command_id)).await;
    assert_eq!(n, 1);
    let queued = log(pool, &cmd.command_id).await.iter().filter(|r| r.1 == "queued").count();
    assert_eq!(queued, 1);
    assert_eq!(edge.applied(&cmd.command_id), 1);
    assert_eq!(statuses.of(&cmd.command_id).len(), 3, "queued, delivered, acked once each");
    broker.stop().await;
}

#[tokio::test]
async fn a_backlog_is_taken_in_batches_keeping_issue_order_duplicates_and_refusals() {
    let (stack, broker) = setup("cmd-batch", |_| {}).await;
    let pool = &stack.db.pool;
    let d = DeviceAddr::new("cmd-batch", "s1", "till-1");
    let quiet = DeviceAddr::new("cmd-batch", "s1", "till-2");
    let edge = FakeEdge::start(&stack, &d, Mode::Apply).await;
    let beats = tokio::spawn(heartbeat(stack.nats.jetstream().await, quiet.clone()));
    online(pool, &d).await;
    online(pool, &quiet).await;
    let statuses = Statuses::watch(&stack.nats.client().await, "cmd-batch").await;
    let js = stack.nats.jetstream().await;
    // Delivered to till-2, which nobody acks for now.
    let held = command("cmd-batch", "s1", Some("till-2"), menu(), &["alice"], 60_000);
    send(&js, &held).await;
    statuses.wait(&held.command_id, CommandState::Delivered).await;
    broker.stop().await;

    // While the broker is down a backlog builds up, so its lanes take it in batches: commands
    // with a resend and a refusal among them, three acks of `held` and an ack of nothing.
    let cmds: Vec<CommandEnvelope> =
        (0..40).map(|_| command("cmd-batch", "s1", Some("till-1"), menu(), &["alice"], 60_000)).collect();
    let refused = command("cmd-batch", "s1", Some("till-1"), refund(), &["alice", "alice"], 60_000);
    for (i, c) in cmds.iter().enumerate() {
        send(&js, c).await;
        match i {
            10 => send_with_id(&js, &cmds[3], "resend").await,
            20 => send(&js, &refused).await,
            _ => {}
        }
    }
    let ack = edge_ack(&quiet, &held.command_id, Outcome::Applied, "ok");
    for _ in 0..3 {
        publish_ack(&js, &ack).await;
    }
    let stray = uuid::Uuid::now_v7().to_string();
    publish_ack(&js, &edge_ack(&quiet, &stray, Outcome::Applied, "ok")).await;

    let broker = InProcBroker::start(stack.broker_config()).await;
    for c in &cmds {
        statuses.wait(&c.command_id, CommandState::Acked).await;
    }
    statuses.wait(&refused.command_id, CommandState::Rejected).await;
    statuses.wait(&held.command_id, CommandState::Acked).await;

    let ids: Vec<String> = cmds.iter().map(|c| c.command_id.clone()).collect();
    let numbered: Vec<String> =
        sqlx::query_scalar("SELECT command_id FROM command_inbox WHERE device_id = 'till-1' ORDER BY inbox_seq")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(numbered, ids, "inbox entries numbered in issue order, the refused one absent");
    assert_eq!(edge.arrival_order(), ids, "delivered in issue order");
    let queued = log(pool, &cmds[3].command_id).await.iter().filter(|r| r.1 == "queued").count();
    assert_eq!(queued, 1, "the resend is a duplicate");
    let refused_log: Vec<String> = log(pool, &refused.command_id).await.into_iter().map(|r| r.1).collect();
    assert_eq!(refused_log, vec!["rejected"]);
    assert_eq!(ack_effects(pool, &held.command_id).await, vec!["applied_transition", "duplicate", "duplicate"]);
    let seen: Vec<CommandState> = statuses.of(&held.command_id).iter().map(|s| s.1).collect();
    assert_eq!(seen, vec![CommandState::Queued, CommandState::Delivered, CommandState::Acked]);
    assert_eq!(ack_effects(pool, &stray).await, vec!["unknown_command"]);
    beats.abort();
    broker.stop().await;
}

/// Intake delivers a new command in its accepting statement exactly when the actor's plan
/// would: online, and no earlier command of the device still waiting for its first delivery.
#[tokio::test]
async fn intake_delivers_directly_only_what_the_plan_would_deliver_now() {
    use tillsync_actors::policy::InboxParams;
    use tillsync_broker::admin::commands::{accept_many, Accepted, CommandRow};

    let db = tillsync_tests::TestDb::new().await;
    let pool = &db.pool;
    add_tenant(pool, "cmd-direct").await;
    let [waiting, offline, free] = ["till-1", "till-2", "till-3"].map(|d| DeviceAddr::new("cmd-direct", "s1", d));
    for a in [&waiting, &offline, &free] {
        provision(pool, a).await;
    }
    let p = InboxParams { max_attempts: 3, first_retry_ms: 5_000 };
    // The statements commit under a partition's fence, as the broker's do.
    let fence = tillsync_broker::admin::commands::acquire_fence(pool, 0, "test").await.unwrap();
    let accept = |cmds: Vec<CommandEnvelope>| async move {
        let bytes: Vec<Vec<u8>> = cmds.iter().map(codec::encode).collect();
        let rows: Vec<CommandRow<'_>> = cmds.iter().zip(&bytes).map(|(c, b)| CommandRow::of(c, b)).collect();
        let states = |a: &Accepted| match a {
            Accepted::New(logs) => logs.iter().map(|l| (l.state, l.attempt)).collect(),
            other => panic!("not accepted: {other:?}"),
        };
        accept_many(pool, fence, &rows, p).await.unwrap().iter().map(states).collect::<Vec<Vec<_>>>()
    };
    // Accepted while every device is offline: queued, nothing delivered.
    let earlier = command("cmd-direct", "s1", Some("till-1"), menu(), &["alice"], 60_000);
    assert_eq!(accept(vec![earlier.clone()]).await, vec![vec![(CommandState::Queued, 0)]]);
    sqlx::query("UPDATE devices SET online = device_id <> 'till-2'").execute(pool).await.unwrap();

    let cmds: Vec<CommandEnvelope> = [&waiting, &offline, &free, &free]
        .iter()
        .map(|a| command("cmd-direct", "s1", Some(&a.device_id), menu(), &["alice"], 60_000))
        .collect();
    let before = tillsync_broker::now_ms();
    let got = accept(cmds.clone()).await;
    let queued = vec![(CommandState::Queued, 0)];
    let direct = vec![(CommandState::Queued, 0), (CommandState::Delivered, 1)];
    assert_eq!(got, vec![queued.clone(), queued, direct.clone(), direct], "behind an earlier one; offline; free");
    let (state, attempts, next): (String, i32, sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc>) =
        sqlx::query_as("SELECT state, attempts, next_attempt_at FROM command_inbox WHERE command_id = $1")
            .bind(&cmds[2].command_id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("delivered", 1));
    let wait = next.timestamp_millis() - before;
    assert!((5_000..6_000).contains(&wait), "next attempt after the first retry delay, got {wait} ms");
    let log: Vec<String> = log(pool, &cmds[2].command_id).await.into_iter().map(|r| r.1).collect();
    assert_eq!(log, vec!["queued", "delivered"]);
}

/// The command path's batch statements keep one generic plan per connection
/// (`db::connect_keyed`), made on whatever the tables held at the time. Planned on an empty
/// inbox, they must still probe keys once the inbox holds a backlog: accepting and acking one
/// more command reads a few index entries of `command_inbox`, not the 20,000 unfinished ones.
#[tokio::test]
async fn keyed_statements_planned_on_an_empty_inbox_still_probe_keys() {
    use tillsync_actors::policy::InboxParams;
    use tillsync_broker::admin::commands::{accept_many, record_acks, CommandRow};

    let db = tillsync_tests::TestDb::new().await;
    let pool = &db.pool;
    // An ANALYZE would replan the statements and hide a plan made on the empty tables.
    for t in ["command_inbox", "command_log", "commands", "command_acks", "devices"] {
        sqlx::query(&format!("ALTER TABLE {t} SET (autovacuum_enabled = false)")).execute(pool).await.unwrap();
    }
    add_tenant(pool, "cmd-plan").await;
    let quiet = DeviceAddr::new("cmd-plan", "s1", "till-1");
    provision(pool, &quiet).await;
    provision(pool, &DeviceAddr::new("cmd-plan", "s1", "till-busy")).await;
    sqlx::query("UPDATE devices SET online = true").execute(pool).await.unwrap();
    // One connection, so the second round runs the plans the first one made.
    let keyed = tillsync_broker::admin::db::connect_keyed(&db.url, 1).await.unwrap();
    let p = InboxParams { max_attempts: 3, first_retry_ms: 5_000 };
    let fence = tillsync_broker::admin::commands::acquire_fence(pool, 0, "test").await.unwrap();
    let round = |keyed: PgPool| {
        let quiet = quiet.clone();
        async move {
            let cmd = command("cmd-plan", "s1", Some("till-1"), menu(), &["alice"], 60_000);
            let bytes = codec::encode(&cmd);
            let accepted = accept_many(&keyed, fence, &[CommandRow::of(&cmd, &bytes)], p).await.unwrap();
            assert!(matches!(accepted[0], tillsync_broker::admin::commands::Accepted::New(_)));
            let ack = edge_ack(&quiet, &cmd.command_id, Outcome::Applied, "ok");
            let recorded = record_acks(&keyed, fence, &[ack]).await.unwrap();
            assert!(recorded[0].transition.is_some(), "the ack makes its transition");
            // Statistics now, not after the backend has idled for 10 s.
            sqlx::query("SELECT pg_stat_force_next_flush()").execute(&keyed).await.unwrap();
        }
    };
    round(keyed.clone()).await;
    let mut c = pool.acquire().await.unwrap();
    sqlx::query(
        "INSERT INTO command_inbox (tenant_id, store_id, device_id, command_id, state, attempts, next_attempt_at,
                                    expires_at)
         SELECT 'cmd-plan', 's1', 'till-busy', 'backlog-' || g, 'queued', 0, now(), now() + interval '1 hour'
         FROM generate_series(1, 20000) g",
    )
    .execute(&mut *c)
    .await
    .unwrap();
    sqlx::query("SELECT pg_stat_force_next_flush()").execute(&mut *c).await.unwrap();
    drop(c);
    // Index scans and reads of command_inbox as the statistics see them.
    let reads = || async {
        let mut c = pool.acquire().await.unwrap();
        sqlx::query("SELECT pg_stat_clear_snapshot()").execute(&mut *c).await.unwrap();
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT sum(idx_scan)::bigint, sum(idx_tup_read)::bigint FROM pg_stat_user_indexes
             WHERE relname = 'command_inbox'",
        )
        .fetch_one(&mut *c)
        .await
        .unwrap()
    };
    // Settled: the first round's and the backlog insert's statistics are all in (two reads
    // 300 ms apart agree).
    let deadline = std::time::Instant::now() + T;
    let mut last = reads().await;
    let (scans_before, read_before) = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = reads().await;
        if now == last && now.0 >= 2 {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "statistics did not settle: {last:?} then {now:?}");
        last = now;
    };
    round(keyed.clone()).await;
    let (_, read_after) = eventually(T, "the second round's statistics", || async {
        Some(reads().await).filter(|r| r.0 >= scans_before + 2)
    })
    .await;
    let read = read_after - read_before;
    assert!(read < 100, "accepting and acking one command read {read} inbox index entries (20,000 are unfinished)");
    keyed.close().await;
}

#[tokio::test]
async fn policy_rejections_are_recorded_reported_and_never_delivered() {
    let (stack, broker) = setup("cmd-policy", |c| c.command_max_ttl_s = 3_600).await;
    let pool = &stack.db.pool;
    let d = DeviceAddr::new("cmd-policy", "s1", "till-1");
    let edge = FakeEdge::start(&stack, &d, Mode::Apply).await;
    online(pool, &d).await;
    let statuses = Statuses::watch(&stack.nats.client().await, "cmd-policy").await;
    let js = stack.nats.jetstream().await;

    // A names-only approval (protocol 1.x), a signature by nobody registered, bob's name on
    // alice's signature.
    let mut unsigned = command("cmd-policy", "s1", Some("till-1"), refund(), &["alice", "bob"], 60_000);
    unsigned.approvals[1].signature = None;
    let stranger = command("cmd-policy", "s1", Some("till-1"), menu(), &["mallory"], 60_000);
    let mut forged = command("cmd-policy", "s1", Some("till-1"), refund(), &["alice", "bob"], 60_000);
    forged.approvals[1].signature = forged.approvals[0].signature.clone();
    let mut cases = vec![
        ("unsigned_approval", unsigned),
        ("unknown_approver", stranger),
        ("bad_approval_signature", forged),
        ("duplicate_approver", command("cmd-policy", "s1", Some("till-1"), void(), &["alice", "alice"], 60_000)),
        ("self_approval", command("cmd-policy", "s1", Some("till-1"), void(), &["alice", "requester"], 60_000)),
        ("self_approval", command("cmd-policy", "s1", Some("till-1"), menu(), &["requester"], 60_000)),
        ("unknown_device", command("cmd-policy", "s1", Some("till-9"), menu(), &["alice"], 60_000)),
        ("unknown_device", command("cmd-policy", "s-empty", None, menu(), &["alice"], 60_000)),
        ("ttl_too_long", command("cmd-policy", "s1", Some("till-1"), menu(), &["alice"], 7_200_000)),
    ];
    let mut expired = command("cmd-policy", "s1", Some("till-1"), menu(), &["alice"], 60_000);
    expired.issued_at_ms -= 120_000;
    expired.expires_at_ms -= 120_000;
    cases.push(("expired", expired));
    for (_, c) in &cases {
        send(&js, c).await;
    }
    // An unknown kind does not decode, yet its id, tenant and store are readable: rejected too.
    let unknown_kind_id = uuid::Uuid::new_v4().to_string();
    let raw = serde_json::json!({
        "schema_version": SCHEMA_VERSION, "command_id": unknown_kind_id, "tenant_id": "cmd-policy",
        "store_id": "s1", "device_id": "till-1", "body": {"kind": "launch_rockets", "payload": {}},
        "issued_at_ms": 1, "expires_at_ms": 2, "requested_by": "requester", "approvals": []
    });
    let bytes = rmp_named(&raw);
    js.publish(subject::intake("cmd-policy", "s1", Some("till-1")), bytes.into()).await.unwrap().await.unwrap();

    for (code, c) in &cases {
        let s = statuses.wait(&c.command_id, CommandState::Rejected).await;
        assert_eq!(s.code.as_deref(), Some(*code), "{:?}", c.body);
        let rejected: Option<String> = sqlx::query_scalar("SELECT rejected_code FROM commands WHERE command_id = $1")
            .bind(&c.command_id)
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(rejected.as_deref(), Some(*code));
        assert_eq!(log(pool, &c.command_id).await.len(), 1);
    }
    let s = statuses.wait(&unknown_kind_id, CommandState::Rejected).await;
    assert_eq!(s.code.as_deref(), Some("unknown_kind"));
    // The unknown-device detail names what is missing.
    let detail = |i: usize| {
        let id = cases[i].1.command_id.clone();
        let statuses = &statuses;
        async move { statuses.wait(&id, CommandState::Rejected).await.detail }
    };
    assert!(detail(6).await.starts_with("device \"till-9\" is not known"));
    assert!(detail(7).await.starts_with("store \"s-empty\" has no known device"));

    // Too few approvals is no refusal: the command waits, recorded and reported, undelivered.
    let short = command("cmd-policy", "s1", Some("till-1"), refund(), &["alice"], 60_000);
    let none = command("cmd-policy", "s1", Some("till-1"), menu(), &[], 60_000);
    for c in [&short, &none] {
        send(&js, c).await;
        let s = statuses.wait(&c.command_id, CommandState::PendingApproval).await;
        assert_eq!(s.code, None);
        assert!(s.detail.contains("tillsync commands approve"), "{}", s.detail);
    }

    // Never delivered: nothing in any inbox, and a later valid command is the edge's first.
    assert_eq!(stack.db.count("SELECT count(*) FROM command_inbox").await, 0);
    let ok = command("cmd-policy", "s1", Some("till-1"), menu(), &["alice"], 60_000);
    send(&js, &ok).await;
    statuses.wait(&ok.command_id, CommandState::Acked).await;
    assert_eq!(edge.arrival_count(), 1);

    let http = broker.broker.http_addr;
    for code in [
        "unsigned_approval",
        "unknown_approver",
        "bad_approval_signature",
        "duplicate_approver",
        "self_approval",
        "unknown_device",
        "ttl_too_long",
        "expired",
    ] {
        metric_at_least(http, "tillsync_commands_rejected_total", &format!("reason=\"{code}\""), 1.0).await;
    }
    broker.stop().await;
}

/// MessagePack with named fields from JSON, for hand-made bad input.
fn rmp_named(v: &serde_json::Value) -> Vec<u8> {
    codec::encode(v)
}

#[tokio::test]
async fn expires_while_device_offline_and_is_never_delivered() {
    let (stack, broker) = setup("cmd-offline", |_| {}).await;
    let pool = &stack.db.pool;
    let d = DeviceAddr::new("cmd-offline", "s1", "till-1");
    provision(pool, &d).await;
    let statuses = Statuses::watch(&stack.nats.client().await, "cmd-offline").await;
    let js = stack.nats.jetstream().await;

    let cmd = command("cmd-offline", "s1", Some("till-1"), menu(), &["alice"], 3_000);
    send(&js, &cmd).await;
    statuses.wait(&cmd.command_id, CommandState::Queued).await;
    let http = broker.broker.http_addr;
    eventually_eq(T, "inbox depth 1 while offline", Some(1.0), || async {
        metric(&scrape(http).await, "tillsync_command_inbox_depth", "tenant=\"cmd-offline\"")
    })
    .await;
    let s = statuses.wait(&cmd.command_id, CommandState::Expired).await;
    assert_eq!(s.attempt, 0);
    let states: Vec<String> = log(pool, &cmd.command_id).await.into_iter().map(|r| r.1).collect();
    assert_eq!(states, vec!["queued", "expired"], "never delivered");
    assert_eq!(inbox(pool, &cmd.command_id, "till-1").await, Some(("expired".into(), 0, Some("expired".into()))));
    eventually_eq(T, "inbox depth back to 0", Some(0.0), || async {
        metric(&scrape(http).await, "tillsync_command_inbox_depth", "tenant=\"cmd-offline\"")
    })
    .await;
    metric_at_least(http, "tillsync_commands_expired_total", "", 1.0).await;

    // The device comes back: it gets later commands, never the expired one.
    let edge = FakeEdge::start(&stack, &d, Mode::Apply).await;
    online(pool, &d).await;
    let later = command("cmd-offline", "s1", Some("till-1"), menu(), &["alice"], 60_000);
    send(&js, &later).await;
    statuses.wait(&later.command_id, CommandState::Acked).await;
    assert!(edge.arrivals(&cmd.command_id).is_empty());
    assert_eq!(inbox_state(pool, &cmd.command_id, "till-1").await.as_deref(), Some("expired"));
    broker.stop().await;
}

/// The device acks `applied` after the broker expired the command: the state the portal was
/// told stays, the apply is recorded on the entry and a correcting `acked` status follows.
/// (Before issue 15 the late ack was recorded as `after_final` and the portal never heard.)
#[tokio::test]
async fn expires_between_delivery_and_ack_and_a_late_applied_ack_corrects_it() {
    let (stack, broker) = setup("cmd-late", |c| c.command_retry_ms = 5_000).await;
    let pool = &stack.db.pool;
    let d = DeviceAddr::new("cmd-late", "s1", "till-1");
    let edge = FakeEdge::start(&stack, &d, Mode::Ignore).await;
    online(pool, &d).await;
    let statuses = Statuses::watch(&stack.nats.client().await, "cmd-late").await;
    let js = stack.nats.jetstream().await;

    let cmd = command("cmd-late", "s1", Some("till-1"), menu(), &["alice"], 2_000);
    send(&js, &cmd).await;
    statuses.wait(&cmd.command_id, CommandState::Delivered).await;
    eventually(T, "edge received it", || async { (!edge.arrivals(&cmd.command_id).is_empty()).then_some(()) }).await;
    statuses.wait(&cmd.command_id, CommandState::Expired).await;

    // The device acks after expiry: recorded, no transition, a correction.
    publish_ack(&js, &edge_ack(&d, &cmd.command_id, Outcome::Applied, "ok")).await;
    eventually_eq(T, "late ack recorded", vec!["applied_after_final".to_string()], || {
        ack_effects(pool, &cmd.command_id)
    })
    .await;
    assert_eq!(inbox_state(pool, &cmd.command_id, "till-1").await.as_deref(), Some("expired"));
    let states: Vec<String> = log(pool, &cmd.command_id).await.into_iter().map(|r| r.1).collect();
    assert_eq!(states, vec!["queued", "delivered", "expired", "acked"]);
    let fix = statuses.wait(&cmd.command_id, CommandState::Acked).await;
    assert_eq!(fix.corrects, Some(CommandState::Expired));
    // The same ack again corrects nothing twice.
    publish_ack(&js, &edge_ack(&d, &cmd.command_id, Outcome::Applied, "ok")).await;
    eventually_eq(T, "repeat recorded", 2, || async { ack_effects(pool, &cmd.command_id).await.len() }).await;
    assert_eq!(ack_effects(pool, &cmd.command_id).await[1], "duplicate");
    metric_at_least(broker.broker.http_addr, "tillsync_command_applied_after_final_total", "", 1.0).await;
    broker.stop().await;
}

/// A device whose consumer takes every copy and never answers: each copy is republished only
/// once the consumer has acked it without a command ack reaching the broker (the ack was lost),
/// never on a timer, and after `max_attempts` copies the command fails. (Before issue 15 the
/// broker republished on a timer whatever the device did; this test checked that.)
#[tokio::test]
async fn a_copy_taken_without_an_ack_is_republished_until_max_attempts_then_fails() {
    let (stack, broker) = setup("cmd-retry", |c| {
        c.command_retry_ms = 200;
        c.command_max_attempts = 3;
    })
    .await;
    let pool = &stack.db.pool;
    let d = DeviceAddr::new("cmd-retry", "s1", "till-1");
    let edge = FakeEdge::start(&stack, &d, Mode::Ignore).await;
    online(pool, &d).await;
    let statuses = Statuses::watch(&stack.nats.client().await, "cmd-retry").await;
    let js = stack.nats.jetstream().await;

    let cmd = command("cmd-retry", "s1", Some("till-1"), menu(), &["alice"], 60_000);
    send(&js, &cmd).await;
    let failed = statuses.wait(&cmd.command_id, CommandState::Failed).await;
    assert_eq!(failed.code.as_deref(), Some("max_attempts"));
    assert_eq!(failed.attempt, 3);
    let delivered: Vec<i32> =
        log(pool, &cmd.command_id).await.into_iter().filter(|r| r.1 == "delivered").map(|r| r.2).collect();
    assert_eq!(delivered, vec![1, 2, 3]);
    eventually_eq(T, "edge saw three attempts", vec![1, 2, 3], || async { edge.arrivals(&cmd.command_id) }).await;
    assert_eq!(inbox(pool, &cmd.command_id, "till-1").await, Some(("failed".into(), 3, Some("max_attempts".into()))));
    let http = broker.broker.http_addr;
    metric_at_least(http, "tillsync_command_republished_total", "why=\"ack_lost\"", 2.0).await;
    metric_at_least(http, "tillsync_commands_failed_total", "code=\"max_attempts\"", 1.0).await;

    // A device that reports failure ends the command failed with the device's code.
    edge.set_mode(Mode::Ignore);
    let second = command("cmd-retry", "s1", Some("till-1"), menu(), &["alice"], 60_000);
    send(&js, &second).await;
    statuses.wait(&second.command_id, CommandState::Delivered).await;
    publish_ack(&js, &edge_ack(&d, &second.command_id, Outcome::Rejected, "precondition_failed")).await;
    let f = statuses.wait(&second.command_id, CommandState::Failed).await;
    assert_eq!(f.code.as_deref(), Some("precondition_failed"));
    broker.stop().await;
}

#[tokio::test]
async fn broker_kill_9_mid_delivery_loses_nothing_and_the_device_applies_once() {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "cmd-kill").await;
    let pool = &stack.db.pool;
    let mut config = stack.broker_config();
    config.command_retry_ms = 1_500;
    let mut broker = BrokerProc::start(&config);
    let d = DeviceAddr::new("cmd-kill", "s1", "till-1");
    let edge = FakeEdge::start(&stack, &d, Mode::LoseAcks).await;
    online(pool, &d).await;
    let statuses = Statuses::watch(&stack.nats.client().await, "cmd-kill").await;
    let js = stack.nats.jetstream().await;

    let cmd = command("cmd-kill", "s1", Some("till-1"), refund(), &["alice", "bob"], 60_000);
    send(&js, &cmd).await;
    eventually(T, "device applied it (ack lost)", || async { (edge.applied(&cmd.command_id) == 1).then_some(()) })
        .await;
    broker.kill();
    let before = inbox(pool, &cmd.command_id, "till-1").await.unwrap();
    assert_eq!(before.0, "delivered");

    // The device's acks get through again; a fresh broker redelivers, the device dedupes.
    edge.set_mode(Mode::Apply);
    let _broker = BrokerProc::start(&config);
    eventually_eq(T, "acked after restart", Some("acked".to_string()), || inbox_state(pool, &cmd.command_id, "till-1"))
        .await;
    let after = inbox(pool, &cmd.command_id, "till-1").await.unwrap();
    assert!(after.1 > before.1, "attempts continue from Postgres: {} then {}", before.1, after.1);
    assert_eq!(edge.applied(&cmd.command_id), 1, "the device never applies twice");
    let attempts: Vec<i32> =
        log(pool, &cmd.command_id).await.into_iter().filter(|r| r.1 == "delivered").map(|r| r.2).collect();
    assert_eq!(attempts, (1..=after.1).collect::<Vec<_>>(), "one log row per attempt, none repeated");
    statuses.wait(&cmd.command_id, CommandState::Acked).await;
    // Marks are committed after the status goes out, and the killed broker's unmarked rows are
    // resent by the sweeper once 3 s old: the outbox empties, but not at the `acked` instant.
    eventually_eq(T, "every status published", 0, || {
        stack.db.count("SELECT count(*) FROM command_log WHERE NOT published")
    })
    .await;
}

#[tokio::test]
async fn store_wide_command_fans_out_to_every_device_of_the_store() {
    let (stack, broker) = setup("cmd-fan", |_| {}).await;
    let pool = &stack.db.pool;
    let mut edges = Vec::new();
    for dev in ["till-1", "till-2", "kds-1"] {
        let a = DeviceAddr::new("cmd-fan", "s1", dev);
        edges.push(FakeEdge::start(&stack, &a, Mode::Apply).await);
        online(pool, &a).await;
    }
    let other = DeviceAddr::new("cmd-fan", "s2", "till-1");
    let other_edge = FakeEdge::start(&stack, &other, Mode::Apply).await;
    online(pool, &other).await;
    let statuses = Statuses::watch(&stack.nats.client().await, "cmd-fan").await;
    let js = stack.nats.jetstream().await;

    let cmd = command("cmd-fan", "s1", None, menu(), &["alice"], 60_000);
    send(&js, &cmd).await;
    eventually_eq(T, "three acked entries", 3, || async {
        statuses.of(&cmd.command_id).into_iter().filter(|s| s.1 == CommandState::Acked).count()
    })
    .await;
    for e in &edges {
        assert_eq!(e.applied(&cmd.command_id), 1, "{}", e.addr.device_id);
        assert_eq!(inbox_state(pool, &cmd.command_id, &e.addr.device_id).await.as_deref(), Some("acked"));
    }
    assert_eq!(other_edge.arrival_count(), 0, "another store's device gets nothing");
    let mut devices: Vec<String> =
        statuses.of(&cmd.command_id).into_iter().filter(|s| s.1 == CommandState::Queued).filter_map(|s| s.0).collect();
    devices.sort();
    assert_eq!(devices, vec!["kds-1", "till-1", "till-2"]);
    let stored: Option<String> = sqlx::query_scalar("SELECT device_id FROM commands WHERE command_id = $1")
        .bind(&cmd.command_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(stored, None, "the command row stays store-wide");
    broker.stop().await;
}

#[tokio::test]
async fn unknown_and_undecodable_acks_and_bad_intake_are_recorded_without_a_crash() {
    let (stack, broker) = setup("cmd-odd", |_| {}).await;
    let pool = &stack.db.pool;
    let d = DeviceAddr::new("cmd-odd", "s1", "till-1");
    let edge = FakeEdge::start(&stack, &d, Mode::Apply).await;
    online(pool, &d).await;
    let statuses = Statuses::watch(&stack.nats.client().await, "cmd-odd").await;
    let js = stack.nats.jetstream().await;

    let ghost = uuid::Uuid::new_v4().to_string();
    publish_ack(&js, &edge_ack(&d, &ghost, Outcome::Applied, "ok")).await;
    eventually_eq(T, "unknown ack recorded", vec!["unknown_command".to_string()], || ack_effects(pool, &ghost)).await;
    js.publish(subject::command_acks(&d), b"not msgpack".to_vec().into()).await.unwrap().await.unwrap();
    js.publish(subject::intake("cmd-odd", "s1", Some("till-1")), b"\xc1garbage".to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    eventually_eq(T, "bad ack and bad intake quarantined", 2, || {
        stack.db.count("SELECT count(*) FROM quarantine WHERE stream IN ('TILLSYNC_COMMAND_ACKS', 'TILLSYNC_INTAKE')")
    })
    .await;

    // Still working.
    let cmd = command("cmd-odd", "s1", Some("till-1"), menu(), &["alice"], 60_000);
    send(&js, &cmd).await;
    statuses.wait(&cmd.command_id, CommandState::Acked).await;
    // A resent ack is a duplicate, with no second transition.
    publish_ack(&js, &edge_ack(&d, &cmd.command_id, Outcome::Applied, "ok")).await;
    eventually_eq(T, "duplicate ack recorded", vec!["applied_transition".to_string(), "duplicate".to_string()], || {
        ack_effects(pool, &cmd.command_id)
    })
    .await;
    assert_eq!(edge.applied(&cmd.command_id), 1);
    assert_eq!(log(pool, &cmd.command_id).await.len(), 3);
    broker.stop().await;
}

/// Runs the `tillsync` CLI against this stack; returns (exit code, stdout).
pub(crate) async fn cli(stack: &Stack, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(tillsync_tests::bin_path("tillsync"))
        .args(args)
        .env("NATS_URL", stack.nats.url())
        .env("DATABASE_URL", &stack.db.url)
        .output()
        .await
        .expect("run tillsync");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn cli_sends_waits_shows_and_lists() {
    let (stack, broker) = setup("cmd-cli", |_| {}).await;
    let d = DeviceAddr::new("cmd-cli", "s1", "till-1");
    let edge = FakeEdge::start(&stack, &d, Mode::Apply).await;
    online(&stack.db.pool, &d).await;

    // The approvers' seed files: alice and bob are registered (test keys), carol is added here.
    let keys = tempfile::tempdir().unwrap();
    let seed_file = |name: &str, seed: &str| {
        let path = keys.path().join(format!("{name}.nk"));
        std::fs::write(&path, seed).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        path.to_str().unwrap().to_string()
    };
    let alice = seed_file("alice", tillsync_schemas::approval::TEST_APPROVERS[0].1);
    let bob = seed_file("bob", tillsync_schemas::approval::TEST_APPROVERS[1].1);
    let carol = keys.path().join("carol.nk").to_str().unwrap().to_string();
    assert_eq!(cli(&stack, &["keys", "generate", &carol]).await.0, 0);

    let base =
        ["commands", "send", "--tenant", "cmd-cli", "--store", "s1", "--device", "till-1", "--requested-by", "rita"];
    let approve_as = format!("alice={alice}");
    let menu = ["--kind", "apply_menu_publish", "--menu-id", "spring", "--version", "4", "--approve-as", &approve_as];
    let args: Vec<&str> = base.iter().chain(&menu).chain(&["--wait", "--wait-s", "15", "--json"]).copied().collect();
    let (code, out) = cli(&stack, &args).await;
    assert_eq!(code, 0, "{out}");
    let sent: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sent["outcome"]["till-1"], "acked");
    let id = sent["command_id"].as_str().unwrap().to_string();
    assert_eq!(edge.applied(&id), 1);

    let (code, out) = cli(&stack, &["commands", "show", &id, "--json"]).await;
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    let states: Vec<&str> = shown["log"].as_array().unwrap().iter().map(|l| l["state"].as_str().unwrap()).collect();
    assert_eq!(states, vec!["queued", "delivered", "acked"]);
    assert_eq!(shown["acks"][0]["effect"], "applied_transition");
    let (code, out) = cli(&stack, &["commands", "show", &id]).await;
    assert_eq!(code, 0);
    assert!(out.contains("History") && out.contains("acked"), "{out}");

    // Names alone are refused before anything is sent.
    let named: Vec<&str> = base
        .iter()
        .chain(&["--kind", "apply_menu_publish", "--menu-id", "m", "--version", "1"])
        .chain(&["--approver", "alice"])
        .copied()
        .collect();
    assert_eq!(cli(&stack, &named).await.0, 2);

    // A void with one approval waits; carol, registered here, gives the second: delivered.
    let void = ["--kind", "void_order", "--order-id", "o-1", "--reason", "test", "--approve-as", &approve_as, "--json"];
    let send_void = || async {
        let args: Vec<&str> = base.iter().chain(&void).copied().collect();
        let (code, out) = cli(&stack, &args).await;
        assert_eq!(code, 0, "{out}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["command_id"].as_str().unwrap().to_string()
    };
    let waiting = send_void().await;
    let pending = ["commands", "list", "--tenant", "cmd-cli", "--state", "pending_approval", "--json"];
    eventually_eq(T, "one command pending approval", 1, || async {
        let (_, out) = cli(&stack, &pending).await;
        serde_json::from_str::<serde_json::Value>(&out).map_or(0, |v| v.as_array().map_or(0, Vec::len))
    })
    .await;
    let (code, out) = cli(&stack, &["approvers", "add", "--tenant", "cmd-cli", "carol", "--key-file", &carol]).await;
    assert_eq!(code, 0, "{out}");
    let (_, out) = cli(&stack, &["approvers", "list", "--tenant", "cmd-cli", "--json"]).await;
    assert!(out.contains("\"carol\""), "{out}");
    let (code, out) =
        cli(&stack, &["commands", "approve", &waiting, "--approver", "carol", "--key-file", &carol]).await;
    assert_eq!(code, 0, "{out}");
    eventually_eq(T, "the approved void applied", 1, || async { edge.applied(&waiting) }).await;
    // Approving again: it no longer waits.
    let again = cli(&stack, &["commands", "approve", &waiting, "--approver", "bob", "--key-file", &bob]).await;
    assert_eq!(again.0, 5, "{}", again.1);

    // bob rejects the next one: rejected, never delivered. (The send returns when the intake
    // publish is stored; the broker records it as waiting a moment later.)
    let rejected = send_void().await;
    eventually(T, "the second void pending approval", || async {
        let (_, out) = cli(&stack, &pending).await;
        out.contains(&rejected).then_some(())
    })
    .await;
    let (code, out) = cli(&stack, &["commands", "reject", &rejected, "--approver", "bob", "--key-file", &bob]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&stack, &["commands", "list", "--tenant", "cmd-cli", "--state", "rejected", "--json"]).await;
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["code"], "approval_rejected");
    assert_eq!(edge.applied(&rejected), 0);

    // A revoked approver's signature counts for nothing (refused before sending: exit 3).
    assert_eq!(cli(&stack, &["approvers", "revoke", "--tenant", "cmd-cli", "carol"]).await.0, 0);
    let third = send_void().await;
    eventually(T, "the third void pending approval", || async {
        let (_, out) = cli(&stack, &pending).await;
        out.contains(&third).then_some(())
    })
    .await;
    let late = cli(&stack, &["commands", "approve", &third, "--approver", "carol", "--key-file", &carol]).await;
    assert_eq!(late.0, 3, "{}", late.1);
    assert_eq!(cli(&stack, &["approvers", "revoke", "--tenant", "cmd-cli", "nobody"]).await.0, 4);

    // Cancelled while waiting for approval: listed as cancelled, not as rejected.
    let (code, out) = cli(&stack, &["commands", "cancel", &third, "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let listed = |state: &'static str| {
        let stack = &stack;
        async move {
            let (code, out) =
                cli(stack, &["commands", "list", "--tenant", "cmd-cli", "--state", state, "--json"]).await;
            assert_eq!(code, 0, "{out}");
            serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().clone()
        }
    };
    let cancelled = listed("cancelled").await;
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(
        (cancelled[0]["command_id"].as_str(), &cancelled[0]["code"]),
        (Some(third.as_str()), &"cancelled".into())
    );
    assert_eq!(listed("rejected").await.len(), 1, "only bob's rejection");

    let (code, _) = cli(&stack, &["commands", "show", &uuid::Uuid::new_v4().to_string()]).await;
    assert_eq!(code, 4, "not found");
    broker.stop().await;
}
