//! Attacks on the trust boundary, tried for real against nats-server with authorization on and
//! the broker answering its callouts (docs/security.md, "Threat model"). Each test asserts the
//! attack changed nothing and was counted and recorded.
//!
//! Reply subjects: nats-server does not check where a request's answer goes, so a requester
//! can name `$JS.API.STREAM.PURGE.<stream>` or another tenant's subject as its reply and have
//! the responder (the broker, or JetStream answering a direct get) publish there.
//!
//! Attacks tried in the modules of the flow they target (one place to look for each):
//! - a device's catch-up asks (`tillsync.csync.<t>.<s>.<d>`) are answered only on that device's
//!   own copies subject, never a reply it names, and past 12 a minute they are dropped and
//!   counted: `downlink::a_copy_lost_with_its_connection_is_handed_again_by_the_due_check_and_asks_over_budget_are_dropped`;
//! - a cancel or approval decision published on a partition not its store's is quarantined,
//!   not applied under another partition's fence:
//!   `cancel_partition::a_cancel_or_decision_on_a_partition_not_its_stores_is_quarantined_not_applied`;
//! - a device's subjects, a portal's tenant, activation codes, revocation and rotation:
//!   `security::*`; altered, foreign, unsigned, replayed and expired commands, and a neighbour
//!   publishing a till's ack id first: `signed::*`.

use tillsync_edge::identity::default_path;
use tillsync_edge::{Bridge, EventDraft};
use tillsync_schemas::config::{publish_subject, snapshot_subject};
use tillsync_schemas::{codec, identity, streams, subject, DeviceAddr};
use tillsync_tests::{eventually, eventually_eq, http_get, inproc_broker_metric, metric, InProcBroker, Stack};

use crate::common::*;
use crate::security::support::*;

/// Where an attack is tried: one nats-server with authorization, and the production topology
/// (a 3-node cluster with authorization, client TLS and secured routes; R3 streams).
#[derive(Clone, Copy)]
enum Topology {
    OneServer,
    Production,
}

impl Topology {
    async fn start(self) -> Stack {
        match self {
            Topology::OneServer => Stack::start_with_auth().await,
            Topology::Production => Stack::start_production().await,
        }
    }
}

/// Each attack as one test that tries it on one server, then on the production topology. One
/// after the other, not as two tests: in-process brokers share the process's metrics, and the
/// checks count what this attack added.
macro_rules! on_both_topologies {
    ($($attack:ident),* $(,)?) => {$(
        mod $attack {
            #[tokio::test(flavor = "multi_thread")]
            async fn on_one_server_then_the_production_topology() {
                super::$attack(super::Topology::OneServer).await;
                super::$attack(super::Topology::Production).await;
            }
        }
    )*};
}

on_both_topologies!(
    a_strangers_activation_reply_aimed_at_the_jetstream_api_purges_nothing,
    a_devices_replies_aimed_at_purges_change_nothing,
    a_portals_publish_reply_aimed_at_another_tenants_snapshot_is_refused_and_not_acted_on,
    a_watermark_another_tenants_till_plants_deletes_no_sale,
    a_strangers_tries_with_fresh_keys_are_counted_not_stored_one_by_one,
    a_flooding_till_is_cut_off_and_other_tenants_sales_go_on,
    a_till_flooding_command_acks_is_cut_off_too,
    a_stranger_over_its_addresss_budget_is_refused_and_the_stores_till_still_sells,
    a_till_cannot_hold_unbounded_subscriptions_or_store_oversized_messages
);

/// Every stream tillsync keeps, the partition lease bucket's included.
pub(crate) fn all_streams() -> Vec<String> {
    let mut v: Vec<String> = [
        streams::EVENTS,
        streams::HEARTBEATS,
        streams::INTAKE,
        streams::COMMANDS,
        streams::COMMAND_ACKS,
        streams::STATUS,
        streams::WATERMARKS,
        streams::CONFIG,
        streams::CONFIG_SNAPSHOTS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("KV_{}", streams::PARTITIONS_BUCKET));
    v
}

