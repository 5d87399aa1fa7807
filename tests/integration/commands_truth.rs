//! Commands tell the truth (issue 15), with real edge bridges (`tillsync-edge run` as child
//! processes, stopped with kill -9), a real nats-server and Postgres:
//!
//! - a bridge offline longer than every retry delay applies its command once and it ends
//!   `acked` (no attempts are spent while it cannot receive them);
//! - `tillsync commands cancel` before application (never applied, no copy left in the
//!   stream) and after it (says so, exit 5), and of an unknown id (exit 4);
//! - a command that ended `expired` or `failed` is never applied when the bridge returns;
//! - a command applied after it expired is recorded so and corrected by a further status.

use std::path::{Path, PathBuf};

use tillsync_broker::config::Config;
use tillsync_schemas::{codec, streams, subject, CommandBody, CommandEnvelope, CommandState, DeviceAddr};
use tillsync_tests::{eventually, eventually_eq, InProcBroker, Stack};

use crate::commands::{
    ack_effects, cli, command, inbox, inbox_state, metric_at_least, online, provision, send, setup, Statuses, T,
};
use crate::edge::support::{self as edge_support, handled, recording_handler, EdgeProc};

/// A tenant with one provisioned device, a broker (test timings, `tune` applied), a bridge
/// config with a recording handler, and the tenant's status messages.
struct World {
    stack: Stack,
    broker: InProcBroker,
    addr: DeviceAddr,
    edge: tillsync_edge::Config,
    handler: PathBuf,
    statuses: Statuses,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(tenant: &str, tune: impl FnOnce(&mut Config)) -> World {
        let (stack, broker) = setup(tenant, tune).await;
        let addr = DeviceAddr::new(tenant, "s1", "till-1");
        provision(&stack.db.pool, &addr).await;
        let dir = tempfile::tempdir().unwrap();
        let handler = recording_handler(dir.path());
        let mut edge = edge_support::config(&stack, &addr, dir.path());
        edge.handler_exec = Some(handler.clone());
        // A fixed port: the bridge is a child process, restarted on the same address.
        edge.http_addr = tillsync_tests::free_addr();
        let statuses = Statuses::watch(&stack.nats.client().await, tenant).await;
        World { stack, broker, addr, edge, handler, statuses, _dir: dir }
    }

    /// Starts the bridge and waits until the broker sees the device online.
    async fn bridge(&self) -> EdgeProc {
        let edge = EdgeProc::start(&self.edge);
        edge.wait_ready().await;
        online(&self.stack.db.pool, &self.addr).await;
        edge
    }

    fn cmd(&self, ttl_ms: i64) -> CommandEnvelope {
        let body =
            CommandBody::UserUpsert { user_id: "u-7".into(), display_name: "Kim".into(), role: "cashier".into() };
        command(&self.addr.tenant_id, "s1", Some("till-1"), body, &["alice"], ttl_ms)
    }

    async fn send(&self, cmd: &CommandEnvelope) {
        send(&self.stack.nats.jetstream().await, cmd).await;
    }

    /// Commands the bridge's handler ran, by id.
    fn handled_ids(&self) -> Vec<String> {
        handled(&self.handler).iter().map(|c| c["command_id"].as_str().unwrap_or_default().to_string()).collect()
    }

    /// A command sent now and acked: the bridge has drained everything before it.
    async fn marker(&self) -> String {
        let m = self.cmd(60_000);
        self.send(&m).await;
        self.statuses.wait(&m.command_id, CommandState::Acked).await;
        m.command_id
    }

    fn states(&self, command_id: &str) -> Vec<CommandState> {
        self.statuses.of(command_id).into_iter().map(|s| s.1).collect()
    }
}

/// Stream sequences of the copies of `command_id` in the device's part of TILLSYNC_COMMANDS.
async fn copies(js: &async_nats::jetstream::Context, addr: &DeviceAddr, command_id: &str) -> Vec<u64> {
    let stored = edge_support::stored(js, streams::COMMANDS, subject::commands(addr)).await;
    stored
        .iter()
        .filter(|m| codec::decode_command(&m.subject, &m.payload).unwrap().command_id == command_id)
        .map(|m| m.info().unwrap().stream_sequence)
        .collect()
}

/// NATS loses the write: the command's copies vanish from the stream after their PubAck.
async fn lose_copies(js: &async_nats::jetstream::Context, addr: &DeviceAddr, command_id: &str) {
    let stream = js.get_stream(streams::COMMANDS).await.unwrap();
    let seqs = copies(js, addr, command_id).await;
    assert!(!seqs.is_empty(), "a copy to lose");
    for seq in seqs {
        stream.delete_message(seq).await.unwrap();
    }
}

