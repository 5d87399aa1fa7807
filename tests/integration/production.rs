//! The production topology as one test (docs/security.md, "Production topology"): a 3-node
//! NATS cluster with the generated authorization, client TLS (a certificate required) and
//! secured routes; two brokers as processes answering the auth callouts; two tenants whose
//! tills share device ids, activated with one-time codes and run by the real bridge; each
//! tenant's portal sending commands. Mid-traffic one broker is killed (SIGKILL) and one NATS
//! node is killed and restarted.
//!
//! Checked afterwards: every sale applied exactly once under its own tenant, store and device;
//! every command applied once by its own till and acked; each portal heard only its own
//! tenant's statuses. Then, on the same topology: a revocation while the key is connected on
//! two nodes closes every connection, and a stranger's reply aimed at the JetStream API purges
//! nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tillsync_broker::config::Config;
use tillsync_edge::{Bridge, EventDraft};
use tillsync_schemas::{codec, identity, streams, subject, CommandEnvelope, CommandState, CommandStatus, DeviceAddr};
use tillsync_tests::{
    bin_path, eventually, free_addr, http_get, metric, AuthSetup, BrokerProc, Certs, NatsCluster, TestDb,
};

use crate::commands::{command, menu};
use crate::common::{add_tenant, opened};

const TENANTS: [&str; 2] = ["acme", "beta"];
const TILLS: [&str; 2] = ["till-1", "till-2"];
/// Sales per till, one every [`PACE`]: the faults land while they flow.
const SALES: usize = 60;
const PACE: Duration = Duration::from_millis(150);
/// Commands per till: menu publishes (one approver), and a refund signed by two.
const MENUS: usize = 3;
const LONG: Duration = Duration::from_secs(120);

struct Prod {
    auth: AuthSetup,
    certs: Certs,
    cluster: NatsCluster,
    db: TestDb,
    brokers: Vec<Option<BrokerProc>>,
}

impl Prod {
    async fn start() -> Prod {
        tillsync_tests::init_tracing();
        let (auth, certs) = (AuthSetup::new(), Certs::generate());
        let (cluster, db) = tokio::join!(NatsCluster::start_secured(3, &auth, &certs), TestDb::new());
        Prod { auth, certs, cluster, db, brokers: Vec::new() }
    }

    fn broker_config(&self, n: usize) -> Config {
        let mut c = Config::for_tests(&self.cluster.urls(), &self.db.url);
        self.auth.broker(&mut c);
        c.nats_tls = self.certs.broker_files();
        c.stream_replicas = 3;
        c.partitions = 8;
        c.lease_ttl_s = 5;
        c.instance_id = Some(format!("broker-{n}"));
        c.http_addr = free_addr();
        c
    }

    async fn start_broker(&mut self) {
        let c = self.broker_config(self.brokers.len());
        let b = BrokerProc::start(&c);
        eventually(LONG, "broker ready", || async {
            matches!(http_get(b.http_addr(), "/readyz").await, Some((200, _))).then_some(())
        })
        .await;
        self.brokers.push(Some(b));
    }

    fn tls_env(&self) -> Vec<(&'static str, String)> {
        let f = |p: &Path| p.display().to_string();
        vec![
            ("NATS_URL", self.cluster.urls()),
            ("NATS_CA_FILE", f(&self.certs.ca)),
            ("NATS_CERT_FILE", f(&self.certs.client_cert)),
            ("NATS_KEY_FILE", f(&self.certs.client_key)),
        ]
    }

