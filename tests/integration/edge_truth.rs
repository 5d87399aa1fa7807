//! A store is told the truth (edge bridge): why it is cut off (`/v1/status` `cut_off`,
//! `tillsync_edge_cut_off{reason}`), a coded refusal of new sales once its credential is revoked
//! (what it holds stays), `activate` exit codes that tell a refused code from an unreachable
//! NATS, and a conflict for an event_id reused with other content. Real nats-server with
//! authorization (auth callout answered by an in-process broker) and real Postgres; the
//! broker's outage is a real one (its database stops taking connections).

use std::path::Path;
use std::time::Duration;

use async_nats::{ClientError, ConnectErrorKind, ConnectOptions, Event};
use serde_json::{json, Value};
use sqlx::Executor;
use tillsync_edge::cutoff::{self, Observed};
use tillsync_edge::identity::{default_path, Identity};
use tillsync_edge::{Bridge, Config};
use tillsync_schemas::{identity, DeviceAddr};
use tillsync_tests::{bin_path, eventually, eventually_eq, free_port, metric, InProcBroker, Stack, TestDb};

use crate::common::add_tenant;
use crate::security::support::{activate, activated_config, cli, T};

/// What nats-server 2.15 sends a client its auth callout refused, whatever the callout's reason,
/// as async-nats reports it from `connect`.
const REFUSED_AT_CONNECT: &str = "authorization violation: nats: authorization violation";

/// Fast proof of `revoked` for these tests (the defaults take 30 s at least).
fn fast_cutoff(mut config: Config) -> Config {
    config.cutoff_probe_every_ms = 300;
    config.cutoff_confirmations = 2;
    config
}

async fn revoke(stack: &Stack, d: &DeviceAddr) {
    let args = ["devices", "revoke", "--tenant", &d.tenant_id, "--store", &d.store_id, "--device", &d.device_id];
    let (exit, out) = cli(stack, &args).await;
    assert_eq!((exit, out["credentials_revoked"].as_u64()), (0, Some(1)), "{out}");
}

/// Connects once with `options`, expecting a refusal; returns it.
async fn refused(options: ConnectOptions, url: String) -> async_nats::ConnectError {
    options.connect(url).await.map(|_| ()).expect_err("refused")
}

fn device_options(identity_file: &Path) -> ConnectOptions {
    let id = Identity::load(identity_file).unwrap().expect("identity file");
    ConnectOptions::with_nkey(id.seed.clone()).custom_inbox_prefix(identity::device_inbox(&id.addr()))
}

async fn cut_off(bridge: &Bridge) -> Option<cutoff::CutOff> {
    bridge.status().await.unwrap().cut_off
}

/// Waits until the bridge says it is cut off for `reason`.
async fn wait_reason(bridge: &Bridge, reason: &str) -> cutoff::CutOff {
    eventually(T, &format!("cut_off {reason}"), || async { cut_off(bridge).await.filter(|c| c.reason == reason) }).await
}

/// `tillsync-edge activate --json` against any URL: exit code and the JSON printed.
async fn activate_at(url: &str, db: &Path, code: &str) -> (i32, Value) {
    let out = tokio::process::Command::new(bin_path("tillsync-edge"))
        .args(["activate", "--json", "--code", code, "--nats-url", url, "--db"])
        .arg(db)
        .output()
        .await
        .expect("run tillsync-edge activate");
    (out.status.code().unwrap_or(-1), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

/// The broker's database stops taking connections (`ALLOW_CONNECTIONS false`, its sessions
/// ended): every callout decision fails and is answered `unavailable`. Ended on drop too.
struct BrokerDbOutage {
    admin_url: String,
    name: String,
}

impl BrokerDbOutage {
    async fn start(db: &TestDb) -> BrokerDbOutage {
        let base = db.url.split('?').next().unwrap();
        let (server, name) = base.rsplit_once('/').unwrap();
        let outage = BrokerDbOutage { admin_url: format!("{server}/postgres"), name: name.to_string() };
        outage.allow(false).await;
        outage
    }

    async fn allow(&self, allow: bool) {
        let admin = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&self.admin_url).await.unwrap();
        admin.execute(format!("ALTER DATABASE {} ALLOW_CONNECTIONS {allow}", self.name).as_str()).await.unwrap();
        if !allow {
            let end = format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}'",
                self.name
            );
            admin.execute(end.as_str()).await.unwrap();
        }
        admin.close().await;
    }

    async fn end(self) {
        self.allow(true).await;
    }
}

