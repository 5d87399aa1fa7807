//! The Python example in `examples/python` against the real broker: the wire contract is
//! language-neutral only if a client written from `docs/protocol.md` alone gets its events in.
//!
//! Python and nats-py are a test requirement (scripts/test.sh installs them), so a missing
//! interpreter fails these tests with a message instead of skipping them.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use tillsync_schemas::event::{OrderItemAdded, OrderOpened};
use tillsync_schemas::{codec, streams, subject, DeviceAddr, EventBody, EventEnvelope};
use tillsync_tests::{eventually_eq, InProcBroker, Stack, DEFAULT_TIMEOUT};

use crate::common::add_tenant;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `TILLSYNC_PYTHON`, else the project venv; checked to import nats-py, msgpack and nkeys.
pub(crate) fn python() -> PathBuf {
    let python =
        std::env::var_os("TILLSYNC_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo().join(".tools/venv/bin/python"));
    let hint = "run ./scripts/test.sh (or `bash -c 'source scripts/lib.sh; ensure_venv'`), or set TILLSYNC_PYTHON \
                to a python with nats-py, msgpack and nkeys";
    assert!(python.exists(), "Python for examples/ not found at {}: {hint}", python.display());
    let probe = std::process::Command::new(&python)
        .args(["-c", "import nats, nats.js, msgpack, nkeys"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; {hint}", python.display()));
    assert!(
        probe.status.success(),
        "{} cannot import nats-py/msgpack/nkeys: {}; {hint}",
        python.display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    python
}

async fn run_example(args: &[&str]) -> Output {
    run_example_with(args, &[]).await
}

/// The example with `args` and `env` (and no NATS settings of the caller's environment).
pub(crate) async fn run_example_with(args: &[&str], env: &[(&str, String)]) -> Output {
    let script = repo().join("examples/python/publish_event.py");
    let mut cmd = tokio::process::Command::new(python());
    for var in ["NATS_URL", "NATS_CREDS", "NATS_CA_FILE", "NATS_CERT_FILE", "NATS_KEY_FILE"] {
        cmd.env_remove(var);
    }
    let child = cmd.arg(&script).args(args).envs(env.iter().map(|(k, v)| (k, v))).kill_on_drop(true).output();
    tokio::time::timeout(SCRIPT_TIMEOUT, child)
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} still running after {SCRIPT_TIMEOUT:?}", script.display()))
        .expect("spawn the Python example")
}

/// Asserts the exit code, showing the script's stderr when it differs.
pub(crate) fn expect_exit(out: &Output, code: i32, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: stderr was:\n{stderr}");
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout").trim().to_string()
}

fn hex_decode(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit()), "not hex: {s:?}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[tokio::test]
async fn python_example_event_lands_as_a_row() {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let url = stack.nats.url();
    let base = [
        "--nats-url",
        &url,
        "--tenant",
        "acme",
        "--store",
        "s1",
        "--device",
        "py-1",
        "--seq",
        "1",
        "--msg-id-nonce",
        "n0nce",
    ];

    let mut args = base.to_vec();
    args.extend(["--order-id", "py-o-1", "--table", "7", "--wait-watermark"]);
    let out = run_example(&args).await;
    let event_id = expect_exit(&out, 0, "publish with --wait-watermark");
    assert_eq!(event_id.len(), 36, "stdout should be exactly the event id, got {event_id:?}");

    let db = &stack.db;
    let ledger = format!("SELECT count(*) FROM processed_events WHERE device_id = 'py-1' AND event_id = '{event_id}'");
    eventually_eq(DEFAULT_TIMEOUT, "ledger row of the Python event", 1, || db.count(&ledger)).await;
    let (device, currency, table, status): (String, String, Option<String>, String) = sqlx::query_as(
        "SELECT device_id, currency, table_label, status FROM orders \
         WHERE tenant_id = 'acme' AND store_id = 's1' AND order_id = 'py-o-1'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("order row");
    assert_eq!(
        (device.as_str(), currency.as_str(), table.as_deref(), status.as_str()),
        ("py-1", "EUR", Some("7"), "open")
    );
    // --wait-watermark returned, so the broker had already published watermark 1.
    assert_eq!(db.count("SELECT watermark FROM devices WHERE device_id = 'py-1'").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM quarantine").await, 0, "nothing the example sent was refused");

    // The stored message carries the contract's headers.
    let addr = DeviceAddr::new("acme", "s1", "py-1");
    let stream = stack.nats.jetstream().await.get_stream(streams::EVENTS).await.unwrap();
    let partitions = stack.broker_config().partitions;
    let on = tillsync_schemas::partition::stored_subject(&subject::events(&addr), "acme", "s1", partitions);
    let stored = stream.get_last_raw_message_by_subject(&on).await.unwrap();
    let header = |name: &str| stored.headers.get(name).map(|v| v.as_str().to_string());
    assert_eq!(
        header(streams::HEADER_MSG_ID),
        Some(streams::event_msg_id(&streams::msg_id_prefix(&addr, "n0nce"), &event_id))
    );
    assert_eq!(header(streams::HEADER_CONTENT_TYPE).as_deref(), Some(streams::CONTENT_TYPE));
    assert_eq!(header(streams::HEADER_SCHEMA_VERSION), Some(tillsync_schemas::SCHEMA_VERSION.to_string()));
    let ev = codec::decode_event(&stored.subject, &stored.payload).expect("the broker's codec accepts it");
    assert_eq!(ev.event_id, event_id);

    // A retry with the same event id is a no-op: still one ledger row, one stream message.
    let mut retry = base.to_vec();
    retry.extend(["--order-id", "py-o-1", "--table", "7", "--event-id", &event_id, "--wait-watermark"]);
    let again = expect_exit(&run_example(&retry).await, 0, "retry with the same event id");
    assert_eq!(again, event_id);
    assert_eq!(db.count(&ledger).await, 1);
    let info = stack.nats.jetstream().await.get_stream(streams::EVENTS).await.unwrap().info().await.unwrap().clone();
    assert_eq!(info.state.messages, 1, "JetStream dropped the retry by Nats-Msg-Id");
    broker.stop().await;
}

#[tokio::test]
async fn python_encoding_matches_the_rust_codec() {
    let fixed = [
        "--dump",
        "--tenant",
        "acme",
        "--store",
        "s1",
        "--device",
        "till-1",
        "--event-id",
        "01890a5d-ac96-774b-bcce-b302099a8057",
        "--occurred-at-ms",
        "1700000000123",
        "--order-id",
        "o-1",
    ];

    let mut opened = fixed.to_vec();
    opened.extend(["--seq", "1", "--kind", "order_opened", "--currency", "SEK"]);
    let hex = expect_exit(&run_example(&opened).await, 0, "--dump order_opened");
    let bytes = hex_decode(&hex);
    let want = EventEnvelope {
        schema_version: 1,
        tenant_id: "acme".into(),
        store_id: "s1".into(),
        device_id: "till-1".into(),
        event_id: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
        seq: 1,
        occurred_at_ms: 1_700_000_000_123,
        body: EventBody::OrderOpened(OrderOpened { order_id: "o-1".into(), currency: "SEK".into(), table: None }),
    };
    let got = codec::decode_event("tillsync.ev.acme.s1.till-1", &bytes).expect("Rust decodes the Python bytes");
    assert_eq!(got, want);
    assert_eq!(bytes, codec::encode(&want), "Python and Rust encode order_opened byte for byte alike");

    // The committed golden message, reproduced by the Python encoder.
    let mut item = fixed.to_vec();
    item.extend(["--seq", "42", "--kind", "order_item_added", "--line-id", "l-1", "--sku", "latte"]);
    item.extend(["--name", "Latte", "--quantity", "2", "--unit-price-minor", "350"]);
    let bytes = hex_decode(&expect_exit(&run_example(&item).await, 0, "--dump order_item_added"));
    let golden = std::fs::read(repo().join("schemas/tests/golden/event_order_item_added.msgpack")).unwrap();
    assert_eq!(bytes, golden, "Python encoding of the golden event differs from schemas/tests/golden");
    let got = codec::decode_event("tillsync.ev.acme.s1.till-1", &bytes).unwrap();
    assert_eq!(
        got.body,
        EventBody::OrderItemAdded(OrderItemAdded {
            order_id: "o-1".into(),
            line_id: "l-1".into(),
            sku: "latte".into(),
            name: "Latte".into(),
            quantity: 2,
            unit_price_minor: 350,
        })
    );
}

#[tokio::test]
async fn python_example_refuses_invalid_input_before_publishing() {
    // Port 1 has no server: exit 2 proves validation ran before any connection attempt.
    let common = ["--nats-url", "nats://127.0.0.1:1", "--store", "s1", "--device", "d1"];
    for (bad, flag) in [(["--tenant", "a.b", "--seq", "1"], "--tenant"), (["--tenant", "acme", "--seq", "0"], "--seq")]
    {
        let mut args = common.to_vec();
        args.extend(bad);
        let out = run_example(&args).await;
        expect_exit(&out, 2, &format!("invalid {flag}"));
        assert!(String::from_utf8_lossy(&out.stderr).contains(flag), "stderr names {flag}");
    }
}

/// With authorization on (as tillsync runs NATS) the example connects as a device activated
/// like any till (`tillsync-edge activate` with a one-time code): its identity file as
/// `--creds`, replies on the device's own inbox. Without credentials the server refuses it.
#[tokio::test]
async fn python_example_publishes_as_an_activated_device_on_an_authorized_server() {
    let stack = Stack::start_with_auth().await;
    add_tenant(&stack.db.pool, "acme").await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let addr = DeviceAddr::new("acme", "s1", "py-1");
    let code = tillsync_tests::activation_code(&stack.db.pool, &addr, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("py-1.db");
    let activated = tokio::process::Command::new(tillsync_tests::bin_path("tillsync-edge"))
        .args(["activate", "--json", "--code", &code, "--db"])
        .arg(&db)
        .env("NATS_URL", stack.nats.url())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run tillsync-edge activate");
    assert!(activated.status.success(), "activate: {}", String::from_utf8_lossy(&activated.stdout));
    let identity = tillsync_edge::identity::default_path(&db);
    let url = stack.nats.url();
    let base = ["--nats-url", &url, "--tenant", "acme", "--store", "s1", "--device", "py-1", "--seq", "1"];

    let refused = run_example(&base).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    expect_exit(&refused, 1, "no credentials");
    // nats-server sends "Authorization Violation" and closes; under load the close can reach
    // the client first, and nats.py reports the reset instead.
    let told = ["authorization", "connection reset"].iter().any(|w| stderr.to_lowercase().contains(w));
    assert!(told, "names the refusal: {stderr}");

    // The key from the environment, as the tillsync binaries read NATS_CREDS.
    let mut args = base.to_vec();
    args.extend(["--order-id", "py-o-1", "--wait-watermark"]);
    let out = run_example_with(&args, &[("NATS_CREDS", identity.display().to_string())]).await;
    let event_id = expect_exit(&out, 0, "publish as the activated device");
    let ledger = format!("SELECT count(*) FROM processed_events WHERE device_id = 'py-1' AND event_id = '{event_id}'");
    eventually_eq(DEFAULT_TIMEOUT, "ledger row of the device's event", 1, || stack.db.count(&ledger)).await;
    assert_eq!(stack.db.count("SELECT count(*) FROM quarantine").await, 0);

    // The device may publish only as itself: another device's subject is refused by NATS.
    let mut other = base.to_vec();
    other[7] = "py-2";
    other.extend(["--creds", identity.to_str().unwrap(), "--timeout", "3"]);
    let denied = run_example(&other).await;
    expect_exit(&denied, 1, "publishing as another device");
    let why = String::from_utf8_lossy(&denied.stderr);
    assert!(why.contains("permissions violation for publish to \"tillsync.ev.acme.s1.py-2\""), "{why}");
    broker.stop().await;
}