/// Messages each stream holds, as the operator sees them.
async fn counts(stack: &Stack) -> Vec<(String, u64)> {
    let js = stack.nats.jetstream().await;
    let mut out = Vec::new();
    for name in all_streams() {
        let mut s = js.get_stream(&name).await.unwrap_or_else(|e| panic!("stream {name}: {e}"));
        out.push((name, s.info().await.unwrap().state.messages));
    }
    out
}

pub(crate) fn purges() -> Vec<String> {
    all_streams().into_iter().map(|s| format!("$JS.API.STREAM.PURGE.{s}")).collect()
}

/// The count of refused replies: every in-process broker of the test binary records into one
/// recorder, so a test waits for its own to be added (at least), never for an exact total.
async fn refused(broker: &InProcBroker, responder: &str) -> f64 {
    let (_, text) = http_get(broker.broker.http_addr, "/metrics").await.unwrap();
    metric(&text, "tillsync_replies_refused_total", &format!("responder=\"{responder}\"")).unwrap_or(-1.0)
}

/// A running stack with one activated till that has sold something (so every stream the
/// attacks aim at holds messages) and the counts of what the streams hold.
async fn stack_with_a_sale(topology: Topology, dir: &std::path::Path) -> (Stack, InProcBroker, tillsync_edge::Config) {
    let stack = topology.start().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let till = DeviceAddr::new("acme", "s1", "till-1");
    let config = activated_config(&stack, &till, dir).await;
    let bridge = Bridge::start(config.clone()).await.unwrap();
    bridge.submit(EventDraft::new(opened("o-1"))).await.unwrap();
    eventually_eq(T, "the sale landed", 1, || stack.db.count("SELECT count(*) FROM orders WHERE order_id = 'o-1'"))
        .await;
    let js = stack.nats.jetstream().await;
    eventually(T, "the till's watermark is stored", || async {
        let s = js.get_stream(streams::WATERMARKS).await.ok()?;
        s.direct_get_last_for_subject(subject::watermarks(&till)).await.ok()
    })
    .await;
    bridge.shutdown().await;
    (stack, broker, config)
}

/// A stranger on the network: a fresh key and a code-shaped password reach the activation
/// responder, whose answer once purged every stream.
async fn a_strangers_activation_reply_aimed_at_the_jetstream_api_purges_nothing(topology: Topology) {
    let dir = tempfile::tempdir().unwrap();
    let (stack, broker, _) = stack_with_a_sale(topology, dir.path()).await;
    let before = counts(&stack).await;

    let key = nkeys::KeyPair::new_user();
    let public = key.public_key();
    let client = stack
        .nats
        .with_tls(async_nats::ConnectOptions::with_nkey(key.seed().unwrap()))
        .user_and_password(identity::ACTIVATION_USER.into(), "ABCDEFGHIJKLMNOPQRST".into())
        .custom_inbox_prefix(identity::activation_inbox(&public))
        .connect(stack.nats.addrs())
        .await
        .expect("a code-shaped password gets the activation user");
    let request = codec::encode(&identity::ActivateRequest { code: "ABCDEFGHIJKLMNOPQRST".into() });
    let refused_before = refused(&broker, "activation").await;
    for purge in purges() {
        client.publish_with_reply(identity::activate_subject(&public), purge, request.clone().into()).await.unwrap();
    }
    client.flush().await.unwrap();
    let n = purges().len() as f64;
    eventually(T, "every misdirected activation refused", || async {
        (refused(&broker, "activation").await >= refused_before + n).then_some(())
    })
    .await;
    assert_eq!(counts(&stack).await, before, "no stream lost a message");
    // Recorded, and bounded: one row a minute for this responder, however many tries.
    let rows = || stack.db.count("SELECT count(*) FROM identity_audit WHERE action = 'reply_refused'");
    eventually_eq(T, "one audit row", 1, rows).await;
    // The same request with its own inbox is answered (refused as a bad code): the check is
    // about the reply, not the requester.
    let answer = client.request(identity::activate_subject(&public), request.into()).await.unwrap();
    let reply: identity::ActivateReply = codec::decode(&answer.payload).unwrap();
    assert!(matches!(reply, identity::ActivateReply::Refused { .. }), "{reply:?}");
    broker.stop().await;
}