impl Drop for BrokerDbOutage {
    fn drop(&mut self) {
        // Also after a failed assertion, so the database can be dropped.
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(admin) = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await {
                    let _ = admin.execute(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true").as_str()).await;
                }
            })
        })
        .join();
    }
}

/// The real text: nats-server answers every callout refusal (`bad_code`, `revoked`, and below
/// `unavailable`) with the same `Authorization Violation`; the reason stays on the server side.
/// While retrying, async-nats reports only the kind, which `cutoff::classify` reads.
#[tokio::test]
async fn a_refused_client_is_told_authorization_violation_whatever_the_reason() {
    let stack = Stack::start_with_auth().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let dir = tempfile::tempdir().unwrap();

    let stranger = nkeys::KeyPair::new_user();
    let activation = ConnectOptions::with_nkey(stranger.seed().unwrap())
        .user_and_password(identity::ACTIVATION_USER.into(), "hello".into())
        .custom_inbox_prefix(identity::activation_inbox(&stranger.public_key()));
    let bad_code = refused(activation, stack.nats.url()).await;

    let d = DeviceAddr::new("acme", "s1", "till-1");
    let config = activated_config(&stack, &d, dir.path()).await;
    revoke(&stack, &d).await;
    let id_file = default_path(&config.db);
    let revoked = refused(device_options(&id_file), stack.nats.url()).await;

    for (why, e) in [("bad_code", &bad_code), ("revoked", &revoked)] {
        assert_eq!(e.kind(), ConnectErrorKind::AuthorizationViolation, "{why}: {e}");
        assert_eq!(e.to_string(), REFUSED_AT_CONNECT, "{why}: the same text whatever the callout answered");
        // The broker did decide that reason: it is only on its side.
        let q = format!("SELECT count(*) FROM identity_audit WHERE action = 'connection_refused' AND reason = '{why}'");
        assert!(stack.db.count(&q).await >= 1, "the callout refused it as {why}");
    }

    // Retrying in the background, as the bridge does: each refusal is an Event::ClientError
    // holding the kind only, and no event carries the callout's reason.
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let client = device_options(&id_file)
        .retry_on_initial_connect()
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(stack.nats.url())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let first = eventually(T, "a client error event", || {
        while let Ok(e) = events.try_recv() {
            seen.push(e);
        }
        let found = seen.iter().find(|e| matches!(e, Event::ClientError(_))).cloned();
        async move { found }
    })
    .await;
    assert!(matches!(&first, Event::ClientError(ClientError::Other(k)) if k == "authorization violation"), "{first}");
    assert_eq!(cutoff::classify(&first), Some(Observed::Refused));
    assert!(seen.iter().all(|e| !e.to_string().contains("revoked")), "{seen:?}");
    drop(client);
    broker.stop().await;
}

