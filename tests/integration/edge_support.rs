//! Helpers for the edge bridge tests: configs, command envelopes as the broker publishes them,
//! reading command acks back from JetStream, handler scripts, and the bridge binary as a
//! child process (for kill -9).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::HeaderMap;
use futures::StreamExt;
use tillsync_edge::{Bridge, Config, Status};
use tillsync_schemas::{
    codec, signature, streams, subject, CommandAck, CommandBody, CommandEnvelope, DeviceAddr, SCHEMA_VERSION,
};
use tillsync_tests::{bin_path, eventually, Stack};

pub const T: Duration = Duration::from_secs(20);

pub fn config(stack: &Stack, addr: &DeviceAddr, dir: &Path) -> Config {
    Config::for_tests(addr, &stack.nats.url(), dir.join("edge.db"))
}

pub async fn wait_connected(bridge: &Bridge) {
    eventually(T, "bridge connected to NATS", || async {
        bridge.status().await.ok().filter(|s| s.connection == "connected").map(|_| ())
    })
    .await;
}

/// Waits until the bridge's command subscriptions are in place on the server: a command
/// published after this reaches it live (one published before reaches it only if the broker
/// knows it, by catch-up).
pub async fn wait_commands_live(bridge: &Bridge) {
    eventually(T, "bridge subscribed to its commands", || async {
        let text = bridge.metrics_text();
        (tillsync_tests::metric(&text, "tillsync_edge_commands_subscribed", "") == Some(1.0)).then_some(())
    })
    .await;
}

pub async fn bridge_status(bridge: &Bridge) -> Status {
    bridge.status().await.expect("status")
}

/// A settings patch to `addr`, valid for `ttl_ms` from `issued_at_ms`.
pub fn settings_patch(addr: &DeviceAddr, revision: u64, issued_at_ms: i64, ttl_ms: i64) -> CommandEnvelope {
    CommandEnvelope {
        schema_version: SCHEMA_VERSION,
        command_id: uuid::Uuid::now_v7().to_string(),
        tenant_id: addr.tenant_id.clone(),
        store_id: addr.store_id.clone(),
        device_id: Some(addr.device_id.clone()),
        body: CommandBody::SettingsPatch {
            revision,
            settings: [("receipt_footer".to_string(), "Thanks!".to_string())].into(),
        },
        issued_at_ms,
        expires_at_ms: issued_at_ms + ttl_ms,
        requested_by: "alice".into(),
        approvals: vec![],
        if_match: None,
    }
}

/// Publishes delivery `attempt` of a command on the device's command subject, as the broker does
/// (signed with the test key every test bridge trusts).
pub async fn publish_command(js: &async_nats::jetstream::Context, cmd: &CommandEnvelope, attempt: u32) {
    let addr = DeviceAddr::new(&cmd.tenant_id, &cmd.store_id, cmd.device_id.as_deref().unwrap());
    let payload = codec::encode(cmd);
    let sig = signature::sign(&test_key(), &subject::commands(&addr), &payload);
    let msg =
        Delivery { subject: subject::commands(&addr), payload, key: Some(test_key().public_key()), sig: Some(sig) };
    msg.publish(js, &cmd.command_id, attempt).await;
}

/// The signing key of every test broker ([`signature::TEST_SEED`]).
pub fn test_key() -> nkeys::KeyPair {
    nkeys::KeyPair::from_seed(signature::TEST_SEED).unwrap()
}

/// A command message as it reaches a device, taken apart so a test can alter or move it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subject: String,
    pub payload: Vec<u8>,
    /// `Tillsync-Key`, `Tillsync-Signature`; None leaves the header out.
    pub key: Option<String>,
    pub sig: Option<String>,
}

impl Delivery {
    /// Publishes it as delivery `attempt` (the attempt makes the `Nats-Msg-Id`, so a second
    /// attempt of the same bytes is stored again, as a broker republish is).
    pub async fn publish(&self, js: &async_nats::jetstream::Context, command_id: &str, attempt: u32) {
        let device = self.subject.rsplit('.').next().unwrap();
        let mut h = HeaderMap::new();
        h.insert(streams::HEADER_MSG_ID, format!("{command_id}:{device}:{attempt}").as_str());
        h.insert(streams::HEADER_CONTENT_TYPE, streams::CONTENT_TYPE);
        h.insert(streams::HEADER_ATTEMPT, attempt.to_string().as_str());
        if let Some(key) = &self.key {
            h.insert(signature::HEADER_KEY, key.as_str());
        }
        if let Some(sig) = &self.sig {
            h.insert(signature::HEADER_SIGNATURE, sig.as_str());
        }
        js.publish_with_headers(self.subject.clone(), h, self.payload.clone().into()).await.unwrap().await.unwrap();
    }
}

