//! JetStream streams and the broker's durable consumers, ensured (created or updated) at start.
//! Retention limits are documented in `docs/architecture.md`.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PriorityPolicy};
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType, SubjectTransform};
use async_nats::jetstream::{self, Context};
use tillsync_schemas::streams as names;
use tillsync_schemas::subject::Family;

use crate::config::Config;
use crate::error::BrokerError;

const DAY: Duration = Duration::from_secs(86_400);

/// Largest message on the configuration streams: a delta or snapshot plus its headers.
const CONFIG_MESSAGE_BYTES: i32 = tillsync_schemas::config::MAX_CONFIG_BYTES as i32 + 16 * 1024;

/// The families whose streams are partitioned: the broker consumes them, a partition at a time.
pub const PARTITIONED: [(&str, &str, Family); 4] = [
    (names::EVENTS, names::BROKER_EVENTS_CONSUMER, Family::Events),
    (names::HEARTBEATS, names::BROKER_HEARTBEATS_CONSUMER, Family::Heartbeats),
    (names::INTAKE, names::BROKER_INTAKE_CONSUMER, Family::Intake),
    (names::COMMAND_ACKS, names::BROKER_ACKS_CONSUMER, Family::CommandAcks),
];

/// A partitioned stream takes in the five-token subjects devices and portals publish and
/// stores each with its store's partition appended ([`tillsync_schemas::partition`]).
fn partitioned(mut sc: StreamConfig, family: Family, partitions: u16) -> StreamConfig {
    sc.subjects = vec![family.published_subjects()];
    sc.subject_transform = Some(SubjectTransform {
        source: family.published_subjects(),
        destination: tillsync_schemas::partition::transform_destination(family.token(), partitions),
    });
    sc
}

/// The stream configurations this broker runs with.
pub fn stream_configs(c: &Config) -> Vec<StreamConfig> {
    #[cfg(debug_assertions)]
    let deny = !c.fault_streams_deletable;
    #[cfg(not(debug_assertions))]
    let deny = true;
    // No client can purge a stream or delete its messages through the JetStream API, even by
    // pointing some responder's answer at `$JS.API.STREAM.PURGE.<name>` (docs/security.md);
    // retention limits and consumers' acks still remove messages. JetStream will not take
    // either flag back.
    let base = |name: &str, family: Family, max_age: Duration| StreamConfig {
        name: name.to_string(),
        subjects: vec![family.all_subjects()],
        storage: StorageType::File,
        num_replicas: c.stream_replicas,
        duplicate_window: Duration::from_secs(c.duplicate_window_s),
        max_age,
        max_message_size: tillsync_schemas::MAX_MESSAGE_BYTES as i32 + 1024,
        deny_purge: deny,
        deny_delete: deny,
        ..Default::default()
    };
    vec![
        // Full means refuse new events (bridges keep them in their outbox), never drop sales.
        // Each device keeps at most its own last `events_max_per_device` (older ones of that
        // device only are dropped; one not yet applied comes back through gap repair), so one
        // device cannot fill the stream for every tenant.
        partitioned(
            StreamConfig {
                max_bytes: c.events_max_bytes,
                max_messages_per_subject: c.events_max_per_device,
                discard: DiscardPolicy::New,
                ..base(names::EVENTS, Family::Events, DAY * c.events_max_age_days as u32)
            },
            Family::Events,
            c.partitions,
        ),
        // Only the latest heartbeat of a device matters.
        partitioned(
            StreamConfig { max_messages_per_subject: 1, ..base(names::HEARTBEATS, Family::Heartbeats, DAY) },
            Family::Heartbeats,
            c.partitions,
        ),
        partitioned(base(names::INTAKE, Family::Intake, DAY * 7), Family::Intake, c.partitions),
        // Commands live a little longer than the longest TTL so an offline device still finds
        // them. The broker deletes the copies of finished commands, so messages may be deleted.
        StreamConfig {
            deny_delete: false,
            ..base(names::COMMANDS, Family::Commands, Duration::from_secs(c.command_max_ttl_s) + DAY)
        },
        // Acks are bounded per device like events, so one device cannot fill the stream.
        partitioned(
            StreamConfig {
                max_messages_per_subject: c.events_max_per_device,
                ..base(names::COMMAND_ACKS, Family::CommandAcks, DAY * 7)
            },
            Family::CommandAcks,
            c.partitions,
        ),
        base(names::STATUS, Family::Status, DAY * 7),
        // Bridges read the last watermark of their device with a direct get.
        StreamConfig {
            max_messages_per_subject: 1,
            allow_direct: true,
            ..base(names::WATERMARKS, Family::Watermarks, DAY * 30)
        },
        // Configuration: the last deltas of each store (devices further behind take the
        // snapshot), and each store's latest snapshot; bridges read both with direct gets.
        StreamConfig {
            max_messages_per_subject: c.config_deltas_kept as i64,
            allow_direct: true,
            max_message_size: CONFIG_MESSAGE_BYTES,
            ..base(names::CONFIG, Family::Config, Duration::ZERO)
        },
        StreamConfig {
            max_messages_per_subject: 1,
            allow_direct: true,
            max_message_size: CONFIG_MESSAGE_BYTES,
            ..base(names::CONFIG_SNAPSHOTS, Family::ConfigSnapshot, Duration::ZERO)
        },
    ]
}

