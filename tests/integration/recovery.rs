//! Recovery after NATS restarts: nothing waits out an ack wait that the broker could cut short.
//! Fault: nats-server SIGKILLed mid-traffic and started again on the same store, with the
//! production ack wait (30 s). Checked: every event applied once, and the broker's consumers
//! have nothing pending or unacked well before one ack wait has passed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tillsync_schemas::DeviceAddr;
use tillsync_tests::{eventually, free_addr, BrokerProc, NatsServer, TestDb};

use crate::common::{add_tenant, event, events_drained, opened, try_publish};

const ACK_WAIT_S: u64 = 30;

#[tokio::test(flavor = "multi_thread")]
async fn after_a_nats_restart_the_consumers_settle_without_waiting_out_the_ack_wait() {
    let db = TestDb::new().await;
    let mut nats = NatsServer::start().await;
    add_tenant(&db.pool, "acme").await;
    let mut config = tillsync_broker::config::Config::for_tests(&nats.url(), &db.url);
    config.http_addr = free_addr();
    config.ack_wait_s = ACK_WAIT_S;
    let broker = BrokerProc::start(&config);
    let js = nats.jetstream().await;
    eventually(Duration::from_secs(60), "the broker's streams", || async {
        js.get_stream(tillsync_schemas::streams::EVENTS).await.ok().map(|_| ())
    })
    .await;

    // Eight tills sell steadily; each publish is retried until JetStream stored it.
    let (stop, sold) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let devices: Vec<DeviceAddr> = (1..=8).map(|i| DeviceAddr::new("acme", "s1", format!("till-{i}"))).collect();
    let sellers: Vec<_> = devices
        .iter()
        .map(|d| {
            let (d, stop, sold, url) = (d.clone(), stop.clone(), sold.clone(), nats.url());
            tokio::spawn(async move {
                let client = async_nats::ConnectOptions::new().max_reconnects(None).connect(url).await.unwrap();
                let js = async_nats::jetstream::new(client);
                let mut seq = 0;
                while !stop.load(Ordering::SeqCst) {
                    seq += 1;
                    let ev = event(&d, seq, opened(&format!("{}-o-{seq}", d.device_id)));
                    while try_publish(&js, &ev).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    sold.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    eventually(Duration::from_secs(30), "sales flowing", || async {
        (db.count("SELECT count(*) FROM processed_events").await > 200).then_some(())
    })
    .await;

    nats.restart().await;
    let restarted = Instant::now();
    eventually(Duration::from_secs(30), "sales flowing again", || async {
        let before = sold.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
        (sold.load(Ordering::SeqCst) > before + 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for s in sellers {
        s.await.unwrap();
    }
    let total = sold.load(Ordering::SeqCst) as i64;

    let js = nats.jetstream().await;
    let wait = Duration::from_secs(2 * ACK_WAIT_S);
    eventually(wait, "every sale applied", || async {
        (db.count("SELECT count(*) FROM processed_events").await == total).then_some(())
    })
    .await;
    let applied = restarted.elapsed();
    eventually(wait, "the consumers settled", || async { events_drained(&js).await.then_some(()) }).await;
    let settled = restarted.elapsed();
    eprintln!("{total} sales; after the restart: all applied in {applied:?}, consumers settled in {settled:?}");
    assert_eq!(db.count("SELECT count(*) FROM orders").await, total, "each sale once");
    assert!(
        settled < Duration::from_secs(ACK_WAIT_S / 2),
        "consumers settled {settled:?} after the restart: an ack wait ({ACK_WAIT_S} s) was waited out"
    );
    drop(broker);
}
