//! JetStream streams and the broker's durable consumers, ensured (created or updated) at start.
//! Retention limits are documented in `docs/architecture.md`.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use tillsync_schemas::streams as names;
use tillsync_schemas::subject::Family;

use crate::config::Config;
use crate::error::BrokerError;

const DAY: Duration = Duration::from_secs(86_400);

/// The stream configurations this broker runs with.
pub fn stream_configs(c: &Config) -> Vec<StreamConfig> {
    let base = |name: &str, family: Family, max_age: Duration| StreamConfig {
        name: name.to_string(),
        subjects: vec![family.all_subjects()],
        storage: StorageType::File,
        num_replicas: c.stream_replicas,
        duplicate_window: Duration::from_secs(c.duplicate_window_s),
        max_age,
        max_message_size: tillsync_schemas::MAX_MESSAGE_BYTES as i32 + 1024,
        ..Default::default()
    };
    vec![
        // Full means refuse new events (bridges keep them in their outbox), never drop sales.
        StreamConfig {
            max_bytes: c.events_max_bytes,
            discard: DiscardPolicy::New,
            ..base(names::EVENTS, Family::Events, DAY * c.events_max_age_days as u32)
        },
        // Only the latest heartbeat of a device matters.
        StreamConfig { max_messages_per_subject: 1, ..base(names::HEARTBEATS, Family::Heartbeats, DAY) },
        base(names::INTAKE, Family::Intake, DAY * 7),
        // Commands live a little longer than the longest TTL so an offline device still finds them.
        base(names::COMMANDS, Family::Commands, Duration::from_secs(c.command_max_ttl_s) + DAY),
        base(names::COMMAND_ACKS, Family::CommandAcks, DAY * 7),
        base(names::STATUS, Family::Status, DAY * 7),
        // Bridges read the last watermark of their device with a direct get.
        StreamConfig {
            max_messages_per_subject: 1,
            allow_direct: true,
            ..base(names::WATERMARKS, Family::Watermarks, DAY * 30)
        },
    ]
}

/// A durable pull consumer of the broker. Backoff spaces out redeliveries of a message whose
/// processing keeps failing; MaxDeliver bounds them (the broker quarantines before that).
pub fn broker_consumer(c: &Config, name: &str, family: Family) -> pull::Config {
    // NATS uses the first backoff step as the ack wait, so the steps start at the ack wait:
    // a slow batch is never redelivered while it is still being committed.
    let ack_wait = Duration::from_secs(c.ack_wait_s);
    let steps = (c.max_deliver - 1).clamp(1, 6) as u32;
    let backoff = (0..steps).map(|i| (ack_wait * 2u32.pow(i)).min(Duration::from_secs(300))).collect();
    pull::Config {
        backoff,
        durable_name: Some(name.to_string()),
        filter_subject: family.all_subjects(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait,
        max_deliver: c.max_deliver,
        max_ack_pending: 20_000,
        num_replicas: c.stream_replicas,
        ..Default::default()
    }
}

/// Creates or updates every stream and the broker's consumers. Idempotent.
pub async fn ensure(js: &Context, c: &Config) -> Result<(), BrokerError> {
    for sc in stream_configs(c) {
        let name = sc.name.clone();
        js.create_or_update_stream(sc).await.map_err(|e| BrokerError::Stream(name, e.to_string()))?;
    }
    for (stream, consumer, family) in [
        (names::EVENTS, names::BROKER_EVENTS_CONSUMER, Family::Events),
        (names::HEARTBEATS, names::BROKER_HEARTBEATS_CONSUMER, Family::Heartbeats),
        (names::INTAKE, names::BROKER_INTAKE_CONSUMER, Family::Intake),
        (names::COMMAND_ACKS, names::BROKER_ACKS_CONSUMER, Family::CommandAcks),
    ] {
        ensure_consumer(js, stream, broker_consumer(c, consumer, family)).await?;
    }
    Ok(())
}

pub async fn ensure_consumer(js: &Context, stream: &str, config: pull::Config) -> Result<(), BrokerError> {
    let name = config.durable_name.clone().unwrap_or_default();
    let s = js.get_stream(stream).await.map_err(|e| BrokerError::Stream(stream.into(), e.to_string()))?;
    s.create_consumer(config).await.map_err(|e| BrokerError::Stream(format!("{stream}/{name}"), e.to_string()))?;
    Ok(())
}

/// The durable consumer `name` on `stream`, already ensured.
pub async fn consumer(
    js: &Context,
    stream: &str,
    name: &str,
) -> Result<jetstream::consumer::PullConsumer, BrokerError> {
    let s = js.get_stream(stream).await.map_err(|e| BrokerError::Stream(stream.into(), e.to_string()))?;
    s.get_consumer(name).await.map_err(|e| BrokerError::Stream(format!("{stream}/{name}"), e.to_string()))
}