/// The priority group every partition consumer is pulled through. The server pins one client
/// (the owner's pull stream) and delivers to it alone, so an instance that lost the partition
/// while paused gets nothing when it resumes, even before it notices the loss.
pub const OWNER_GROUP: &str = "owner";

/// How long the pinned owner may stop pulling before the server lets another client in. A new
/// owner does not wait for it: it unpins the partition's consumers when it takes them.
const PIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The durable pull consumer of one partition of a stream. Backoff spaces out redeliveries of
/// a message whose processing keeps failing; MaxDeliver bounds them (the broker quarantines
/// before that).
pub fn broker_consumer(c: &Config, base: &str, family: Family, partition: u16) -> pull::Config {
    // NATS uses the first backoff step as the ack wait, so the steps start at the ack wait:
    // a slow batch is never redelivered while it is still being committed.
    let ack_wait = Duration::from_secs(c.ack_wait_s);
    let steps = (c.max_deliver - 1).clamp(1, 6) as u32;
    let backoff = (0..steps).map(|i| (ack_wait * 2u32.pow(i)).min(Duration::from_secs(300))).collect();
    pull::Config {
        backoff,
        durable_name: Some(names::partition_consumer(base, partition)),
        filter_subject: family.partition_subjects(partition),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait,
        max_deliver: c.max_deliver,
        max_ack_pending: 20_000,
        num_replicas: c.stream_replicas,
        priority_groups: vec![OWNER_GROUP.to_string()],
        priority_policy: PriorityPolicy::PinnedClient,
        priority_timeout: PIN_TIMEOUT,
        ..Default::default()
    }
}

/// Creates or updates every stream and the broker's consumers (one per partition and stream).
/// Idempotent. Refuses to change a stream's partition count, and to start over messages a
/// broker from before partitions left unconsumed.
pub async fn ensure(js: &Context, c: &Config) -> Result<(), BrokerError> {
    for sc in stream_configs(c) {
        let name = sc.name.clone();
        check_unchanged_partitions(js, &sc).await?;
        js.create_or_update_stream(sc).await.map_err(|e| BrokerError::stream(name, e))?;
    }
    for (stream, base, family) in PARTITIONED {
        retire_unpartitioned_consumer(js, stream, base).await?;
        for p in 0..c.partitions {
            ensure_consumer(js, stream, broker_consumer(c, base, family, p)).await?;
        }
    }
    Ok(())
}

/// A stream already partitioned into another number of partitions stays as it is: its stored
/// subjects carry their partition, so changing the count would split stores.
async fn check_unchanged_partitions(js: &Context, want: &StreamConfig) -> Result<(), BrokerError> {
    let Some(want_t) = &want.subject_transform else { return Ok(()) };
    let Ok(mut s) = js.get_stream(&want.name).await else { return Ok(()) };
    let info = s.info().await.map_err(|e| BrokerError::stream(want.name.clone(), e))?;
    match &info.config.subject_transform {
        Some(t) if t.destination != want_t.destination => Err(BrokerError::StreamPartitions {
            stream: want.name.clone(),
            stored: t.destination.clone(),
            wanted: want_t.destination.clone(),
        }),
        _ => Ok(()),
    }
}