/// Provisions `d` in the broker's database, so a portal command to it is accepted.
pub async fn provision(stack: &Stack, d: &DeviceAddr) {
    sqlx::query("INSERT INTO devices (tenant_id, store_id, device_id, provisioned) VALUES ($1, $2, $3, true)")
        .bind(&d.tenant_id)
        .bind(&d.store_id)
        .bind(&d.device_id)
        .execute(&stack.db.pool)
        .await
        .unwrap();
    tillsync_tests::register_test_approvers(&stack.db.pool, &d.tenant_id).await;
}

/// Publishes an approved settings patch to `d` on intake, as the portal does; returns it.
pub async fn send_via_portal(js: &async_nats::jetstream::Context, d: &DeviceAddr, revision: u64) -> CommandEnvelope {
    let mut cmd = settings_patch(d, revision, tillsync_edge::now_ms(), 60_000);
    tillsync_tests::approve(&mut cmd, &["bob"]);
    let mut h = HeaderMap::new();
    h.insert(streams::HEADER_MSG_ID, cmd.command_id.as_str());
    let intake = subject::intake(&d.tenant_id, &d.store_id, Some(&d.device_id));
    js.publish_with_headers(intake, h, codec::encode(&cmd).into()).await.unwrap().await.unwrap();
    cmd
}

/// Every message stored in `stream` on `subject`, oldest first (an ephemeral consumer, no acks).
pub async fn stored(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: String,
) -> Vec<async_nats::jetstream::Message> {
    let stream = js.get_stream(stream).await.unwrap();
    let mut consumer = stream
        .create_consumer(pull::Config {
            // Partitioned streams store the subject with the partition appended.
            filter_subjects: vec![subject.clone(), format!("{subject}.*")],
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.info().await.unwrap().num_pending as usize;
    if pending == 0 {
        return Vec::new();
    }
    let mut batch = consumer.fetch().max_messages(pending).expires(Duration::from_secs(2)).messages().await.unwrap();
    let mut out = Vec::new();
    while let Some(Ok(m)) = batch.next().await {
        out.push(m);
        if out.len() == pending {
            break;
        }
    }
    out
}

/// Every command ack stored for `addr` in TILLSYNC_COMMAND_ACKS, oldest first.
pub async fn acks(js: &async_nats::jetstream::Context, addr: &DeviceAddr) -> Vec<CommandAck> {
    let stored = stored(js, streams::COMMAND_ACKS, subject::command_acks(addr)).await;
    stored.iter().map(|m| codec::decode_command_ack(&m.subject, &m.payload).unwrap()).collect()
}

/// Waits until exactly one ack for `command_id` is stored, and returns it.
pub async fn the_ack(js: &async_nats::jetstream::Context, addr: &DeviceAddr, command_id: &str) -> CommandAck {
    eventually(T, "a command ack", || async {
        let found: Vec<_> = acks(js, addr).await.into_iter().filter(|a| a.command_id == command_id).collect();
        assert!(found.len() <= 1, "more than one ack for {command_id}: {found:?}");
        found.into_iter().next()
    })
    .await
}

/// A handler program that appends each command it gets to `<script>.log`, one line each.
pub fn recording_handler(dir: &Path) -> PathBuf {
    script(dir, "record.sh", "#!/bin/sh\ncat >> \"$0.log\"\necho >> \"$0.log\"\n")
}

/// Commands the recording handler received.
pub fn handled(script: &Path) -> Vec<serde_json::Value> {
    let log = std::fs::read_to_string(format!("{}.log", script.display())).unwrap_or_default();
    log.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A handler program that never answers in time.
pub fn slow_handler(dir: &Path) -> PathBuf {
    script(dir, "slow.sh", "#!/bin/sh\nsleep 10\n")
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The `tillsync-edge run` binary as a child process.
pub struct EdgeProc {
    child: Option<Child>,
    pub http: std::net::SocketAddr,
}

impl EdgeProc {
    pub fn start(config: &Config) -> EdgeProc {
        let child = Command::new(bin_path("tillsync-edge"))
            .arg("run")
            .envs(config.to_env())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tillsync-edge");
        EdgeProc { child: Some(child), http: config.http_addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub async fn wait_ready(&self) {
        let url = self.url("/healthz");
        eventually(T, "edge bridge HTTP API up", || {
            let url = url.clone();
            async move { reqwest::get(&url).await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;
    }

    pub async fn status(&self) -> Option<Status> {
        reqwest::get(self.url("/v1/status")).await.ok()?.json().await.ok()
    }

    /// SIGTERM, then waits up to `within` for the process to exit; true when it did.
    pub fn terminate(&mut self, within: Duration) -> bool {
        let Some(c) = self.child.as_mut() else { return true };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM the bridge");
        let exited = tillsync_testkit::until_blocking(within, Duration::from_millis(50), || {
            c.try_wait().ok().flatten().is_some()
        });
        if exited {
            self.child = None;
        }
        exited
    }

    /// SIGKILL: nothing flushed, nothing shut down.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EdgeProc {
    fn drop(&mut self) {
        self.kill();
    }
}
