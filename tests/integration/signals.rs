//! Nothing stops silently: a full events stream, a NATS outage, an open gap and a watermark
//! waiting for lost events each show in the broker's metrics, in `tillsync devices list` and
//! make `tillsync status` exit 3; a fresh broker exports every documented counter and gauge.
//! The broker runs as a process of its own: metrics are global to a process, and in-process
//! brokers of other tests would write the same series.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use serde_json::json;
use tillsync_broker::config::Config;
use tillsync_schemas::{codec, streams, subject, DeviceAddr, Heartbeat};
use tillsync_tests::{eventually, free_addr, http_get, metric, BrokerProc, Stack, DEFAULT_TIMEOUT};

use crate::common::*;
use crate::ops::tillsync;

const ACME: &str = "tenant=\"acme\"";
const EVENTS: &str = "stream=\"TILLSYNC_EVENTS\"";

/// A stack with tenant `acme` and a broker process serving /metrics on a port of its own,
/// returned once its monitor has refreshed and its instance has reported.
async fn with_broker(tune: impl FnOnce(&mut Config)) -> (Stack, BrokerProc, SocketAddr) {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let mut config = stack.broker_config();
    config.http_addr = free_addr();
    tune(&mut config);
    let broker = BrokerProc::start(&config);
    let addr = config.http_addr;
    let partitions = f64::from(config.partitions);
    scrape_until(addr, DEFAULT_TIMEOUT, "every partition owned", |m| {
        metric(m, "tillsync_partitions_owned", "").filter(|v| *v == partitions)
    })
    .await;
    scrape_until(addr, DEFAULT_TIMEOUT, "the monitor's first refresh", |m| {
        metric(m, "tillsync_stream_bytes", EVENTS).filter(|v| !v.is_nan())
    })
    .await;
    let db = &stack.db;
    eventually(DEFAULT_TIMEOUT, "the broker instance reported", || async {
        (db.count("SELECT count(*) FROM broker_instances").await == 1).then_some(())
    })
    .await;
    (stack, broker, addr)
}

/// Scrapes /metrics until `check` finds what it wants in the text.
async fn scrape_until<T>(addr: SocketAddr, within: Duration, what: &str, check: impl Fn(&str) -> Option<T>) -> T {
    let check = &check;
    eventually(within, what, || async move { check(&http_get(addr, "/metrics").await?.1) }).await
}

fn is(want: f64) -> impl Fn(Option<f64>) -> Option<()> {
    move |v| (v == Some(want)).then_some(())
}

/// The broker's metrics as docs/metrics.md lists them (name, type), edge bridge excluded.
fn documented_broker_metrics() -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let broker = doc.split("\n## Broker").nth(1).unwrap().split("\n## Edge bridge").next().unwrap();
    broker
        .lines()
        .filter(|l| l.starts_with("| `tillsync_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_string(), cells[2].to_string())
        })
        .collect()
}

/// True when the scrape has a sample of `name` (a histogram's by its `_count`).
fn exported(text: &str, name: &str, kind: &str) -> bool {
    let series = if kind == "histogram" { format!("{name}_count") } else { name.to_string() };
    text.lines().any(|l| l.starts_with(&format!("{series} ")) || l.starts_with(&format!("{series}{{")))
}