/// A revoked bridge learns it is revoked (status, metric, one error line), refuses new sales
/// with `403 {"code": "revoked"}`, answers a retry of a sale it holds as a duplicate, and keeps
/// every unsent sale; re-activated, it connects and they land, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_bridge_says_so_refuses_new_sales_and_keeps_what_it_holds() {
    let mut stack = Stack::start_with_auth().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let d = DeviceAddr::new("acme", "s1", "till-1");
    let config = fast_cutoff(activated_config(&stack, &d, dir.path()).await);
    let bridge = Bridge::start(config.clone()).await.unwrap();
    let api = format!("http://{}", bridge.http_addr().unwrap());
    let http = reqwest::Client::new();
    eventually(T, "connected", || async { bridge.status().await.ok().filter(|s| s.connection == "connected") }).await;
    assert_eq!(cut_off(&bridge).await, None);

    // Sales made while the WAN is down wait in the outbox; the device is revoked meanwhile.
    stack.nats.stop();
    wait_reason(&bridge, "unreachable").await;
    let sale = |i: usize| {
        json!({"event_id": format!("01890a5d-ac96-774b-bcce-b302099a80{i:02}"), "kind": "order_opened",
               "payload": {"order_id": format!("o-{i}"), "currency": "EUR"}})
    };
    for i in 0..3 {
        let r = http.post(format!("{api}/v1/events")).json(&sale(i)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 202, "an outage keeps selling");
    }
    revoke(&stack, &d).await;
    stack.nats.restart().await;

    let c = wait_reason(&bridge, "revoked").await;
    assert!(c.refuses_events && c.detail.contains("activate"), "{c:?}");
    let text = bridge.metrics_text();
    assert_eq!(metric(&text, "tillsync_edge_cut_off", "reason=\"revoked\""), Some(1.0), "{text}");
    assert_eq!(metric(&text, "tillsync_edge_cut_off", "reason=\"unavailable\""), Some(0.0));
    assert!(metric(&text, "tillsync_edge_cutoff_probes_total", "result=\"admitted\"").unwrap() >= 2.0);

    let r = http.post(format!("{api}/v1/events")).json(&sale(3)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "revoked", "{body}");
    let r = http.post(format!("{api}/v1/events")).json(&sale(1)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "a retry of a held sale is answered, not refused");
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["duplicate"].as_bool(), body["seq"].as_u64()), (Some(true), Some(2)), "{body}");
    let text = bridge.metrics_text();
    assert_eq!(metric(&text, "tillsync_edge_events_refused_total", "code=\"revoked\""), Some(1.0));

    // What it holds stays, however long it is refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = bridge.status().await.unwrap();
    assert_eq!((s.outbox.rows, s.outbox.unsent, s.outbox.last_seq), (3, 3, 3), "{s:?}");
    assert_eq!(stack.db.count("SELECT count(*) FROM orders").await, 0, "nothing from a revoked device lands");
    let cli_status = tokio::process::Command::new(bin_path("tillsync-edge"))
        .args(["status", "--http-addr", &bridge.http_addr().unwrap().to_string()])
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&cli_status.stdout);
    assert!(printed.contains("cut off      revoked") && printed.contains("NEW EVENTS REFUSED"), "{printed}");

    // A new code, activated while it runs: within one slow retry it connects and the held sales land.
    let code = tillsync_tests::activation_code(&stack.db.pool, &d, 24).await;
    assert_eq!(activate(&stack, &config.db, &code).await.exit, 0);
    eventually(cutoff::REVOKED_RETRY + T, "reconnected after re-activation", || async {
        bridge.status().await.ok().filter(|s| s.connection == "connected" && s.cut_off.is_none())
    })
    .await;
    eventually_eq(T, "the held sales landed, once", 3, || stack.db.count("SELECT count(*) FROM processed_events"))
        .await;
    let r = http.post(format!("{api}/v1/events")).json(&sale(3)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202, "sales are taken again");
    bridge.shutdown().await;
    broker.stop().await;
}

