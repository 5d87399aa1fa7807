//! Upgrading from a broker without partitions: its single durable consumer must be drained
//! first; the partitioned broker refuses to start over messages it would never consume, and
//! removes the old consumer once it is empty.

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::stream::Config as StreamConfig;
use futures::StreamExt;
use tillsync_broker::Broker;
use tillsync_schemas::{codec, streams, subject, DeviceAddr};
use tillsync_tests::Stack;

use crate::common::*;

#[tokio::test]
async fn an_undrained_consumer_of_an_unpartitioned_broker_refuses_the_start_until_drained() {
    let stack = Stack::start().await;
    add_tenant(&stack.db.pool, "acme").await;
    let js = stack.nats.jetstream().await;
    // What a broker from before partitions left: the events stream on `tillsync.ev.>` and its
    // one durable consumer, with an event not yet consumed.
    let stream = js
        .create_stream(StreamConfig {
            name: streams::EVENTS.into(),
            subjects: vec!["tillsync.ev.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let old = stream
        .create_consumer(pull::Config {
            durable_name: Some(streams::BROKER_EVENTS_CONSUMER.into()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let dev = DeviceAddr::new("acme", "s1", "till-1");
    publish_raw(&js, subject::events(&dev), codec::encode(&event(&dev, 1, opened("o-1")))).await;

    let refused = match Broker::start(stack.broker_config()).await {
        Ok(_) => panic!("the broker started over an undrained consumer"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("drain it with that version first"), "{refused}");

    // Drained by the old broker (here: consumed and acked), the start goes through and the old
    // consumer is gone.
    let mut messages = old.fetch().max_messages(1).messages().await.unwrap();
    messages.next().await.unwrap().unwrap().double_ack().await.unwrap();
    let broker = Broker::start(stack.broker_config()).await.expect("starts once drained");
    let s = js.get_stream(streams::EVENTS).await.unwrap();
    assert!(s.get_consumer::<pull::Config>(streams::BROKER_EVENTS_CONSUMER).await.is_err(), "old consumer removed");
    broker.shutdown().await;
}