#[tokio::test]
async fn a_fresh_broker_exports_every_documented_series() {
    let (_stack, _broker, addr) = with_broker(|_| {}).await;
    let documented = documented_broker_metrics();
    assert!(documented.len() > 35, "{documented:?}");
    // Gauges come from duties with their own first tick: wait for all of them (on a loaded
    // host one can come a little after another), then say which are missing if any.
    let all = |m: &str| documented.iter().all(|(name, kind)| exported(m, name, kind));
    let _ = tokio::time::timeout(DEFAULT_TIMEOUT, async {
        loop {
            if let Some((_, m)) = http_get(addr, "/metrics").await {
                if all(&m) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let text = scrape_until(addr, DEFAULT_TIMEOUT, "the tenant's gauges", |m| {
        metric(m, "tillsync_command_inbox_depth", ACME)?;
        metric(m, "tillsync_devices_online", ACME)?;
        Some(m.to_string())
    })
    .await;
    let missing: Vec<_> = documented.iter().filter(|(name, kind)| !exported(&text, name, kind)).collect();
    assert!(missing.is_empty(), "documented but not exported by a fresh broker: {missing:?}\n{text}");
    for (name, labels) in [
        ("tillsync_events_conflict_total", "kind=\"stale\""),
        ("tillsync_events_conflict_total", "kind=\"content_mismatch\""),
        ("tillsync_events_duplicate_total", "layer=\"ledger\""),
        ("tillsync_events_quarantined_total", "reason=\"apply_failed\""),
        ("tillsync_events_applied_total", "kind=\"order_opened\""),
        ("tillsync_commands_failed_total", "code=\"max_attempts\""),
        ("tillsync_db_retries_total", "op=\"ingest\""),
        ("tillsync_event_gaps_total", ""),
        ("tillsync_commands_expired_total", ""),
        ("tillsync_device_gaps_open", ACME),
        ("tillsync_watermarks_stalled_devices", ACME),
        ("tillsync_devices_offline", ACME),
    ] {
        assert_eq!(metric(&text, name, labels), Some(0.0), "{name}{{{labels}}}");
    }
    assert_eq!(metric(&text, "tillsync_nats_connected", ""), Some(1.0));
    assert_eq!(metric(&text, "tillsync_stream_max_bytes", EVENTS), Some(256.0 * 1024.0 * 1024.0));
    assert_eq!(metric(&text, "tillsync_stream_max_bytes", "stream=\"TILLSYNC_STATUS\""), Some(0.0));
}

#[tokio::test]
async fn a_full_events_stream_shows_in_its_gauges_and_status_exits_3() {
    let limit = 128 * 1024;
    let (stack, _broker, addr) = with_broker(|c| c.events_max_bytes = limit).await;
    let before = tillsync(&stack, &["status"]).await;
    assert_eq!(before.code, 0, "{}{}", before.stdout, before.stderr);

    let js = stack.nats.jetstream().await;
    let dev = DeviceAddr::new("acme", "s1", "till-1");
    let mut refused = None;
    for seq in 1..=5_000 {
        if let Err(e) = try_publish(&js, &event(&dev, seq, opened(&format!("o-{seq}")))).await {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("JetStream never refused an event");
    assert!(refused.contains("maximum bytes exceeded"), "{refused}");

    let fill = scrape_until(addr, DEFAULT_TIMEOUT, "the events stream's fullness", |m| {
        let (bytes, max) =
            (metric(m, "tillsync_stream_bytes", EVENTS)?, metric(m, "tillsync_stream_max_bytes", EVENTS)?);
        (max == limit as f64 && bytes / max > 0.95).then_some(bytes / max)
    })
    .await;
    assert!(fill <= 1.0, "{fill}");

    let run = tillsync(&stack, &["status"]).await;
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("PROBLEM: stream TILLSYNC_EVENTS is"), "{}", run.stdout);
    let v = tillsync(&stack, &["status", "--json"]).await.json();
    let events = v["streams"].as_array().unwrap().iter().find(|s| s["name"] == json!(streams::EVENTS)).unwrap();
    assert_eq!(events["max_bytes"], json!(limit));
    assert!(events["fill"].as_f64().unwrap() > 0.95, "{events}");
    assert_eq!(v["problems"].as_array().unwrap().len(), 1, "{v:#}");
}

#[tokio::test]
async fn a_nats_outage_is_seen_at_once_and_status_exits_3_until_it_ends() {
    let (mut stack, _broker, addr) = with_broker(|_| {}).await;
    let before = tillsync(&stack, &["status"]).await;
    assert_eq!(before.code, 0, "{}{}", before.stdout, before.stderr);

    stack.nats.stop();
    let stopped = Instant::now();
    scrape_until(addr, DEFAULT_TIMEOUT, "tillsync_nats_connected 0", |m| {
        is(0.0)(metric(m, "tillsync_nats_connected", ""))
    })
    .await;
    assert!(stopped.elapsed() < Duration::from_secs(3), "seen after {:?}", stopped.elapsed());
    // The gauges read from JetStream say "unknown", not their last (healthy-looking) value.
    scrape_until(addr, DEFAULT_TIMEOUT, "JetStream gauges NaN", |m| {
        let pending = metric(m, "tillsync_consumer_pending_messages", "consumer=\"broker-events\"")?;
        (pending.is_nan() && metric(m, "tillsync_stream_bytes", EVENTS)?.is_nan()).then_some(())
    })
    .await;

    let asked = Instant::now();
    let run = tillsync(&stack, &["status", "--timeout-s", "5"]).await;
    assert!(asked.elapsed() < Duration::from_secs(10), "status took {:?}", asked.elapsed());
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    let said = format!("PROBLEM: NATS unreachable at {}", stack.nats.url());
    assert!(run.stdout.contains(&said), "{}", run.stdout);
    let v = tillsync(&stack, &["status", "--json"]).await.json();
    assert_eq!((v["nats"]["reachable"].clone(), v["postgres"]["reachable"].clone()), (json!(false), json!(true)));
    assert_eq!(v["brokers"].as_array().unwrap().len(), 1, "Postgres facts are still shown");

    stack.nats.restart().await;
    scrape_until(addr, Duration::from_secs(30), "reconnected, JetStream gauges back", |m| {
        let back = metric(m, "tillsync_nats_connected", "")? == 1.0;
        (back && !metric(m, "tillsync_consumer_pending_messages", "consumer=\"broker-events\"")?.is_nan()).then_some(())
    })
    .await;
    let after = tillsync(&stack, &["status"]).await;
    assert_eq!(after.code, 0, "{}{}", after.stdout, after.stderr);
}

#[tokio::test]
async fn status_gives_up_on_a_silent_nats_within_its_timeout() {
    let stack = Stack::start().await;
    // Accepts connections and never says a word, like a hung server.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("nats://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let asked = Instant::now();
    let run = tillsync(&stack, &["status", "--nats-url", &url, "--timeout-s", "2"]).await;
    assert!(asked.elapsed() < Duration::from_secs(4), "status took {:?}", asked.elapsed());
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!("PROBLEM: NATS unreachable at {url}: no answer within 2 s")),
        "{}",
        run.stdout
    );
    held.abort();
}

#[tokio::test]
async fn an_open_gap_shows_in_metrics_devices_list_and_status() {
    let (stack, _broker, addr) = with_broker(|_| {}).await;
    let js = stack.nats.jetstream().await;
    let dev = DeviceAddr::new("acme", "s1", "till-1");
    publish(&js, &event(&dev, 1, opened("o-1"))).await;
    publish(&js, &event(&dev, 3, status("o-1", "paid"))).await;
    scrape_until(addr, DEFAULT_TIMEOUT, "one open gap", |m| is(1.0)(metric(m, "tillsync_device_gaps_open", ACME)))
        .await;
    scrape_until(addr, DEFAULT_TIMEOUT, "the gap older than 2 s", |m| {
        metric(m, "tillsync_device_gap_oldest_seconds", ACME).filter(|age| *age > 2.0)
    })
    .await;

    let list = tillsync(&stack, &["devices", "list", "--json"]).await.ok().json();
    let d = &list[0];
    assert_eq!((d["open_gaps"].clone(), d["watermark"].clone(), d["last_seq"].clone()), (json!(1), json!(1), json!(3)));
    assert!(d["oldest_gap_age_s"].as_f64().unwrap() > 2.0, "{d}");
    let human = tillsync(&stack, &["devices", "list"]).await.ok();
    assert!(human.stdout.contains("1 (1 open, oldest "), "{}", human.stdout);

    // Younger than the threshold: shown, not a problem.
    let young = tillsync(&stack, &["status", "--json", "--gap-age-s", "3600"]).await;
    assert_eq!(young.code, 0, "{}", young.stdout);
    let g = &young.json()["gaps"];
    assert_eq!((g["open"].clone(), g["older_than_threshold"].clone()), (json!(1), json!(0)));
    assert_eq!((g["oldest"][0]["from_seq"].clone(), g["oldest"][0]["to_seq"].clone()), (json!(2), json!(2)));
    let old = tillsync(&stack, &["status", "--gap-age-s", "2"]).await;
    assert_eq!(old.code, 3, "{}", old.stdout);
    assert!(old.stdout.contains("PROBLEM: 1 open gap(s) older than 2 s"), "{}", old.stdout);
    assert!(old.stdout.contains("acme/s1/till-1 seq 2..2"), "{}", old.stdout);

    publish(&js, &event(&dev, 2, item("o-1", "l-1", 1))).await;
    scrape_until(addr, DEFAULT_TIMEOUT, "the gap filled", |m| {
        is(0.0)(metric(m, "tillsync_device_gaps_open", ACME))?;
        is(0.0)(metric(m, "tillsync_device_gap_oldest_seconds", ACME))
    })
    .await;
    let filled = tillsync(&stack, &["status", "--gap-age-s", "2"]).await;
    assert_eq!(filled.code, 0, "{}", filled.stdout);
}

/// Publishes a heartbeat as the device's bridge would: the watermark it has seen
/// (`last_acked_seq`) and the events it holds beyond it (`outbox_depth`).
async fn heartbeat(js: &async_nats::jetstream::Context, dev: &DeviceAddr, last_acked_seq: u64, outbox_depth: u64) {
    let hb = Heartbeat {
        schema_version: tillsync_schemas::SCHEMA_VERSION,
        tenant_id: dev.tenant_id.clone(),
        store_id: dev.store_id.clone(),
        device_id: dev.device_id.clone(),
        at_ms: tillsync_broker::now_ms(),
        software_version: "test".into(),
        outbox_depth,
        oldest_unsent_age_s: 0,
        last_acked_seq,
        config_revision: 0,
        uptime_s: 1,
        watermarks_refused: 0,
    };
    let mut h = HeaderMap::new();
    h.insert(streams::HEADER_CONTENT_TYPE, streams::CONTENT_TYPE);
    js.publish_with_headers(subject::heartbeats(dev), h, codec::encode(&hb).into()).await.unwrap().await.unwrap();
}

#[tokio::test]
async fn a_watermark_waiting_for_lost_events_is_stalled_until_they_land() {
    let (stack, _broker, addr) = with_broker(|c| c.watermark_stall_s = 1).await;
    let js = stack.nats.jetstream().await;
    let dev = DeviceAddr::new("acme", "s1", "till-1");
    publish(&js, &event(&dev, 1, opened("o-1"))).await;
    publish(&js, &event(&dev, 2, item("o-1", "l-1", 1))).await;
    let db = &stack.db;
    eventually(DEFAULT_TIMEOUT, "watermark 2", || async {
        (db.count("SELECT coalesce(max(watermark), 0) FROM devices").await == 2).then_some(())
    })
    .await;
    // JetStream acked seqs 3 to 5 to the bridge and then lost them: no gap, only the bridge's
    // word (it has seen watermark 2 and holds 3 events beyond it).
    heartbeat(&js, &dev, 2, 3).await;
    scrape_until(addr, DEFAULT_TIMEOUT, "a stalled watermark", |m| {
        is(1.0)(metric(m, "tillsync_watermarks_stalled_devices", ACME))
    })
    .await;
    let d = tillsync(&stack, &["devices", "list", "--json"]).await.ok().json()[0].clone();
    assert_eq!((d["device_seq"].clone(), d["lag"].clone(), d["open_gaps"].clone()), (json!(5), json!(3), json!(0)));
    assert!(d["watermark_wait_s"].as_f64().unwrap() >= 1.0, "{d}");
    let stalled = tillsync(&stack, &["status", "--stall-s", "1"]).await;
    assert_eq!(stalled.code, 3, "{}", stalled.stdout);
    assert!(stalled.stdout.contains("PROBLEM: 1 device watermark(s) stalled longer than 1 s"), "{}", stalled.stdout);
    assert!(stalled.stdout.contains("acme/s1/till-1 at 2 waits for 5"), "{}", stalled.stdout);
    assert_eq!(tillsync(&stack, &["status", "--stall-s", "3600"]).await.code, 0);

    for seq in 3..=5 {
        publish(&js, &event(&dev, seq, item("o-1", &format!("l-{seq}"), 1))).await;
    }
    scrape_until(addr, DEFAULT_TIMEOUT, "the stall over", |m| {
        is(0.0)(metric(m, "tillsync_watermarks_stalled_devices", ACME))
    })
    .await;
    let d = tillsync(&stack, &["devices", "list", "--json"]).await.ok().json()[0].clone();
    assert_eq!((d["lag"].clone(), d["watermark_wait_s"].clone()), (json!(0), json!(null)));
    assert_eq!(tillsync(&stack, &["status", "--stall-s", "1"]).await.code, 0);
}