/// A device: its command-key request answered by the broker, and a direct get of its own
/// watermark answered by JetStream itself, both aimed at purges.
async fn a_devices_replies_aimed_at_purges_change_nothing(topology: Topology) {
    let dir = tempfile::tempdir().unwrap();
    let (stack, broker, config) = stack_with_a_sale(topology, dir.path()).await;
    let till = DeviceAddr::new("acme", "s1", "till-1");
    let before = counts(&stack).await;
    let probe = Probe::device(&stack, &default_path(&config.db)).await;
    let keys = tillsync_schemas::command_keys::subject(&till);
    let direct_get = format!("$JS.API.DIRECT.GET.{}.{}", streams::WATERMARKS, subject::watermarks(&till));
    let refused_before = refused(&broker, "command_keys").await;
    for purge in purges() {
        probe.client.publish_with_reply(keys.clone(), purge.clone(), "".into()).await.unwrap();
        probe.client.publish_with_reply(direct_get.clone(), purge, "".into()).await.unwrap();
    }
    probe.client.flush().await.unwrap();
    let n = purges().len() as f64;
    eventually(T, "every misdirected key request refused", || async {
        (refused(&broker, "command_keys").await >= refused_before + n).then_some(())
    })
    .await;
    // JetStream's own answers went out too; give them the same time to have done harm.
    let own = probe.client.request(direct_get, "".into()).await.expect("its own watermark, to its own inbox");
    assert!(!own.payload.is_empty());
    assert_eq!(counts(&stack).await, before, "no stream lost a message");
    let rows = || {
        stack.db.count("SELECT count(*) FROM identity_audit WHERE action = 'reply_refused' AND device_id = 'till-1'")
    };
    eventually_eq(T, "one audit row", 1, rows).await;
    broker.stop().await;
}

/// A tenant's portal pointing its configuration-publish answer at another tenant's snapshot
/// subject (kept one per subject): the answer once replaced that tenant's snapshot.
async fn a_portals_publish_reply_aimed_at_another_tenants_snapshot_is_refused_and_not_acted_on(topology: Topology) {
    let stack = topology.start().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    add_tenant(&stack.db.pool, "acme").await;
    add_tenant(&stack.db.pool, "beta").await;
    let (portal, _) = Probe::portal(&stack, "acme").await;
    let victim = snapshot_subject("beta", "s1");
    let change = tillsync_schemas::config::ChangeSet {
        tenant_id: "acme".into(),
        store_id: None,
        if_match: None,
        published_by: "mallory".into(),
        changes: vec![],
    };
    let body = codec::encode(&change);
    let refused_before = refused(&broker, "config_publish").await;
    portal.client.publish_with_reply(publish_subject("acme", None), victim.clone(), body.into()).await.unwrap();
    portal.client.flush().await.unwrap();
    eventually(T, "the misdirected publish refused", || async {
        (refused(&broker, "config_publish").await >= refused_before + 1.0).then_some(())
    })
    .await;
    let js = stack.nats.jetstream().await;
    let snapshots = js.get_stream(streams::CONFIG_SNAPSHOTS).await.unwrap();
    assert!(snapshots.direct_get_last_for_subject(&victim).await.is_err(), "nothing landed on beta's snapshot");
    let rows = || stack.db.count("SELECT count(*) FROM identity_audit WHERE action = 'reply_refused'");
    eventually_eq(T, "one audit row", 1, rows).await;
    broker.stop().await;
}