/// The broker cannot decide (its database is down): the bridge says `unavailable` and never
/// `revoked` however many probes it makes, keeps selling, and recovers by itself. A connect
/// is refused with the same text as a revoked one, and `activate` with a code-shaped code exits
/// 5 (`connect_refused`): its code was never read.
#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_whose_broker_cannot_decide_says_unavailable_and_keeps_selling() {
    let stack = Stack::start_with_auth().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let d = DeviceAddr::new("acme", "s1", "till-1");
    let config = fast_cutoff(activated_config(&stack, &d, dir.path()).await);

    let outage = BrokerDbOutage::start(&stack.db).await;
    let e = refused(device_options(&default_path(&config.db)), stack.nats.url()).await;
    assert_eq!(e.to_string(), REFUSED_AT_CONNECT, "unavailable reads as revoked does");
    let (exit, out) = activate_at(&stack.nats.url(), &dir.path().join("other.db"), "AAAA-BBBB-CCCC-DDDD-EEEE").await;
    assert_eq!((exit, out["code"].as_str()), (5, Some("connect_refused")), "{out}");

    let bridge = Bridge::start(config).await.unwrap();
    wait_reason(&bridge, "unavailable").await;
    // Several probes later, still unavailable: a broker that cannot decide proves nothing.
    eventually(T, "three refused probes", || async {
        metric(&bridge.metrics_text(), "tillsync_edge_cutoff_probes_total", "result=\"refused\"").filter(|n| *n >= 3.0)
    })
    .await;
    let c = cut_off(&bridge).await.expect("still cut off");
    assert_eq!((c.reason.as_str(), c.refuses_events), ("unavailable", false), "{c:?}");
    assert!(c.attempts >= 2, "{c:?}");
    let text = bridge.metrics_text();
    assert_eq!(metric(&text, "tillsync_edge_cut_off", "reason=\"unavailable\""), Some(1.0));
    assert_eq!(metric(&text, "tillsync_edge_cut_off", "reason=\"revoked\""), Some(0.0));
    assert!(metric(&text, "tillsync_edge_nats_connect_failures_total", "reason=\"refused\"").unwrap() >= 2.0);
    let held = bridge.submit(tillsync_edge::EventDraft::new(crate::common::opened("o-1"))).await.unwrap();
    assert!(!held.duplicate, "the outbox is for outages");

    outage.end().await;
    eventually(T, "reconnected once the broker can decide", || async {
        bridge.status().await.ok().filter(|s| s.connection == "connected" && s.cut_off.is_none())
    })
    .await;
    eventually_eq(T, "the sale landed", 1, || stack.db.count("SELECT count(*) FROM orders WHERE order_id = 'o-1'"))
        .await;
    bridge.shutdown().await;
    broker.stop().await;
}

/// `activate` exit codes: 3 for a refused code with its reason (`bad_code` when NATS refused a
/// password that is no code; the broker's `code_unknown`), 4 when no NATS answers.
#[tokio::test]
async fn activate_exit_codes_tell_a_refused_code_from_an_unreachable_nats() {
    let stack = Stack::start_with_auth().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edge.db");

    let hello = activate(&stack, &db, "hello").await;
    assert_eq!((hello.exit, hello.json["code"].as_str()), (3, Some("bad_code")), "{}", hello.json);
    let q = "SELECT count(*) FROM identity_audit WHERE action = 'connection_refused' AND reason = 'bad_code'";
    assert!(stack.db.count(q).await >= 1, "the broker's callout refused it as bad_code, too");
    let unknown = activate(&stack, &db, "AAAA-BBBB-CCCC-DDDD-EEEE").await;
    assert_eq!((unknown.exit, unknown.json["code"].as_str()), (3, Some("code_unknown")), "{}", unknown.json);

    let nobody = format!("nats://127.0.0.1:{}", free_port());
    for code in ["hello", "AAAA-BBBB-CCCC-DDDD-EEEE"] {
        let (exit, out) = activate_at(&nobody, &db, code).await;
        assert_eq!((exit, out["code"].as_str()), (4, Some("nats_unreachable")), "{code}: {out}");
    }
    assert!(!default_path(&db).exists(), "nothing written");
    broker.stop().await;
}