/// The single durable consumer of a broker from before partitions: removed once it has
/// nothing left to deliver; while it has, starting is refused (drain with the old version).
async fn retire_unpartitioned_consumer(js: &Context, stream: &str, name: &str) -> Result<(), BrokerError> {
    let s = js.get_stream(stream).await.map_err(|e| BrokerError::stream(stream, e))?;
    let Ok(mut old) = s.get_consumer::<pull::Config>(name).await else { return Ok(()) };
    let info = old.info().await.map_err(|e| BrokerError::stream(format!("{stream}/{name}"), e))?;
    if info.num_pending > 0 || info.num_ack_pending > 0 {
        return Err(BrokerError::UndrainedConsumer {
            consumer: format!("{stream}/{name}"),
            pending: info.num_pending + info.num_ack_pending as u64,
        });
    }
    s.delete_consumer(name).await.map_err(|e| BrokerError::stream(format!("{stream}/{name}"), e))?;
    tracing::info!(stream, consumer = name, "Removed the drained consumer of a broker from before partitions.");
    Ok(())
}

/// Creates the consumer, or updates an existing one to `config`, keeping where it starts (a
/// takeover restarts a partition's consumer at its ack floor: [`restart_at_ack_floor`]).
pub async fn ensure_consumer(js: &Context, stream: &str, mut config: pull::Config) -> Result<(), BrokerError> {
    let name = config.durable_name.clone().unwrap_or_default();
    let s = js.get_stream(stream).await.map_err(|e| BrokerError::stream(stream, e))?;
    if let Ok(mut existing) = s.get_consumer::<pull::Config>(&name).await {
        if let Ok(info) = existing.info().await {
            config.deliver_policy = info.config.deliver_policy;
        }
    }
    s.create_consumer(config).await.map_err(|e| BrokerError::stream(format!("{stream}/{name}"), e))?;
    Ok(())
}

/// Readies a partition's consumer for a new owner. After a handover the previous owner is
/// unpinned. After a takeover (`force`) the consumer is always recreated: a dead owner's pull
/// requests can outlive it on the server and would be handed the pin, and messages nobody acks.
/// And messages the previous owner was handed and never acked would
/// wait out the ack wait (30 s) and then arrive behind later ones. When there are any, the
/// partition's consumer is recreated to start at its ack floor: they come again at once and in
/// order (what was acked beyond the floor comes again too, and the ledger answers
/// "duplicate"). The previous owner can no longer commit them: its epoch is fenced.
pub async fn restart_at_ack_floor(
    js: &Context,
    c: &Config,
    stream: &str,
    base: &str,
    family: Family,
    partition: u16,
    force: bool,
) -> Result<bool, BrokerError> {
    let name = names::partition_consumer(base, partition);
    let consumer = format!("{stream}/{name}");
    let s = js.get_stream(stream).await.map_err(|e| BrokerError::stream(stream, e))?;
    let mut existing = s.get_consumer::<pull::Config>(&name).await.map_err(|e| BrokerError::stream(&consumer, e))?;
    let info = existing.info().await.map_err(|e| BrokerError::stream(&consumer, e))?.clone();
    if info.num_ack_pending == 0 && !force {
        // Whoever held the pin (a previous owner) loses it: the next pull, ours, takes it.
        s.unpin_consumer(&name, OWNER_GROUP).await.map_err(|e| BrokerError::stream(&consumer, e))?;
        return Ok(false);
    }
    let start_sequence = info.ack_floor.stream_sequence + 1;
    s.delete_consumer(&name).await.map_err(|e| BrokerError::stream(&consumer, e))?;
    let config = pull::Config {
        deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
        ..broker_consumer(c, base, family, partition)
    };
    s.create_consumer(config).await.map_err(|e| BrokerError::stream(&consumer, e))?;
    tracing::info!(consumer = %name, start_sequence, unacked = info.num_ack_pending, "Restarted a taken-over consumer at its ack floor.");
    Ok(true)
}

/// The durable consumer `name` on `stream`, already ensured.
pub async fn consumer(
    js: &Context,
    stream: &str,
    name: &str,
) -> Result<jetstream::consumer::PullConsumer, BrokerError> {
    let s = js.get_stream(stream).await.map_err(|e| BrokerError::stream(stream, e))?;
    s.get_consumer(name).await.map_err(|e| BrokerError::stream(format!("{stream}/{name}"), e))
}