/// Another tenant's till with the same device id aims JetStream's answer to a direct get of its
/// own watermark at the victim's watermark subject, so the victim reads a watermark for
/// `till-1` that is not its own: it once deleted the victim's unconfirmed sales.
async fn a_watermark_another_tenants_till_plants_deletes_no_sale(topology: Topology) {
    let (acme_dir, beta_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let stack = topology.start().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let victim = DeviceAddr::new("acme", "s1", "till-1");
    let thief = DeviceAddr::new("beta", "s1", "till-1");
    let victim_config = activated_config(&stack, &victim, acme_dir.path()).await;
    let thief_config = activated_config(&stack, &thief, beta_dir.path()).await;
    let thief_bridge = Bridge::start(thief_config.clone()).await.unwrap();
    for i in 1..=5 {
        thief_bridge.submit(EventDraft::new(opened(&format!("b-{i}")))).await.unwrap();
    }
    let js = stack.nats.jetstream().await;
    let watermarks = js.get_stream(streams::WATERMARKS).await.unwrap();
    let wm_of = |addr: DeviceAddr| {
        let watermarks = watermarks.clone();
        async move {
            let m = watermarks.direct_get_last_for_subject(subject::watermarks(&addr)).await.ok()?;
            codec::decode::<tillsync_schemas::Watermark>(&m.payload).ok()
        }
    };
    eventually(T, "the thief's watermark reaches 5", || async { wm_of(thief.clone()).await.filter(|w| w.seq == 5) })
        .await;
    thief_bridge.shutdown().await;
    // Both connect while a broker answers the callout; connections outlive the broker.
    let probe = Probe::device(&stack, &default_path(&thief_config.db)).await;
    let bridge = Bridge::start(victim_config.clone()).await.unwrap();
    eventually(T, "the victim is connected", || async {
        (bridge.status().await.ok()?.connection == "connected").then_some(())
    })
    .await;

    // The victim sells while no broker confirms anything: three sales wait in its outbox.
    broker.stop().await;
    for i in 1..=3 {
        bridge.submit(EventDraft::new(opened(&format!("a-{i}")))).await.unwrap();
    }
    eventually(T, "the three are published", || async {
        (bridge.status().await.ok()?.outbox.unsent == 0).then_some(())
    })
    .await;

    let direct_get = format!("$JS.API.DIRECT.GET.{}.{}", streams::WATERMARKS, subject::watermarks(&thief));
    probe.client.publish_with_reply(direct_get, subject::watermarks(&victim), "".into()).await.unwrap();
    probe.client.flush().await.unwrap();
    let planted = eventually(T, "the planted watermark is stored on the victim's subject", || async {
        wm_of(victim.clone()).await
    })
    .await;
    assert_eq!((planted.tenant_id.as_str(), planted.seq), ("beta", 5), "the attack is real");
    eventually(T, "the victim refuses it", || async {
        let n = metric(&bridge.metrics_text(), "tillsync_edge_watermarks_refused_total", "reason=\"other_device\"")?;
        (n >= 1.0).then_some(())
    })
    .await;
    let stats = bridge.status().await.unwrap().outbox;
    assert_eq!((stats.rows, stats.watermark, stats.last_seq), (3, 0, 3), "nothing deleted, no seq skipped");
    // In-process brokers share one metrics recorder (this test's first topology counted too):
    // the count is read before this broker hears the victim's heartbeat, and must rise.
    let before = inproc_broker_metric("tillsync_bridge_watermarks_refused_total", "");
    // The broker comes back: every sale lands, once.
    let broker = InProcBroker::start(stack.broker_config()).await;
    eventually_eq(T, "the victim's three sales", 3, || {
        stack.db.count("SELECT count(*) FROM orders WHERE tenant_id = 'acme' AND order_id LIKE 'a-%'")
    })
    .await;
    // The cloud hears of the refusal from the victim's heartbeat: counted (the alert
    // TillsyncBridgeRefusedWatermark pages on it) and kept on the device's row.
    eventually(T, "the broker counts the bridge's refusal", || async {
        (inproc_broker_metric("tillsync_bridge_watermarks_refused_total", "") >= before + 1.0).then_some(())
    })
    .await;
    let row = "SELECT watermarks_refused FROM devices WHERE tenant_id = 'acme' AND device_id = 'till-1'";
    eventually(T, "the device row says it refused one", || async { (stack.db.count(row).await >= 1).then_some(()) })
        .await;
    bridge.shutdown().await;
    broker.stop().await;
}

/// A stranger with fresh keys: activation connects with guessed codes and connects with
/// unknown keys, each try a new key. They once added rows per try; now each action and reason
/// is one row per address a minute that counts the tries.
async fn a_strangers_tries_with_fresh_keys_are_counted_not_stored_one_by_one(topology: Topology) {
    const TRIES: i64 = 30;
    let stack = topology.start().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    for _ in 0..TRIES {
        let key = nkeys::KeyPair::new_user();
        let public = key.public_key();
        let code = tillsync_broker::admin::auth::new_code();
        let client = stack
            .nats
            .with_tls(async_nats::ConnectOptions::with_nkey(key.seed().unwrap()))
            .user_and_password(identity::ACTIVATION_USER.into(), code.clone())
            .custom_inbox_prefix(identity::activation_inbox(&public))
            .connect(stack.nats.addrs())
            .await
            .expect("a code-shaped password gets the activation user");
        let request = codec::encode(&identity::ActivateRequest { code });
        let answer = client.request(identity::activate_subject(&public), request.into()).await.unwrap();
        let reply: identity::ActivateReply = codec::decode(&answer.payload).unwrap();
        assert!(matches!(reply, identity::ActivateReply::Refused { .. }), "{reply:?}");
        let unknown = nkeys::KeyPair::new_user();
        let refused = stack
            .nats
            .with_tls(async_nats::ConnectOptions::with_nkey(unknown.seed().unwrap()))
            .connect(stack.nats.addrs())
            .await;
        assert!(refused.is_err(), "an unknown key is refused");
    }
    let db = &stack.db;
    for (action, reason) in
        [("activation_connect", ""), ("activation_refused", "code_unknown"), ("connection_refused", "unknown_key")]
    {
        let filter = format!("action = '{action}' AND coalesce(reason, '') = '{reason}'");
        let tries = db.count(&format!("SELECT coalesce(sum(tries), 0) FROM identity_audit WHERE {filter}")).await;
        let rows = db.count(&format!("SELECT count(*) FROM identity_audit WHERE {filter}")).await;
        assert_eq!(tries, TRIES, "{action}: every try counted");
        assert!((1..=2).contains(&rows), "{action}: {rows} rows for {TRIES} tries (one a minute)");
    }
    broker.stop().await;
}

/// One till floods its own events subject with junk as fast as it can: it is cut off (its key
/// revoked with reason `flooding`, its connection closed, recorded, counted), the stream keeps
/// at most `TILLSYNC_EVENTS_MAX_PER_DEVICE` of its messages, and another tenant's sales sent
/// meanwhile all land.
async fn a_flooding_till_is_cut_off_and_other_tenants_sales_go_on(topology: Topology) {
    flood_is_cut_off(topology, subject::events, streams::EVENTS).await;
}

/// The same flood on the till's command-ack subject: acks count against the same allowance
/// and the command-ack stream keeps at most as many of one device's messages.
async fn a_till_flooding_command_acks_is_cut_off_too(topology: Topology) {
    flood_is_cut_off(topology, subject::command_acks, streams::COMMAND_ACKS).await;
}

async fn flood_is_cut_off(topology: Topology, subject_of: fn(&DeviceAddr) -> String, stream: &str) {
    let stack = topology.start().await;
    let mut config = stack.broker_config();
    config.device_max_events_per_s = 20; // 200 within the 10 s window
    config.events_max_per_device = 300; // more than the window allows, so the flood is seen
    let broker = InProcBroker::start(config).await;
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceAddr::new("acme", "s1", "till-1");
    let b = DeviceAddr::new("other", "s1", "till-1");
    let a_config = activated_config(&stack, &a, &dir.path().join("a")).await;
    let b_config = activated_config(&stack, &b, &dir.path().join("b")).await;
    let b_bridge = Bridge::start(b_config).await.unwrap();

    let flooder = Probe::device(&stack, &default_path(&a_config.db)).await;
    let client = flooder.client.clone();
    let to = subject_of(&a);
    let flood = tokio::spawn(async move {
        let js = async_nats::jetstream::new(client);
        let junk: Vec<u8> = vec![0xc1; 1024];
        for _ in 0..1_000 {
            if js.publish(to.clone(), junk.clone().into()).await.is_err() {
                break;
            }
        }
    });
    for i in 0..20 {
        b_bridge.submit(EventDraft::new(opened(&format!("o-b-{i}")))).await.unwrap();
    }

    let revoked = "SELECT count(*) FROM credentials WHERE tenant_id = 'acme' AND revoke_reason = 'flooding'";
    eventually_eq(T, "the flooding till's key revoked", 1, || stack.db.count(revoked)).await;
    let audit = "SELECT count(*) FROM identity_audit WHERE action = 'cut_off' AND reason = 'flooding' AND device_id = 'till-1' AND tenant_id = 'acme'";
    assert_eq!(stack.db.count(audit).await, 1);
    eventually(T, "the flooding till disconnected", || async {
        (flooder.client.connection_state() != async_nats::connection::State::Connected).then_some(())
    })
    .await;
    let kicked = "SELECT count(*) FROM credentials WHERE tenant_id = 'acme' AND kicked_at IS NOT NULL";
    eventually_eq(T, "the kick recorded", 1, || stack.db.count(kicked)).await;
    let http = broker.broker.http_addr;
    eventually(T, "cut-off counted", || async {
        let text = http_get(http, "/metrics").await?.1;
        metric(&text, "tillsync_devices_cut_off_total", "limit=\"events\"").filter(|v| *v >= 1.0)
    })
    .await;
    let held = stored_on(&stack, stream, &format!("{}.>", subject_of(&a))).await;
    assert!(held <= 300, "the stream holds {held} of the flooding till's messages, more than its 300");
    let landed = "SELECT count(*) FROM orders WHERE tenant_id = 'other' AND order_id LIKE 'o-b-%'";
    eventually_eq(T, "every sale of the other tenant applied", 20, || stack.db.count(landed)).await;
    flood.abort();
    b_bridge.shutdown().await;
    broker.stop().await;
}

/// A stranger at a store's address trying activation after activation with fresh keys: past
/// `TILLSYNC_AUTH_MAX_REFUSALS_PER_ADDRESS_PER_MIN` its connects are refused as `rate_limited`
/// before any activation work, counted (no per-address label) and audited as one row per
/// address a minute however many tries; a till already activated behind the same address still
/// connects while the address is over its budget, and its sale lands.
async fn a_stranger_over_its_addresss_budget_is_refused_and_the_stores_till_still_sells(topology: Topology) {
    const BUDGET: u32 = 5;
    const TRIES: i64 = 40;
    /// One activation try with a fresh key and a guessed code; false when the connect is refused.
    async fn stranger_tries(stack: &Stack) -> bool {
        let key = nkeys::KeyPair::new_user();
        let public = key.public_key();
        let code = tillsync_broker::admin::auth::new_code();
        let connected = stack
            .nats
            .with_tls(async_nats::ConnectOptions::with_nkey(key.seed().unwrap()))
            .user_and_password(identity::ACTIVATION_USER.into(), code.clone())
            .custom_inbox_prefix(identity::activation_inbox(&public))
            .connect(stack.nats.addrs())
            .await;
        let Ok(client) = connected else { return false };
        let request = codec::encode(&identity::ActivateRequest { code });
        let answer = client.request(identity::activate_subject(&public), request.into()).await.unwrap();
        let reply: identity::ActivateReply = codec::decode(&answer.payload).unwrap();
        assert!(matches!(reply, identity::ActivateReply::Refused { .. }), "{reply:?}");
        true
    }
    let stack = topology.start().await;
    let mut config = stack.broker_config();
    config.auth_max_refusals_per_address_per_min = BUDGET;
    let broker = InProcBroker::start(config).await;
    let dir = tempfile::tempdir().unwrap();
    let till = DeviceAddr::new("acme", "s1", "till-1");
    // Activated first, from 127.0.0.1 like the stranger (one activation connect of the budget).
    let till_config = activated_config(&stack, &till, dir.path()).await;

    let http = broker.broker.http_addr;
    let limited_counts = || async {
        let text = http_get(http, "/metrics").await?.1;
        // A series appears with its first count.
        let count = |name, labels| metric(&text, name, labels).unwrap_or(0.0);
        let decided = count("tillsync_auth_decisions_total", "result=\"refused\",reason=\"rate_limited\"");
        Some((count("tillsync_auth_rate_limited_total", ""), decided))
    };
    let (limited_before, decided_before) = limited_counts().await.expect("the broker's metrics");
    let mut refused = 0;
    for _ in 0..TRIES {
        if !stranger_tries(&stack).await {
            refused += 1;
        }
    }
    // The budget is 5 and refills one try every 12 s: the tries take a few seconds.
    assert!(refused >= 30, "{refused} of {TRIES} tries refused with a budget of {BUDGET}");
    let counted = eventually(T, "the rate-limited refusals counted", || async {
        let (limited, decided) = limited_counts().await?;
        let (limited, decided) = (limited - limited_before, decided - decided_before);
        (limited >= 30.0 && limited == decided).then_some(limited)
    })
    .await;

    let db = &stack.db;
    let limited = "action = 'connection_refused' AND reason = 'rate_limited' AND remote = '127.0.0.1'";
    let tries = db.count(&format!("SELECT coalesce(sum(tries), 0) FROM identity_audit WHERE {limited}")).await;
    assert_eq!(tries as f64, counted, "every rate-limited try audited");
    let rows = db.count(&format!("SELECT count(*) FROM identity_audit WHERE {limited}")).await;
    assert!((1..=2).contains(&rows), "{rows} rate_limited rows for {tries} tries (one a minute)");
    let per_pair = "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM identity_audit WHERE minute IS NOT NULL
                    GROUP BY action, coalesce(reason, ''), remote) AS pairs";
    assert!(db.count(per_pair).await <= 2, "one row per action and reason a minute");
    let all_tries = "SELECT coalesce(sum(tries), 0) FROM identity_audit WHERE (action = 'activation_connect'
                     OR (action = 'connection_refused' AND reason = 'rate_limited')) AND minute IS NOT NULL";
    assert!(db.count(all_tries).await >= TRIES, "every activation connect counted, allowed or refused");

    // The address is still over its budget, and the store's till gets in all the same.
    assert!(!stranger_tries(&stack).await, "the stranger is still refused");
    let bridge = Bridge::start(till_config).await.unwrap();
    bridge.submit(EventDraft::new(opened("o-1"))).await.unwrap();
    eventually_eq(T, "the till's sale landed", 1, || db.count("SELECT count(*) FROM orders WHERE order_id = 'o-1'"))
        .await;
    let q = "SELECT count(*) FROM credentials WHERE device_id = 'till-1' AND last_host = '127.0.0.1'";
    assert_eq!(db.count(q).await, 1, "the till connected from the stranger's address");
    // At most one try refilled meanwhile (every 12 s).
    assert!(!stranger_tries(&stack).await || !stranger_tries(&stack).await, "the stranger is still refused");
    bridge.shutdown().await;
    broker.stop().await;
}