/// The same event_id with other content is a conflict (409 `event_id_reused`, counted, the
/// original kept and the only one to land); the same content, however spelled, is a retry.
#[tokio::test(flavor = "multi_thread")]
async fn a_reused_event_id_with_other_content_is_a_conflict_and_the_original_stays() {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let d = DeviceAddr::new("acme", "s1", "till-1");
    let bridge = Bridge::start(stack.edge_config(&d, dir.path().join("edge.db"))).await.unwrap();
    let url = format!("http://{}/v1/events", bridge.http_addr().unwrap());
    let http = reqwest::Client::new();
    let id = "01890a5d-ac96-774b-bcce-b302099a8057";
    let post = |body: String| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.post(url).header("content-type", "application/json").body(body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let original =
        format!(r#"{{"event_id":"{id}","kind":"order_opened","payload":{{"order_id":"o-a","currency":"EUR"}}}}"#);
    let respelled = format!(
        r#"{{ "payload": {{ "currency": "EUR", "order_id": "o-a" }}, "kind": "order_opened", "event_id": "{id}" }}"#
    );
    let other =
        format!(r#"{{"event_id":"{id}","kind":"order_opened","payload":{{"order_id":"o-b","currency":"EUR"}}}}"#);

    let (status, first) = post(original.clone()).await;
    assert_eq!((status, first["seq"].as_u64()), (202, Some(1)), "{first}");
    for again in [original, respelled] {
        let (status, body) = post(again).await;
        assert_eq!((status, body["duplicate"].as_bool(), body["seq"].as_u64()), (200, Some(true), Some(1)), "{body}");
    }
    let (status, body) = post(other).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("event_id_reused")), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("seq 1"), "{body}");
    let text = bridge.metrics_text();
    assert_eq!(metric(&text, "tillsync_edge_events_refused_total", "code=\"event_id_reused\""), Some(1.0));
    assert_eq!(metric(&text, "tillsync_edge_events_accepted_total", ""), Some(1.0));

    eventually_eq(T, "the original landed", 1, || stack.db.count("SELECT count(*) FROM orders WHERE order_id = 'o-a'"))
        .await;
    assert_eq!(stack.db.count("SELECT count(*) FROM orders WHERE order_id = 'o-b'").await, 0, "the reuse never leaves");
    assert_eq!(bridge.status().await.unwrap().outbox.last_seq, 1);
    bridge.shutdown().await;
    broker.stop().await;
}

/// A decommissioned till is told so, not just `revoked`: its own key, proved on an activation
/// connection, gets the broker to say what it is. New sales are refused with that code.
#[tokio::test(flavor = "multi_thread")]
async fn a_decommissioned_bridge_says_decommissioned_and_refuses_new_sales() {
    let stack = Stack::start_with_auth().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let d = DeviceAddr::new("acme", "s1", "till-1");
    let config = fast_cutoff(activated_config(&stack, &d, dir.path()).await);
    let bridge = Bridge::start(config).await.unwrap();
    let api = format!("http://{}", bridge.http_addr().unwrap());
    eventually(T, "connected", || async { bridge.status().await.ok().filter(|s| s.connection == "connected") }).await;

    let args = ["devices", "decommission", "--tenant", "acme", "--store", "s1", "--device", "till-1", "--yes"];
    let (exit, out) = cli(&stack, &args).await;
    assert_eq!(exit, 0, "{out}");
    let c = wait_reason(&bridge, "decommissioned").await;
    assert!(c.refuses_events && c.detail.contains("decommissioned"), "{c:?}");
    let text = bridge.metrics_text();
    assert_eq!(metric(&text, "tillsync_edge_cut_off", "reason=\"decommissioned\""), Some(1.0), "{text}");
    assert_eq!(metric(&text, "tillsync_edge_cut_off", "reason=\"revoked\""), Some(0.0));

    let sale = json!({"kind": "order_opened", "payload": {"order_id": "o-late", "currency": "EUR"}});
    let r = reqwest::Client::new().post(format!("{api}/v1/events")).json(&sale).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "decommissioned", "{body}");
    bridge.shutdown().await;
    broker.stop().await;
}
