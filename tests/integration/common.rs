//! Builders shared by the integration tests.

use async_nats::HeaderMap;
use tillsync_schemas::event::*;
use tillsync_schemas::{codec, streams, subject, DeviceAddr, EventBody, EventEnvelope};

pub fn event(addr: &DeviceAddr, seq: u64, body: EventBody) -> EventEnvelope {
    EventEnvelope {
        schema_version: tillsync_schemas::SCHEMA_VERSION,
        tenant_id: addr.tenant_id.clone(),
        store_id: addr.store_id.clone(),
        device_id: addr.device_id.clone(),
        event_id: uuid::Uuid::now_v7().to_string(),
        seq,
        occurred_at_ms: tillsync_broker::now_ms(),
        body,
    }
}

pub fn opened(order: &str) -> EventBody {
    EventBody::OrderOpened(OrderOpened { order_id: order.into(), currency: "EUR".into(), table: None })
}

pub fn status(order: &str, s: &str) -> EventBody {
    EventBody::OrderStatusChanged(OrderStatusChanged { order_id: order.into(), status: s.into() })
}

pub fn item(order: &str, line: &str, qty: i32) -> EventBody {
    EventBody::OrderItemAdded(OrderItemAdded {
        order_id: order.into(),
        line_id: line.into(),
        sku: "latte".into(),
        name: "Latte".into(),
        quantity: qty,
        unit_price_minor: 350,
    })
}

pub fn payment(order: &str, payment: &str, amount: i64) -> EventBody {
    EventBody::PaymentCaptured(PaymentCaptured {
        order_id: order.into(),
        payment_id: payment.into(),
        amount_minor: amount,
        currency: "EUR".into(),
        method: "card".into(),
    })
}

/// Publishes an event the way a bridge does (JetStream, `Nats-Msg-Id`), awaiting the ack.
pub async fn publish(js: &async_nats::jetstream::Context, ev: &EventEnvelope) {
    try_publish(js, ev).await.unwrap();
}

/// Like [`publish`], returning JetStream's refusal (e.g. "maximum bytes exceeded") as text.
pub async fn try_publish(js: &async_nats::jetstream::Context, ev: &EventEnvelope) -> Result<(), String> {
    let mut h = HeaderMap::new();
    h.insert(
        streams::HEADER_MSG_ID,
        streams::event_msg_id(&streams::msg_id_prefix(&ev.addr(), "test"), &ev.event_id).as_str(),
    );
    h.insert(streams::HEADER_CONTENT_TYPE, streams::CONTENT_TYPE);
    let ack = js.publish_with_headers(subject::events(&ev.addr()), h, codec::encode(ev).into()).await;
    ack.map_err(|e| e.to_string())?.await.map(|_| ()).map_err(|e| e.to_string())
}

/// Publishes raw bytes on a subject without a message id (bad-input tests).
pub async fn publish_raw(js: &async_nats::jetstream::Context, subject: String, bytes: Vec<u8>) {
    js.publish(subject, bytes.into()).await.unwrap().await.unwrap();
}

/// Adds the tenant with the test approvers alice and bob registered.
pub async fn add_tenant(pool: &sqlx::PgPool, tenant: &str) {
    sqlx::query("INSERT INTO tenants (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(tenant)
        .execute(pool)
        .await
        .unwrap();
    tillsync_tests::register_test_approvers(pool, tenant).await;
}

/// The info of every partition consumer of `base` (`broker-events-p0`, ...) on `stream`.
pub async fn partition_consumers(
    js: &async_nats::jetstream::Context,
    stream: &str,
    base: &str,
) -> Option<Vec<async_nats::jetstream::consumer::Info>> {
    use futures::StreamExt;
    let s = js.get_stream(stream).await.ok()?;
    let prefix = format!("{base}-p");
    let names: Vec<String> = s.consumer_names().filter_map(|n| async move { n.ok() }).collect().await;
    let mut infos = Vec::new();
    for name in names.into_iter().filter(|n| n.starts_with(&prefix)) {
        let mut c = s.get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name).await.ok()?;
        infos.push(c.info().await.ok()?.clone());
    }
    Some(infos)
}

/// True once the broker's events consumers have nothing pending or unacked, and one delivered
/// the stream's last message.
pub async fn events_drained(js: &async_nats::jetstream::Context) -> bool {
    let Ok(mut stream) = js.get_stream(streams::EVENTS).await else { return false };
    let Ok(last) = stream.info().await.map(|i| i.state.last_sequence) else { return false };
    let Some(infos) = partition_consumers(js, streams::EVENTS, streams::BROKER_EVENTS_CONSUMER).await else {
        return false;
    };
    last > 0
        && infos.iter().all(|i| i.num_pending == 0 && i.num_ack_pending == 0)
        && infos.iter().any(|i| i.delivered.stream_sequence >= last)
}

/// Waits until the broker has taken and acked everything in the events stream.
pub async fn wait_drained(js: &async_nats::jetstream::Context) {
    tillsync_tests::eventually(tillsync_tests::DEFAULT_TIMEOUT, "events consumer drained", || async {
        events_drained(js).await.then_some(())
    })
    .await;
}

/// A stack with tenant `acme` and an in-process broker, and a JetStream context on its server.
pub async fn live() -> (tillsync_tests::Stack, tillsync_tests::InProcBroker, async_nats::jetstream::Context) {
    let stack = tillsync_tests::Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let broker = tillsync_tests::InProcBroker::start(stack.broker_config()).await;
    let js = stack.nats.jetstream().await;
    (stack, broker, js)
}