/// A handler that takes `secs` before it records the command and succeeds.
fn slow_recording_handler(dir: &Path, secs: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("slow-record.sh");
    std::fs::write(&path, format!("#!/bin/sh\nsleep {secs}\ncat >> \"$0.log\"\necho >> \"$0.log\"\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The scenario at test timings: a bridge stopped right after the broker published a
/// command to it stays away longer than every former retry delay (0.5 + 1 + 2 s with three
/// attempts) and than the offline cutoff (5 s). Before, the broker republished on a timer, ran
/// out of attempts, reported `failed` / `max_attempts`, and the returning bridge applied the
/// command anyway. Now nothing is spent while it is away: it applies the command once when it
/// returns and the command ends `acked`.
#[tokio::test]
async fn a_bridge_offline_longer_than_every_retry_delay_applies_its_command_once_and_it_ends_acked() {
    let w = World::start("truth-away", |c| c.command_max_attempts = 3).await;
    let pool = &w.stack.db.pool;
    let mut edge = w.bridge().await;
    edge.kill();
    let cmd = w.cmd(120_000);
    w.send(&cmd).await;
    w.statuses.wait(&cmd.command_id, CommandState::Delivered).await;
    let is_online = || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT online FROM devices WHERE device_id = 'till-1' AND tenant_id = 'truth-away'",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    };
    eventually_eq(T, "the broker saw the device go offline", false, is_online).await;
    assert_eq!(
        inbox(pool, &cmd.command_id, "till-1").await,
        Some(("delivered".into(), 1, None)),
        "one copy, waiting in the device's stream; no attempt spent while the device is away"
    );
    assert_eq!(copies(&w.stack.nats.jetstream().await, &w.addr, &cmd.command_id).await.len(), 1);

    let _edge = w.bridge().await;
    w.statuses.wait(&cmd.command_id, CommandState::Acked).await;
    assert_eq!(w.handled_ids(), vec![cmd.command_id.clone()], "the handler ran once");
    assert_eq!(w.states(&cmd.command_id), vec![CommandState::Queued, CommandState::Delivered, CommandState::Acked]);
    assert_eq!(inbox(pool, &cmd.command_id, "till-1").await, Some(("acked".into(), 1, Some("ok".into()))));
    assert_eq!(ack_effects(pool, &cmd.command_id).await, vec!["applied_transition"]);
    // The acked command's copy is deleted from the stream too.
    let js = w.stack.nats.jetstream().await;
    eventually_eq(T, "no copy left", 0, || async { copies(&js, &w.addr, &cmd.command_id).await.len() }).await;
    w.broker.stop().await;
}

/// Cancel before the device applied it: never applied afterwards, `cancelled` reported, the
/// stream holds no copy. Cancel after: says it was applied, exit 5, the state stays `acked`.
/// Cancel of an unknown id: exit 4.
#[tokio::test]
async fn cancel_before_application_is_never_applied_and_after_application_says_so() {
    let w = World::start("truth-cancel", |_| {}).await;
    let pool = &w.stack.db.pool;
    let js = w.stack.nats.jetstream().await;
    let mut edge = w.bridge().await;
    edge.kill();
    let cmd = w.cmd(120_000);
    w.send(&cmd).await;
    w.statuses.wait(&cmd.command_id, CommandState::Delivered).await;
    assert_eq!(copies(&js, &w.addr, &cmd.command_id).await.len(), 1, "a copy waits for the device");

    let (code, out) = cli(&w.stack, &["commands", "cancel", &cmd.command_id, "--requested-by", "rita"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("cancelled: it will not be applied"), "{out}");
    let s = w.statuses.wait(&cmd.command_id, CommandState::Cancelled).await;
    assert_eq!(s.code.as_deref(), Some("cancelled"));
    assert!(s.detail.contains("rita"), "{}", s.detail);
    assert_eq!(inbox_state(pool, &cmd.command_id, "till-1").await.as_deref(), Some("cancelled"));
    assert!(copies(&js, &w.addr, &cmd.command_id).await.is_empty(), "no copy left to pull");

    let _edge = w.bridge().await;
    let marker = w.marker().await;
    assert_eq!(w.handled_ids(), vec![marker.clone()], "the cancelled command never reached the handler");
    assert_eq!(inbox_state(pool, &cmd.command_id, "till-1").await.as_deref(), Some("cancelled"));

    let (code, out) = cli(&w.stack, &["commands", "cancel", &marker]).await;
    assert_eq!(code, 5, "too late: {out}");
    assert!(out.contains("already applied"), "{out}");
    let (code, out) = cli(&w.stack, &["commands", "cancel", &marker, "--json"]).await;
    assert_eq!(code, 5, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["copies"][0]["state"], "acked");
    assert_eq!(answer["copies"][0]["cancelled"], false);
    assert_eq!(inbox_state(pool, &marker, "till-1").await.as_deref(), Some("acked"));
    assert_eq!(w.handled_ids(), vec![marker.clone()]);

    // Cancelling again changes nothing and says it is cancelled.
    let (code, out) = cli(&w.stack, &["commands", "cancel", &cmd.command_id]).await;
    assert_eq!(code, 0, "{out}");
    let (code, _) = cli(&w.stack, &["commands", "cancel", &uuid::Uuid::new_v4().to_string()]).await;
    assert_eq!(code, 4, "unknown command");

    let http = w.broker.broker.http_addr;
    metric_at_least(http, "tillsync_commands_cancelled_total", "", 1.0).await;
    metric_at_least(http, "tillsync_command_cancels_refused_total", "why=\"final\"", 2.0).await;
    w.broker.stop().await;
}

/// A command that ended `expired`, and one that ended `failed` because NATS lost every copy
/// the broker published, are never applied when the bridge returns; neither leaves a copy in
/// the stream.
#[tokio::test]
async fn a_command_that_ended_expired_or_failed_is_never_applied_later() {
    let w = World::start("truth-final", |c| c.command_max_attempts = 2).await;
    let js = w.stack.nats.jetstream().await;
    let mut edge = w.bridge().await;
    edge.kill();

    let expired = w.cmd(3_000);
    w.send(&expired).await;
    w.statuses.wait(&expired.command_id, CommandState::Delivered).await;
    w.statuses.wait(&expired.command_id, CommandState::Expired).await;
    assert!(copies(&js, &w.addr, &expired.command_id).await.is_empty());

    let failed = w.cmd(120_000);
    w.send(&failed).await;
    w.statuses.wait(&failed.command_id, CommandState::Delivered).await;
    lose_copies(&js, &w.addr, &failed.command_id).await;
    eventually(T, "the lost copy is published again", || async {
        w.statuses.of(&failed.command_id).iter().any(|s| s.1 == CommandState::Delivered && s.2 == 2).then_some(())
    })
    .await;
    eventually(T, "the second copy is in the stream", || async {
        (copies(&js, &w.addr, &failed.command_id).await.len() == 1).then_some(())
    })
    .await;
    lose_copies(&js, &w.addr, &failed.command_id).await;
    let f = w.statuses.wait(&failed.command_id, CommandState::Failed).await;
    assert_eq!((f.code.as_deref(), f.attempt), (Some("max_attempts"), 2));
    assert!(copies(&js, &w.addr, &failed.command_id).await.is_empty());
    metric_at_least(w.broker.broker.http_addr, "tillsync_command_republished_total", "why=\"lost\"", 1.0).await;

    let _edge = w.bridge().await;
    let marker = w.marker().await;
    assert_eq!(w.handled_ids(), vec![marker], "neither ended command reached the handler");
    for c in [&expired, &failed] {
        let final_state = w.states(&c.command_id).last().copied();
        assert!(matches!(final_state, Some(CommandState::Expired | CommandState::Failed)), "{final_state:?}");
        assert!(w.statuses.of(&c.command_id).iter().all(|s| s.1 != CommandState::Acked), "no correction needed");
    }
    w.broker.stop().await;
}

/// The device took the command in time but its handler finished after the broker expired it:
/// the apply cannot be prevented, so it is recorded on the command and the portal gets a
/// further `acked` status that names the `expired` it corrects.
#[tokio::test]
async fn a_command_applied_after_it_expired_is_recorded_and_corrected() {
    let mut w = World::start("truth-late", |_| {}).await;
    w.handler = slow_recording_handler(w._dir.path(), 3);
    w.edge.handler_exec = Some(w.handler.clone());
    w.edge.handler_timeout_ms = 10_000;
    let pool = &w.stack.db.pool;
    let _edge = w.bridge().await;

    let cmd = w.cmd(1_500);
    w.send(&cmd).await;
    w.statuses.wait(&cmd.command_id, CommandState::Expired).await;
    let fix = w.statuses.wait(&cmd.command_id, CommandState::Acked).await;
    assert_eq!(fix.corrects, Some(CommandState::Expired));
    assert_eq!(fix.code.as_deref(), Some("ok"));
    assert_eq!(w.handled_ids(), vec![cmd.command_id.clone()]);
    let logged: Vec<String> = crate::commands::log(pool, &cmd.command_id).await.into_iter().map(|r| r.1).collect();
    assert_eq!(logged, vec!["queued", "delivered", "expired", "acked"], "the correction follows what it corrects");
    assert_eq!(
        inbox_state(pool, &cmd.command_id, "till-1").await.as_deref(),
        Some("expired"),
        "what the portal was told first"
    );
    assert_eq!(ack_effects(pool, &cmd.command_id).await, vec!["applied_after_final"]);

    let (code, out) = cli(&w.stack, &["commands", "show", &cmd.command_id, "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(shown["inbox"][0]["applied_after_final_at"].is_string(), "{shown}");
    let last = shown["log"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["state"].as_str(), last["corrects"].as_str()), (Some("acked"), Some("expired")));
    let (_, text) = cli(&w.stack, &["commands", "show", &cmd.command_id]).await;
    assert!(text.contains("after the portal was told expired"), "{text}");
    metric_at_least(w.broker.broker.http_addr, "tillsync_command_applied_after_final_total", "", 1.0).await;
    w.broker.stop().await;
}