/// A stolen key's reach into the servers' memory and the streams' space: one connection
/// holds at most `max_subscriptions` (the generated server config), and a message larger than
/// the protocol's 64 KiB is refused by the stream, never stored.
async fn a_till_cannot_hold_unbounded_subscriptions_or_store_oversized_messages(topology: Topology) {
    let dir = tempfile::tempdir().unwrap();
    let stack = topology.start().await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let a = DeviceAddr::new("acme", "s1", "till-1");
    let config = activated_config(&stack, &a, dir.path()).await;
    let mut probe = Probe::device(&stack, &default_path(&config.db)).await;

    // Its own inbox, which it may subscribe to, as many times as it likes: the server stops it.
    let max = tillsync_broker::admin::auth::setup::MAX_SUBSCRIPTIONS as usize;
    let mut subs = Vec::with_capacity(max + 1);
    for i in 0..=max {
        match probe.client.subscribe(format!("{}.s{i}", identity::device_inbox(&a))).await {
            Ok(s) => subs.push(s),
            Err(_) => break,
        }
    }
    probe.client.flush().await.ok();
    probe.expect_error(&["maximum subscriptions exceeded"]).await;

    // An oversized event through JetStream: refused with the stream's reason, nothing stored.
    let probe = Probe::device(&stack, &default_path(&config.db)).await;
    let js = async_nats::jetstream::new(probe.client.clone());
    let big = vec![0u8; tillsync_schemas::MAX_MESSAGE_BYTES + 2048];
    let refused = match js.publish(subject::events(&a), big.into()).await {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let reason = refused.expect_err("an oversized message is not stored");
    assert!(reason.to_lowercase().contains("maximum"), "{reason}");
    assert_eq!(stored_on(&stack, streams::EVENTS, &format!("{}.>", subject::events(&a))).await, 0);
    broker.stop().await;
}
