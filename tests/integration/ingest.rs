//! Event ingest against real NATS JetStream and Postgres.

use tillsync_schemas::DeviceAddr;
use tillsync_tests::{eventually_eq, InProcBroker, Stack, DEFAULT_TIMEOUT};

use crate::common::*;

#[tokio::test]
async fn an_event_lands_as_a_row() {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let broker = InProcBroker::start(stack.broker_config()).await;
    let js = stack.nats.jetstream().await;
    let d = DeviceAddr::new("acme", "s1", "till-1");
    publish(&js, &event(&d, 1, opened("o-1"))).await;
    publish(&js, &event(&d, 2, item("o-1", "l-1", 2))).await;
    publish(&js, &event(&d, 3, payment("o-1", "p-1", 700))).await;
    let db = &stack.db;
    eventually_eq(DEFAULT_TIMEOUT, "payment row", 1, || db.count("SELECT count(*) FROM payments")).await;
    assert_eq!(db.count("SELECT count(*) FROM orders WHERE tenant_id = 'acme' AND order_id = 'o-1'").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM order_items").await, 1);
    assert_eq!(db.count("SELECT watermark FROM devices WHERE device_id = 'till-1'").await, 3);
    broker.stop().await;
}
