//! Helpers for the identity tests: activating bridges the way a store does (the
//! `tillsync-edge activate` binary), connecting as an activated device or a portal, and
//! catching the permission violations nats-server reports.

use std::path::Path;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use tillsync_edge::identity::Identity;
use tillsync_edge::Config;
use tillsync_schemas::{identity, DeviceAddr};
use tillsync_tests::{bin_path, Stack};
use tokio::sync::mpsc;

pub const T: Duration = Duration::from_secs(20);

/// What `tillsync-edge activate --json` printed, and its exit code.
pub struct Activation {
    pub exit: i32,
    pub json: serde_json::Value,
}

/// Runs `tillsync-edge activate` for a bridge whose outbox is `db` (async: an in-process
/// broker must keep answering meanwhile).
pub async fn activate(stack: &Stack, db: &Path, code: &str) -> Activation {
    let out = tokio::process::Command::new(bin_path("tillsync-edge"))
        .args(["activate", "--json", "--code", code, "--nats-url", &stack.nats.url(), "--db"])
        .arg(db)
        .envs(stack.nats.tls_env())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run tillsync-edge activate");
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("activate printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    Activation { exit: out.status.code().unwrap_or(-1), json }
}

/// A bridge config for `addr` in `dir`, activated with a fresh code (as a store would).
pub async fn activated_config(stack: &Stack, addr: &DeviceAddr, dir: &Path) -> Config {
    let config = stack.edge_config(addr, dir.join("edge.db"));
    let code = tillsync_tests::activation_code(&stack.db.pool, addr, 24).await;
    let a = activate(stack, &config.db, &code).await;
    assert_eq!(a.exit, 0, "activation of {addr:?}: {}", a.json);
    config
}

/// The `tillsync` CLI as the operator, with `--json`; returns exit code and stdout JSON.
pub async fn cli(stack: &Stack, args: &[&str]) -> (i32, serde_json::Value) {
    let creds = stack.auth.as_ref().map(|a| a.operator_creds()).expect("an auth stack");
    let out = tokio::process::Command::new(bin_path("tillsync"))
        .arg("--json")
        .args(args)
        .env("DATABASE_URL", &stack.db.url)
        .env("NATS_URL", stack.nats.url())
        .env("NATS_CREDS", creds)
        .envs(stack.nats.tls_env())
        .env("TILLSYNC_ACTOR", "ops-test")
        .output()
        .await
        .expect("run tillsync");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    if !out.status.success() {
        eprintln!("tillsync {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.code().unwrap_or(-1), json)
}

/// A client holding a key, with the server's error events captured.
pub struct Probe {
    pub client: Client,
    errors: mpsc::UnboundedReceiver<String>,
}

impl Probe {
    /// Connects with `seed` and `inbox` as the custom inbox prefix.
    pub async fn connect(stack: &Stack, seed: &str, inbox: String) -> Result<Probe, async_nats::ConnectError> {
        let (tx, errors) = mpsc::unbounded_channel();
        let client = stack
            .nats
            .with_tls(ConnectOptions::with_nkey(seed.to_string()))
            .custom_inbox_prefix(inbox)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(stack.nats.addrs())
            .await?;
        Ok(Probe { client, errors })
    }

    /// Connects as an activated device.
    /// A new portal credential of `tenant` (`tillsync portals add`), connected, and its seed.
    pub async fn portal(stack: &Stack, tenant: &str) -> (Probe, String) {
        let seed_file = stack.auth.as_ref().unwrap().scratch().join(format!("portal-{tenant}.nk"));
        let (exit, out) =
            cli(stack, &["portals", "add", "--tenant", tenant, "--out", seed_file.to_str().unwrap()]).await;
        assert_eq!(exit, 0, "{out}");
        let seed = std::fs::read_to_string(&seed_file).unwrap().trim().to_string();
        let probe = Probe::connect(stack, &seed, identity::portal_inbox(tenant)).await.expect("portal connects");
        (probe, seed)
    }

    pub async fn device(stack: &Stack, identity_file: &Path) -> Probe {
        let id = Identity::load(identity_file).unwrap().expect("identity file");
        Probe::connect(stack, &id.seed, identity::device_inbox(&id.addr())).await.expect("device connects")
    }

    /// Publishes to `subject` and waits for the server to report the publish refused.
    pub async fn publish_refused(&mut self, subject: &str) {
        self.client.publish(subject.to_string(), "x".into()).await.unwrap();
        self.client.flush().await.unwrap();
        self.expect_violation(&format!("publish to \"{subject}\"")).await;
    }

    /// Waits for a permissions-violation error naming `what` (case-insensitive).
    pub async fn expect_violation(&mut self, what: &str) {
        self.expect_error(&["permissions violation", what]).await
    }

    /// Waits for a server error containing every one of `parts` (case-insensitive).
    pub async fn expect_error(&mut self, parts: &[&str]) {
        let parts: Vec<String> = parts.iter().map(|p| p.to_lowercase()).collect();
        let deadline = tokio::time::Instant::now() + T;
        let mut seen = Vec::new();
        loop {
            let e = tokio::time::timeout_at(deadline, self.errors.recv())
                .await
                .unwrap_or_else(|_| panic!("no server error with {parts:?}; saw {seen:?}"))
                .expect("error channel open");
            let e = e.to_lowercase();
            if parts.iter().all(|p| e.contains(p)) {
                return;
            }
            seen.push(e);
        }
    }
}

/// How many messages a stream holds on exactly `subject` (as the operator sees it).
pub async fn stored_on(stack: &Stack, stream: &str, subject: &str) -> u64 {
    let js = stack.nats.jetstream().await;
    let s = js.get_stream(stream).await.unwrap();
    let info = s.info_with_subjects(subject).await.unwrap();
    let n = {
        use futures::StreamExt;
        let mut info = info;
        let mut total = 0;
        while let Some(Ok((_, count))) = info.next().await {
            total += count as u64;
        }
        total
    };
    n
}

/// Every event stored on `subject` (a filter on the events stream), decoded.
pub async fn stored_events(stack: &Stack, subject: &str) -> Vec<tillsync_schemas::EventEnvelope> {
    use async_nats::jetstream::consumer::{pull, DeliverPolicy};
    use futures::StreamExt;
    let n = stored_on(stack, tillsync_schemas::streams::EVENTS, subject).await as usize;
    let js = stack.nats.jetstream().await;
    let stream = js.get_stream(tillsync_schemas::streams::EVENTS).await.unwrap();
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(n);
    let mut out = Vec::with_capacity(n);
    while let Some(m) = tokio::time::timeout(T, messages.next()).await.expect("stored events arrive") {
        let m = m.unwrap();
        out.push(tillsync_schemas::codec::decode(&m.payload).expect("an event envelope"));
    }
    out
}