    /// `tillsync --json ...` as the operator, over TLS to the cluster.
    async fn cli(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let out = tokio::process::Command::new(bin_path("tillsync"))
            .arg("--json")
            .args(args)
            .envs(self.tls_env())
            .env("DATABASE_URL", &self.db.url)
            .env("NATS_CREDS", self.auth.operator_creds())
            .env("TILLSYNC_ACTOR", "prod-test")
            .output()
            .await
            .expect("run tillsync");
        if !out.status.success() {
            eprintln!("tillsync {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        (out.status.code().unwrap_or(-1), serde_json::from_slice(&out.stdout).unwrap_or_default())
    }

    /// A bridge for `addr` in `dir`, activated by `tillsync-edge activate` with a one-time code.
    async fn activated(&self, addr: &DeviceAddr, dir: &Path) -> tillsync_edge::Config {
        let mut config = tillsync_edge::Config::for_tests(addr, &self.cluster.urls(), dir.join("edge.db"));
        config.nats_tls = self.certs.edge_files();
        let code = tillsync_tests::activation_code(&self.db.pool, addr, 24).await;
        let out = tokio::process::Command::new(bin_path("tillsync-edge"))
            .args(["activate", "--json", "--code", &code, "--db"])
            .arg(&config.db)
            .envs(self.tls_env())
            .env("RUST_LOG", "warn")
            .output()
            .await
            .expect("run tillsync-edge activate");
        assert!(out.status.success(), "activation of {addr:?}: {}", String::from_utf8_lossy(&out.stdout));
        config
    }

    /// A client with `seed` (a device's or a portal's key) on node `node` only.
    async fn connect(&self, node: usize, seed: &str, inbox: String) -> async_nats::Client {
        async_nats::ConnectOptions::with_nkey(seed.to_string())
            .custom_inbox_prefix(inbox)
            .add_root_certificates(self.certs.ca.clone())
            .add_client_certificate(self.certs.client_cert.clone(), self.certs.client_key.clone())
            .require_tls(true)
            .connect(self.cluster.url(node))
            .await
            .expect("connects")
    }

    async fn count(&self, sql: &str) -> i64 {
        self.db.count(sql).await
    }
}

/// A tenant's portal: `tillsync portals add`, connected on node 2, hearing its tenant's statuses.
struct Portal {
    client: async_nats::Client,
    heard: Arc<Mutex<Vec<CommandStatus>>>,
}

impl Portal {
    async fn start(p: &Prod, tenant: &str, dir: &Path) -> Portal {
        let file = dir.join(format!("portal-{tenant}.nk"));
        let (exit, out) = p.cli(&["portals", "add", "--tenant", tenant, "--out", file.to_str().unwrap()]).await;
        assert_eq!(exit, 0, "{out}");
        let seed = std::fs::read_to_string(&file).unwrap().trim().to_string();
        let client = p.connect(2, &seed, identity::portal_inbox(tenant)).await;
        let mut sub = client.subscribe(format!("tillsync.status.{tenant}.>")).await.unwrap();
        client.flush().await.unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = heard.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Ok(s) = codec::decode::<CommandStatus>(&m.payload) {
                    sink.lock().unwrap().push(s);
                }
            }
        });
        Portal { client, heard }
    }

    /// Publishes `cmd` on intake as a portal does (JetStream, `Nats-Msg-Id` = its id), again
    /// until stored: while a node is down the stream may briefly have no leader to answer, and
    /// the message id makes a retry of a stored command a duplicate.
    async fn send(&self, cmd: &CommandEnvelope) {
        let js = async_nats::jetstream::new(self.client.clone());
        let subj = subject::intake(&cmd.tenant_id, &cmd.store_id, cmd.device_id.as_deref());
        let stored = || async {
            let mut h = async_nats::HeaderMap::new();
            h.insert(streams::HEADER_MSG_ID, cmd.command_id.as_str());
            let ack = js.publish_with_headers(subj.clone(), h, codec::encode(cmd).into()).await.ok()?;
            ack.await.ok().map(|_| ())
        };
        eventually(LONG, "the portal's command stored on intake", stored).await;
    }
}

fn refund(order: &str) -> tillsync_schemas::CommandBody {
    tillsync_schemas::CommandBody::RefundOrder {
        order_id: order.into(),
        payment_id: "p-1".into(),
        amount_minor: 350,
        currency: "EUR".into(),
        reason: "cold coffee".into(),
    }
}

/// The commands of one till: [`MENUS`] menu publishes and one approved refund.
fn commands_for(d: &DeviceAddr) -> Vec<CommandEnvelope> {
    let minute = 60_000;
    let mut v: Vec<CommandEnvelope> = (0..MENUS)
        .map(|_| command(&d.tenant_id, &d.store_id, Some(&d.device_id), menu(), &["alice"], 10 * minute))
        .collect();
    let order = format!("{}-{}-o-0", d.tenant_id, d.device_id);
    v.push(command(&d.tenant_id, &d.store_id, Some(&d.device_id), refund(&order), &["alice", "bob"], 10 * minute));
    v
}

/// Command ids the till's own ledger applied.
async fn applied_at_till(db: &Path) -> BTreeSet<String> {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open the bridge's SQLite");
    let ids: Vec<String> = sqlx::query_scalar("SELECT command_id FROM commands WHERE outcome = 'applied'")
        .fetch_all(&pool)
        .await
        .expect("the bridge's command ledger");
    pool.close().await;
    ids.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_production_topology_loses_doubles_and_misdelivers_nothing_through_broker_and_node_kills() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Prod::start().await;
    p.start_broker().await;
    p.start_broker().await;
    let devices: Vec<DeviceAddr> =
        TENANTS.iter().flat_map(|t| TILLS.iter().map(move |d| DeviceAddr::new(*t, "s1", *d))).collect();
    for t in TENANTS {
        add_tenant(&p.db.pool, t).await;
    }
    let mut bridges = Vec::new();
    for d in &devices {
        let dir = dir.path().join(format!("{}-{}", d.tenant_id, d.device_id));
        std::fs::create_dir_all(&dir).unwrap();
        let config = p.activated(d, &dir).await;
        bridges.push((d.clone(), config.db.clone(), Arc::new(Bridge::start(config).await.unwrap())));
    }
    let online = "SELECT count(*) FROM devices WHERE online";
    eventually(LONG, "every till online", || async { (p.count(online).await == 4).then_some(()) }).await;
    let portals = [Portal::start(&p, "acme", dir.path()).await, Portal::start(&p, "beta", dir.path()).await];

    // Traffic: every till sells at a steady pace; the portals send each till its commands.
    let sold = Arc::new(AtomicUsize::new(0));
    let sales: Vec<_> = bridges
        .iter()
        .map(|(d, _, bridge)| {
            let (d, bridge, sold) = (d.clone(), bridge.clone(), sold.clone());
            tokio::spawn(async move {
                for i in 0..SALES {
                    let order = format!("{}-{}-o-{i}", d.tenant_id, d.device_id);
                    bridge.submit(EventDraft::new(opened(&order))).await.expect("the outbox takes every sale");
                    sold.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(PACE).await;
                }
            })
        })
        .collect();
    let sent: BTreeMap<DeviceAddr, Vec<CommandEnvelope>> =
        devices.iter().map(|d| (d.clone(), commands_for(d))).collect();
    for round in 0..=MENUS {
        for (d, cmds) in &sent {
            let portal = &portals[TENANTS.iter().position(|t| *t == d.tenant_id).unwrap()];
            portal.send(&cmds[round]).await;
        }
        if round == 0 {
            // Faults mid-traffic: SIGKILL a broker, then a NATS node (killed, then restarted).
            eventually(LONG, "sales flowing", || async { (sold.load(Ordering::SeqCst) >= 40).then_some(()) }).await;
            p.brokers[0].take().unwrap().kill();
        }
        if round == 1 {
            eventually(LONG, "more sales", || async { (sold.load(Ordering::SeqCst) >= 100).then_some(()) }).await;
            p.cluster.stop(1);
        }
        if round == 2 {
            eventually(LONG, "sales while a node is down", || async {
                (sold.load(Ordering::SeqCst) >= 140).then_some(())
            })
            .await;
            p.cluster.restart(1).await;
        }
    }
    for s in sales {
        s.await.unwrap();
    }

    // Every sale applied once, under its own tenant, store and device.
    let all = (SALES * devices.len()) as i64;
    eventually(LONG, "every sale applied", || async {
        (p.count("SELECT count(*) FROM processed_events").await == all).then_some(())
    })
    .await;
    for d in &devices {
        let (t, id) = (&d.tenant_id, &d.device_id);
        let per = |table: &str| {
            format!("SELECT count(*) FROM {table} WHERE tenant_id = '{t}' AND store_id = 's1' AND device_id = '{id}'")
        };
        assert_eq!(p.count(&per("processed_events")).await, SALES as i64, "{d:?}: events applied once each");
        assert_eq!(p.count(&per("orders")).await, SALES as i64, "{d:?}: orders");
        let w = format!("SELECT watermark FROM devices WHERE tenant_id = '{t}' AND device_id = '{id}'");
        assert_eq!(p.count(&w).await, SALES as i64, "{d:?}: watermark");
    }
    let strays = "SELECT count(*) FROM orders WHERE order_id NOT LIKE tenant_id || '-' || device_id || '-o-%'";
    assert_eq!(p.count(strays).await, 0, "no sale landed under another tenant or device");

    // Every command acked, applied exactly by its own till; each portal heard only its tenant.
    let total = sent.values().map(Vec::len).sum::<usize>() as i64;
    let deadline = std::time::Instant::now() + LONG;
    while p.count("SELECT count(*) FROM command_inbox WHERE state = 'acked'").await != total {
        if std::time::Instant::now() > deadline {
            let rows: Option<String> = sqlx::query_scalar(
                "SELECT string_agg(format('%s/%s %s %s %s', c.tenant_id, c.device_id, c.kind, c.rejected_code,
                                          i.state), '; ')
                 FROM commands c LEFT JOIN command_inbox i USING (tenant_id, command_id)
                 WHERE i.state IS DISTINCT FROM 'acked'",
            )
            .fetch_one(&p.db.pool)
            .await
            .unwrap();
            let recorded = p.count("SELECT count(*) FROM commands").await;
            panic!("commands not acked after {LONG:?} ({recorded} of {total} recorded): {rows:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(p.count("SELECT count(*) FROM commands").await, total, "no other command appeared");
    assert_eq!(p.count("SELECT count(*) FROM command_inbox").await, total, "one copy per command, to its own till");
    for (d, db, _) in &bridges {
        let want: BTreeSet<String> = sent[d].iter().map(|c| c.command_id.clone()).collect();
        let applied = applied_at_till(db).await;
        assert_eq!(applied, want, "{d:?} applied exactly its own commands");
    }
    for (portal, tenant) in portals.iter().zip(TENANTS) {
        let heard = portal.heard.lock().unwrap().clone();
        assert!(heard.iter().all(|s| s.tenant_id == tenant), "{tenant}'s portal heard another tenant");
        let acked: BTreeSet<&str> =
            heard.iter().filter(|s| s.state == CommandState::Acked).map(|s| s.command_id.as_str()).collect();
        let mine: BTreeSet<&str> = sent
            .iter()
            .filter(|(d, _)| d.tenant_id == tenant)
            .flat_map(|(_, c)| c.iter().map(|c| c.command_id.as_str()))
            .collect();
        eventually(LONG, "the portal heard every acked status", || async {
            let heard = portal.heard.lock().unwrap().clone();
            let acked: BTreeSet<String> =
                heard.iter().filter(|s| s.state == CommandState::Acked).map(|s| s.command_id.clone()).collect();
            mine.iter().all(|m| acked.contains(*m)).then_some(())
        })
        .await;
        assert!(acked.is_subset(&mine), "{tenant}'s portal heard only its own commands acked");
    }

    // A stranger's activation request whose reply names the JetStream API purges nothing.
    stranger_purges_nothing(&p).await;

    // beta/till-1's key in use on two more nodes at once: a revocation closes all three
    // connections (the bridge's and both), wherever they are, and only that till stops.
    let victim = &bridges[2];
    assert_eq!(victim.0, DeviceAddr::new("beta", "s1", "till-1"));
    let id = tillsync_edge::identity::Identity::load(&tillsync_edge::identity::default_path(&victim.1))
        .unwrap()
        .expect("identity");
    let inbox = || identity::device_inbox(&id.addr());
    let (on0, on2) = (p.connect(0, &id.seed, inbox()).await, p.connect(2, &id.seed, inbox()).await);
    eventually(LONG, "the bridge connected", || async {
        victim.2.status().await.ok().filter(|s| s.connection == "connected").map(|_| ())
    })
    .await;
    let revoke = ["devices", "revoke", "--tenant", "beta", "--store", "s1", "--device", "till-1", "--reason", "stolen"];
    let (exit, out) = p.cli(&revoke).await;
    assert_eq!(exit, 0, "{out}");
    for (name, c) in [("node 0", &on0), ("node 2", &on2)] {
        eventually(LONG, &format!("the connection on {name} closed"), || async {
            (c.connection_state() != async_nats::connection::State::Connected).then_some(())
        })
        .await;
    }
    let show = ["devices", "show", "--tenant", "beta", "--store", "s1", "--device", "till-1"];
    let closed = eventually(LONG, "devices show counts the closed connections", || async {
        p.cli(&show).await.1["credentials"][0]["connections_closed"].as_i64()
    })
    .await;
    assert_eq!(closed, 3, "the bridge's connection and both others");
    bridges[0].2.submit(EventDraft::new(opened("acme-till-1-o-after"))).await.unwrap();
    // Taken into the outbox, or refused once the bridge has found out it is revoked: either way
    // it never lands.
    let _ = victim.2.submit(EventDraft::new(opened("beta-till-1-o-after"))).await;
    let landed = "SELECT count(*) FROM orders WHERE order_id = 'acme-till-1-o-after'";
    eventually(LONG, "another till's sales go on", || async { (p.count(landed).await == 1).then_some(()) }).await;
    assert_eq!(p.count("SELECT count(*) FROM orders WHERE order_id = 'beta-till-1-o-after'").await, 0);
    for (_, _, b) in bridges {
        if let Ok(b) = Arc::try_unwrap(b) {
            b.shutdown().await;
        }
    }
}

/// A fresh key with a code-shaped password gets the activation user; its requests name
/// `$JS.API.STREAM.PURGE.<stream>` as reply. The broker refuses to answer there (counted),
/// and no stream loses a message.
async fn stranger_purges_nothing(p: &Prod) {
    let js = p.cluster.jetstream().await;
    let counts = || async {
        let mut out = Vec::new();
        for name in crate::adversary::all_streams() {
            let mut s = js.get_stream(&name).await.unwrap_or_else(|e| panic!("stream {name}: {e}"));
            out.push((name, s.info().await.unwrap().state.messages));
        }
        out
    };
    let before = counts().await;
    let key = nkeys::KeyPair::new_user();
    let public = key.public_key();
    let client = async_nats::ConnectOptions::with_nkey(key.seed().unwrap())
        .user_and_password(identity::ACTIVATION_USER.into(), "ABCDEFGHIJKLMNOPQRST".into())
        .custom_inbox_prefix(identity::activation_inbox(&public))
        .add_root_certificates(p.certs.ca.clone())
        .add_client_certificate(p.certs.client_cert.clone(), p.certs.client_key.clone())
        .require_tls(true)
        .connect(p.cluster.url(1))
        .await
        .expect("a code-shaped password gets the activation user");
    let request = codec::encode(&identity::ActivateRequest { code: "ABCDEFGHIJKLMNOPQRST".into() });
    let purges = crate::adversary::purges();
    for purge in &purges {
        client
            .publish_with_reply(identity::activate_subject(&public), purge.clone(), request.clone().into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let broker = p.brokers[1].as_ref().expect("the surviving broker");
    eventually(LONG, "every misdirected activation refused", || async {
        let text = broker.metrics().await?;
        let n = metric(&text, "tillsync_replies_refused_total", "responder=\"activation\"")?;
        (n >= purges.len() as f64).then_some(())
    })
    .await;
    assert_eq!(counts().await, before, "no stream lost a message");
}
