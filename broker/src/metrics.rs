//! Every broker metric, defined once: names, help text, units and label sets. Other modules
//! record through the functions here, never through raw macros with literal names, so
//! `docs/metrics.md` can be checked against this file. Labels come from small fixed sets
//! (kind, reason, layer, code, tenant); never a device id.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tillsync_actors::decide::DupLayer;
use tillsync_actors::policy::MAX_ATTEMPTS_CODE;

pub const EVENTS_RECEIVED: &str = "tillsync_events_received_total";
pub const EVENTS_APPLIED: &str = "tillsync_events_applied_total";
pub const EVENTS_DUPLICATE: &str = "tillsync_events_duplicate_total";
pub const EVENTS_CONFLICT: &str = "tillsync_events_conflict_total";
pub const EVENTS_QUARANTINED: &str = "tillsync_events_quarantined_total";
pub const EVENT_GAPS: &str = "tillsync_event_gaps_total";
pub const APPLY_LATENCY: &str = "tillsync_apply_latency_seconds";
pub const EVENT_LAG: &str = "tillsync_event_lag_seconds";
pub const BATCH_SIZE: &str = "tillsync_batch_events";
pub const DB_RETRIES: &str = "tillsync_db_retries_total";
pub const ACTORS_RESIDENT: &str = "tillsync_actors_resident";
pub const ACTOR_ACTIVATIONS: &str = "tillsync_actor_activations_total";
pub const ACTOR_RESTARTS: &str = "tillsync_actor_restarts_total";
pub const ACTOR_PASSIVATIONS: &str = "tillsync_actor_passivations_total";
pub const CONSUMER_PENDING: &str = "tillsync_consumer_pending_messages";
pub const CONSUMER_ACK_PENDING: &str = "tillsync_consumer_ack_pending_messages";
pub const CONSUMER_REDELIVERED: &str = "tillsync_consumer_redelivered_messages";
pub const HEARTBEATS: &str = "tillsync_heartbeats_total";
pub const DEVICES_ONLINE: &str = "tillsync_devices_online";
pub const DEVICES_OFFLINE: &str = "tillsync_devices_offline";
pub const COMMANDS_RECEIVED: &str = "tillsync_commands_received_total";
pub const COMMANDS_REJECTED: &str = "tillsync_commands_rejected_total";
pub const COMMAND_DELIVERIES: &str = "tillsync_command_deliveries_total";
pub const COMMAND_SYNCS: &str = "tillsync_command_syncs_total";
pub const COMMAND_COPIES_HANDED: &str = "tillsync_command_copies_handed_total";
pub const COMMANDS_ACKED: &str = "tillsync_commands_acked_total";
pub const COMMANDS_FAILED: &str = "tillsync_commands_failed_total";
pub const COMMANDS_EXPIRED: &str = "tillsync_commands_expired_total";
pub const COMMAND_ACKS_UNMATCHED: &str = "tillsync_command_acks_unmatched_total";
pub const COMMAND_INBOX_DEPTH: &str = "tillsync_command_inbox_depth";
pub const COMMANDS_AWAITING_APPROVAL: &str = "tillsync_commands_awaiting_approval";
pub const COMMAND_OLDEST_AWAITING_APPROVAL: &str = "tillsync_command_oldest_awaiting_approval_seconds";
pub const COMMAND_OLDEST_PENDING: &str = "tillsync_command_oldest_pending_seconds";
pub const COMMAND_ROUND_TRIP: &str = "tillsync_command_round_trip_seconds";
pub const BROKER_UP: &str = "tillsync_broker_up";
pub const BROKER_TASKS: &str = "tillsync_broker_tasks";
pub const DEVICE_GAPS_OPEN: &str = "tillsync_device_gaps_open";
pub const DEVICE_GAP_OLDEST: &str = "tillsync_device_gap_oldest_seconds";
pub const WATERMARKS_STALLED: &str = "tillsync_watermarks_stalled_devices";
pub const STREAM_BYTES: &str = "tillsync_stream_bytes";
pub const STREAM_MAX_BYTES: &str = "tillsync_stream_max_bytes";
pub const STREAM_MESSAGES: &str = "tillsync_stream_messages";
pub const NATS_CONNECTED: &str = "tillsync_nats_connected";
pub const POSTGRES_UP: &str = "tillsync_postgres_up";
pub const RESEND_REQUESTS: &str = "tillsync_resend_requests_total";
pub const COMMAND_REPUBLISHED: &str = "tillsync_command_republished_total";
pub const COMMANDS_CANCELLED: &str = "tillsync_commands_cancelled_total";
pub const COMMAND_CANCELS_REFUSED: &str = "tillsync_command_cancels_refused_total";
pub const COMMAND_APPLIED_AFTER_FINAL: &str = "tillsync_command_applied_after_final_total";
pub const COMMAND_COPIES_DELETED: &str = "tillsync_command_copies_deleted_total";
pub const COMMANDS_PENDING_APPROVAL: &str = "tillsync_commands_pending_approval_total";
pub const APPROVAL_DECISIONS: &str = "tillsync_approval_decisions_total";
pub const PARTITIONS_OWNED: &str = "tillsync_partitions_owned";
pub const PARTITIONS_UNOWNED: &str = "tillsync_partitions_unowned";
pub const PARTITION_CHANGES: &str = "tillsync_partition_changes_total";
pub const PARTITION_LAG: &str = "tillsync_partition_lag";
pub const AUTH_DECISIONS: &str = "tillsync_auth_decisions_total";
pub const AUTH_RESPONDER_UP: &str = "tillsync_auth_responder_up";
pub const AUTH_RATE_LIMITED: &str = "tillsync_auth_rate_limited_total";
pub const REPLIES_REFUSED: &str = "tillsync_replies_refused_total";
/// The broker's responders, as `tillsync_replies_refused_total` labels them.
pub const RESPONDERS: [&str; 3] = ["activation", "command_keys", "config_publish"];
pub const ACTIVATIONS: &str = "tillsync_activations_total";
pub const REVOCATIONS_PENDING: &str = "tillsync_revocations_pending";
pub const DEVICES_CUT_OFF: &str = "tillsync_devices_cut_off_total";
pub const BRIDGE_WATERMARKS_REFUSED: &str = "tillsync_bridge_watermarks_refused_total";
pub const REVOCATION_KICKS: &str = "tillsync_revocation_kicks_total";
pub const SETTLEMENTS_RESENT: &str = "tillsync_settlements_resent_total";
pub const CONFIG_PUBLISHES: &str = "tillsync_config_publishes_total";
pub const CONFIG_UNDISTRIBUTED: &str = "tillsync_config_versions_undistributed";
pub const CONFIG_DEVICES_BEHIND: &str = "tillsync_config_devices_behind";
pub const CONFIG_DRIFT_OLDEST: &str = "tillsync_config_drift_oldest_seconds";
pub const CONFIG_APPLY_LATENCY: &str = "tillsync_config_apply_latency_seconds";
pub const CONFIG_SNAPSHOTS_LOST: &str = "tillsync_config_snapshots_lost_total";

const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Lags that include a store's time offline (an event's age at commit, a command's round trip,
/// a configuration's apply): stores are offline for hours, and a histogram that ends at 300 s
/// would show a day-long outage as "over 5 minutes". Up to 24 h.
const LAG_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
    28800.0, 43200.0, 86400.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// Installs the global recorder (once per process) and describes every metric.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS))
                .and_then(|b| {
                    [EVENT_LAG, COMMAND_ROUND_TRIP, CONFIG_APPLY_LATENCY]
                        .into_iter()
                        .try_fold(b, |b, name| b.set_buckets_for_metric(Matcher::Full(name.into()), LAG_BUCKETS))
                })
                .expect("static buckets are valid")
                .install_recorder()
                .expect("the metrics recorder is installed once");
            describe();
            register_at_zero();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(EVENTS_RECEIVED, "Event messages taken from the events stream.");
    describe_counter!(EVENTS_APPLIED, "Events applied to the read models, by kind.");
    describe_counter!(EVENTS_DUPLICATE, "Duplicate events acked without effect, by dedupe layer (memory, ledger).");
    describe_counter!(EVENTS_CONFLICT, "Events not applied because they conflict, by kind (content_mismatch, stale).");
    describe_counter!(EVENTS_QUARANTINED, "Messages quarantined and terminated, by reason code.");
    describe_counter!(EVENT_GAPS, "Gaps detected in device sequence numbers.");
    describe_histogram!(APPLY_LATENCY, Unit::Seconds, "From taking a message off the stream to its commit.");
    describe_histogram!(EVENT_LAG, Unit::Seconds, "From occurred_at on the device to commit in Postgres.");
    describe_histogram!(BATCH_SIZE, Unit::Count, "Events per group-commit transaction.");
    describe_counter!(DB_RETRIES, "Transient Postgres errors retried, by operation.");
    describe_gauge!(ACTORS_RESIDENT, "Device actors resident in memory.");
    describe_counter!(ACTOR_ACTIVATIONS, "Device actors started (first message or after passivation).");
    describe_counter!(ACTOR_RESTARTS, "Device actors restarted after a failure.");
    describe_counter!(ACTOR_PASSIVATIONS, "Device actors stopped after being idle.");
    describe_gauge!(CONSUMER_PENDING, "Messages not yet delivered to a broker consumer, by consumer.");
    describe_gauge!(CONSUMER_ACK_PENDING, "Messages delivered and not yet acked, by consumer.");
    describe_gauge!(CONSUMER_REDELIVERED, "Messages being redelivered, by consumer.");
    describe_counter!(HEARTBEATS, "Heartbeats received.");
    describe_gauge!(DEVICES_ONLINE, "Devices currently online, by tenant.");
    describe_gauge!(DEVICES_OFFLINE, "Known devices currently offline, by tenant.");
    describe_counter!(COMMANDS_RECEIVED, "Commands taken from the intake stream.");
    describe_counter!(COMMANDS_REJECTED, "Commands rejected at intake, by reason.");
    describe_counter!(COMMAND_DELIVERIES, "Commands published to their device's stream (first copies).");
    describe_counter!(
        COMMAND_SYNCS,
        "Catch-up requests of bridges without a consumer, by result (answered, limited: over the device's budget, failed)."
    );
    describe_counter!(
        COMMAND_COPIES_HANDED,
        "Copies of unfinished commands handed to a device again on its copies subject, by why (sync: it reconnected; check: a due check found it unacked)."
    );
    describe_counter!(COMMANDS_ACKED, "Commands acked by their device (outcome applied).");
    describe_counter!(COMMANDS_FAILED, "Commands ended failed, by code.");
    describe_counter!(COMMANDS_EXPIRED, "Commands expired before an ack.");
    describe_counter!(COMMAND_ACKS_UNMATCHED, "Acks for unknown or already final commands.");
    describe_gauge!(COMMAND_INBOX_DEPTH, "Commands queued or delivered and not yet acked, by tenant.");
    describe_gauge!(COMMAND_OLDEST_PENDING, Unit::Seconds, "Age of the oldest pending command, by tenant.");
    describe_gauge!(COMMANDS_AWAITING_APPROVAL, "Commands recorded and waiting for approvals, by tenant.");
    describe_gauge!(
        COMMAND_OLDEST_AWAITING_APPROVAL,
        Unit::Seconds,
        "Age of the oldest command waiting for approvals, by tenant (0 when none)."
    );
    describe_histogram!(COMMAND_ROUND_TRIP, Unit::Seconds, "From intake to the device's ack.");
    describe_gauge!(BROKER_UP, "1 while the broker runs.");
    describe_gauge!(
        BROKER_TASKS,
        "1 while the background task runs, 0 once it has ended, by task and scope (instance, lead)."
    );
    describe_gauge!(DEVICE_GAPS_OPEN, "Open gaps in device seq numbers (device_gaps not filled), by tenant.");
    describe_gauge!(DEVICE_GAP_OLDEST, Unit::Seconds, "Age of the oldest open gap, by tenant (0 when none).");
    describe_gauge!(WATERMARKS_STALLED, "Devices whose watermark waits longer than the stall bound, by tenant.");
    describe_gauge!(
        STREAM_BYTES,
        Unit::Bytes,
        "Bytes stored in each tillsync stream (NaN while NATS is disconnected)."
    );
    describe_gauge!(
        STREAM_MAX_BYTES,
        Unit::Bytes,
        "Byte limit of each tillsync stream (0: none; NaN while disconnected)."
    );
    describe_gauge!(STREAM_MESSAGES, "Messages stored in each tillsync stream (NaN while NATS is disconnected).");
    describe_gauge!(NATS_CONNECTED, "1 while the broker's NATS connection is up, 0 while it is down.");
    describe_gauge!(POSTGRES_UP, "1 while the broker's last Postgres probe (SELECT 1 within 1 s) succeeded.");
    describe_counter!(RESEND_REQUESTS, "Resend requests sent to devices, by why (gap, behind).");
    describe_counter!(
        COMMAND_REPUBLISHED,
        "Command copies published again, by why (lost from the stream, ack_lost, unconfirmed)."
    );
    describe_counter!(COMMANDS_CANCELLED, "Command copies cancelled before their device applied them.");
    describe_counter!(COMMAND_CANCELS_REFUSED, "Cancels that came too late, by why (final, unknown).");
    describe_counter!(
        COMMAND_APPLIED_AFTER_FINAL,
        "Commands applied by their device after the portal was told they ended."
    );
    describe_counter!(COMMAND_COPIES_DELETED, "Copies of ended commands deleted from TILLSYNC_COMMANDS.");
    describe_counter!(
        DEVICES_CUT_OFF,
        "Devices cut off (credentials revoked) for publishing events over their limit, by limit (events, bytes)."
    );
    describe_counter!(
        BRIDGE_WATERMARKS_REFUSED,
        "Watermarks bridges refused (naming another device, or ahead of their outbox), as their heartbeats report."
    );
    describe_counter!(
        SETTLEMENTS_RESENT,
        "Acks and terms sent again after reconnecting to NATS (one may have been lost with the connection)."
    );
    describe_counter!(COMMANDS_PENDING_APPROVAL, "Commands recorded to wait for approvals they did not arrive with.");
    describe_counter!(
        APPROVAL_DECISIONS,
        "Approvers' decisions about waiting commands, by decision and outcome (counted, or the refusal code)."
    );
    describe_gauge!(PARTITIONS_OWNED, "Partitions this instance owns and works.");
    describe_gauge!(
        PARTITIONS_UNOWNED,
        "Partitions with no live lease, as this instance sees the lease bucket (all until its first look, briefly non-zero during a handover)."
    );
    describe_counter!(
        PARTITION_CHANGES,
        "Ownership changes on this instance, by change (acquired, released: handed over, lost: taken over or cut off)."
    );
    describe_gauge!(
        PARTITION_LAG,
        "Messages not yet acked on an owned partition's consumers (pending plus unacked), by partition; 0 where another instance owns it."
    );
    describe_counter!(
        AUTH_DECISIONS,
        "NATS connections this instance decided (auth callout), by result (allowed, refused) and reason."
    );
    describe_counter!(
        AUTH_RATE_LIMITED,
        "NATS connections refused as rate_limited: their source address was over its budget of refused attempts and activation connects."
    );
    describe_counter!(
        REPLIES_REFUSED,
        "Requests not acted on because their reply subject pointed outside the requester's inbox, by responder."
    );
    describe_gauge!(
        AUTH_RESPONDER_UP,
        "1 while this instance answers NATS auth callouts, 0 while its callout connection is down; absent when not configured."
    );
    describe_counter!(
        ACTIVATIONS,
        "Activation requests answered, by result (activated, rotated, or the refusal code)."
    );
    describe_gauge!(
        REVOCATIONS_PENDING,
        "Revoked credentials whose live connection has not been disconnected yet (seen by the partition-0 owner)."
    );
    describe_counter!(
        REVOCATION_KICKS,
        "Disconnect requests for revoked credentials, by result (kicked, not_connected, failed)."
    );
    describe_counter!(
        CONFIG_PUBLISHES,
        "Configuration publishes, by result (published, refused) and code (none, or the refusal code)."
    );
    describe_gauge!(
        CONFIG_UNDISTRIBUTED,
        "Configuration versions committed and not yet on JetStream (seen by the partition-0 owner)."
    );
    describe_gauge!(
        CONFIG_DEVICES_BEHIND,
        "Devices whose applied configuration version is behind their store's, by tenant."
    );
    describe_gauge!(
        CONFIG_DRIFT_OLDEST,
        Unit::Seconds,
        "Since when the longest-behind device differs (publish time of the first version it lacks), by tenant; 0 when none."
    );
    describe_histogram!(
        CONFIG_APPLY_LATENCY,
        Unit::Seconds,
        "From a configuration version's publish to a heartbeat reporting it applied."
    );
    describe_counter!(
        CONFIG_SNAPSHOTS_LOST,
        "Stores whose configuration snapshot was missing from JetStream and was republished."
    );
}

/// One publish, by result (`published`, `refused`) and code (`none` or the refusal code).
pub fn config_publish(result: &'static str, code: &'static str) {
    counter!(CONFIG_PUBLISHES, "result" => result, "code" => code).increment(1);
}

pub fn config_snapshots_lost(n: u64) {
    counter!(CONFIG_SNAPSHOTS_LOST).increment(n);
}

pub fn config_undistributed(n: i64) {
    gauge!(CONFIG_UNDISTRIBUTED).set(n as f64);
}

pub fn config_drift(tenant: &str, behind: i64, oldest_secs: f64) {
    gauge!(CONFIG_DEVICES_BEHIND, "tenant" => tenant.to_string()).set(behind as f64);
    gauge!(CONFIG_DRIFT_OLDEST, "tenant" => tenant.to_string()).set(oldest_secs);
}

pub fn config_apply_latency(secs: f64) {
    histogram!(CONFIG_APPLY_LATENCY).record(secs);
}

pub fn auth_decision(result: &'static str, reason: &'static str) {
    counter!(AUTH_DECISIONS, "result" => result, "reason" => reason).increment(1);
}

/// No address label: an attacker picks the addresses, and every one would be a new series.
pub fn auth_rate_limited() {
    counter!(AUTH_RATE_LIMITED).increment(1);
}

pub fn reply_refused(responder: &'static str) {
    counter!(REPLIES_REFUSED, "responder" => responder).increment(1);
}

pub fn auth_responder_up(up: bool) {
    gauge!(AUTH_RESPONDER_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn activation(result: &str) {
    counter!(ACTIVATIONS, "result" => result.to_string()).increment(1);
}

pub fn revocations_pending(n: i64) {
    gauge!(REVOCATIONS_PENDING).set(n as f64);
}

pub fn revocation_kick(result: &'static str) {
    counter!(REVOCATION_KICKS, "result" => result).increment(1);
}

pub fn partitions_owned(n: usize) {
    gauge!(PARTITIONS_OWNED).set(n as f64);
}

pub fn partitions_unowned(n: usize) {
    gauge!(PARTITIONS_UNOWNED).set(n as f64);
}

pub fn partition_change(change: &'static str) {
    counter!(PARTITION_CHANGES, "change" => change).increment(1);
}

pub fn partition_lag(partition: u16, lag: Option<u64>) {
    gauge!(PARTITION_LAG, "partition" => partition.to_string()).set(lag.map_or(f64::NAN, |l| l as f64));
}

/// The command counters exported at 0 from the start, so a rate or an alert has a series on
/// a healthy system.
fn register_command_counters() {
    for why in ["lost", "ack_lost", "unconfirmed"] {
        counter!(COMMAND_REPUBLISHED, "why" => why).absolute(0);
    }
    for why in ["final", "unknown"] {
        counter!(COMMAND_CANCELS_REFUSED, "why" => why).absolute(0);
    }
    for name in [
        COMMANDS_CANCELLED,
        COMMAND_APPLIED_AFTER_FINAL,
        COMMAND_COPIES_DELETED,
        COMMANDS_PENDING_APPROVAL,
        BRIDGE_WATERMARKS_REFUSED,
        SETTLEMENTS_RESENT,
    ] {
        counter!(name).absolute(0);
    }
    for limit in ["events", "bytes"] {
        counter!(DEVICES_CUT_OFF, "limit" => limit).absolute(0);
    }
    for decision in ["approve", "reject"] {
        counter!(APPROVAL_DECISIONS, "decision" => decision, "outcome" => "counted").absolute(0);
    }
}

pub fn events_received(n: u64) {
    counter!(EVENTS_RECEIVED).increment(n);
}
pub fn event_applied(kind: &'static str) {
    counter!(EVENTS_APPLIED, "kind" => kind).increment(1);
}
pub fn event_duplicate(layer: &'static str) {
    counter!(EVENTS_DUPLICATE, "layer" => layer).increment(1);
}
pub fn event_conflict(kind: &'static str) {
    counter!(EVENTS_CONFLICT, "kind" => kind).increment(1);
}
pub fn event_quarantined(reason: &'static str) {
    counter!(EVENTS_QUARANTINED, "reason" => reason).increment(1);
}
pub fn event_gap() {
    counter!(EVENT_GAPS).increment(1);
}
pub fn apply_latency(secs: f64) {
    histogram!(APPLY_LATENCY).record(secs);
}
pub fn event_lag(secs: f64) {
    histogram!(EVENT_LAG).record(secs);
}
pub fn batch_size(n: usize) {
    histogram!(BATCH_SIZE).record(n as f64);
}
pub fn db_retry(op: &'static str) {
    counter!(DB_RETRIES, "op" => op).increment(1);
}
pub fn consumer_info(consumer: &str, pending: u64, ack_pending: usize, redelivered: usize) {
    gauge!(CONSUMER_PENDING, "consumer" => consumer.to_string()).set(pending as f64);
    gauge!(CONSUMER_ACK_PENDING, "consumer" => consumer.to_string()).set(ack_pending as f64);
    gauge!(CONSUMER_REDELIVERED, "consumer" => consumer.to_string()).set(redelivered as f64);
}
pub fn actor_stats(s: tillsync_actors::stats::StatsSnapshot) {
    gauge!(ACTORS_RESIDENT).set(s.resident as f64);
    counter!(ACTOR_ACTIVATIONS).absolute(s.activations);
    counter!(ACTOR_RESTARTS).absolute(s.restarts);
    counter!(ACTOR_PASSIVATIONS).absolute(s.passivations);
}
pub fn heartbeat() {
    counter!(HEARTBEATS).increment(1);
}
pub fn settlements_resent(n: u64) {
    counter!(SETTLEMENTS_RESENT).increment(n);
}
pub fn bridge_watermarks_refused(n: u64) {
    counter!(BRIDGE_WATERMARKS_REFUSED).increment(n);
}
pub fn devices_by_state(tenant: &str, online: i64, offline: i64) {
    gauge!(DEVICES_ONLINE, "tenant" => tenant.to_string()).set(online as f64);
    gauge!(DEVICES_OFFLINE, "tenant" => tenant.to_string()).set(offline as f64);
}
pub fn commands_received(n: u64) {
    counter!(COMMANDS_RECEIVED).increment(n);
}
pub fn command_rejected(reason: &'static str) {
    counter!(COMMANDS_REJECTED, "reason" => reason).increment(1);
}
pub fn command_delivery() {
    counter!(COMMAND_DELIVERIES).increment(1);
}
pub fn command_acked(round_trip_secs: f64) {
    counter!(COMMANDS_ACKED).increment(1);
    histogram!(COMMAND_ROUND_TRIP).record(round_trip_secs);
}
pub fn command_failed(code: String) {
    counter!(COMMANDS_FAILED, "code" => code).increment(1);
}
pub fn command_expired() {
    counter!(COMMANDS_EXPIRED).increment(1);
}
pub fn command_ack_unmatched() {
    counter!(COMMAND_ACKS_UNMATCHED).increment(1);
}
pub fn command_inbox(tenant: &str, depth: i64, oldest_secs: f64) {
    gauge!(COMMAND_INBOX_DEPTH, "tenant" => tenant.to_string()).set(depth as f64);
    gauge!(COMMAND_OLDEST_PENDING, "tenant" => tenant.to_string()).set(oldest_secs);
}
pub fn commands_awaiting_approval(tenant: &str, waiting: i64, oldest_secs: f64) {
    gauge!(COMMANDS_AWAITING_APPROVAL, "tenant" => tenant.to_string()).set(waiting as f64);
    gauge!(COMMAND_OLDEST_AWAITING_APPROVAL, "tenant" => tenant.to_string()).set(oldest_secs);
}
pub fn broker_up(up: bool) {
    gauge!(BROKER_UP).set(if up { 1.0 } else { 0.0 });
}
/// A registered task ([`crate::tasks`]) started or ended.
pub fn broker_task(task: &'static str, scope: &'static str, running: bool) {
    gauge!(BROKER_TASKS, "task" => task, "scope" => scope).set(if running { 1.0 } else { 0.0 });
}
/// `n` resend requests sent for `why` (`gap`, `behind`); 0 registers the series.
pub fn resend_requested(why: &'static str, n: u64) {
    counter!(RESEND_REQUESTS, "why" => why).increment(n);
}

pub fn device_gaps(tenant: &str, open: i64, oldest_secs: f64) {
    gauge!(DEVICE_GAPS_OPEN, "tenant" => tenant.to_string()).set(open as f64);
    gauge!(DEVICE_GAP_OLDEST, "tenant" => tenant.to_string()).set(oldest_secs);
}
pub fn watermarks_stalled(tenant: &str, devices: i64) {
    gauge!(WATERMARKS_STALLED, "tenant" => tenant.to_string()).set(devices as f64);
}
/// A stream's size against its byte limit; `None` (NATS unreachable) exports NaN: unknown,
/// never a reassuring last value.
pub fn stream_info(stream: &str, state: Option<(u64, i64, u64)>) {
    let (bytes, max, messages) = match state {
        Some((bytes, max, messages)) => (bytes as f64, max.max(0) as f64, messages as f64),
        None => (f64::NAN, f64::NAN, f64::NAN),
    };
    gauge!(STREAM_BYTES, "stream" => stream.to_string()).set(bytes);
    gauge!(STREAM_MAX_BYTES, "stream" => stream.to_string()).set(max);
    gauge!(STREAM_MESSAGES, "stream" => stream.to_string()).set(messages);
}
/// A consumer's lag unknown (NATS unreachable): NaN rather than the last value read.
pub fn consumer_unknown(consumer: &str) {
    for name in [CONSUMER_PENDING, CONSUMER_ACK_PENDING, CONSUMER_REDELIVERED] {
        gauge!(name, "consumer" => consumer.to_string()).set(f64::NAN);
    }
}
pub fn nats_connected(up: bool) {
    gauge!(NATS_CONNECTED).set(if up { 1.0 } else { 0.0 });
}
pub fn postgres_up(up: bool) {
    gauge!(POSTGRES_UP).set(if up { 1.0 } else { 0.0 });
}
/// A tenant's gap and stall gauges while Postgres cannot be read: NaN, not the last value.
pub fn tenant_signals_unknown(tenant: &str) {
    for name in [DEVICE_GAPS_OPEN, DEVICE_GAP_OLDEST] {
        gauge!(name, "tenant" => tenant.to_string()).set(f64::NAN);
    }
    gauge!(WATERMARKS_STALLED, "tenant" => tenant.to_string()).set(f64::NAN);
}

/// Every counter (and histogram) exists from the start, at 0, with the label values known in
/// advance, so rates, ratios and `absent()`-free alerts have a series on a healthy system.
/// Open-ended labels get their known codes (reason codes from `schemas::Reason`).
fn register_at_zero() {
    use tillsync_schemas::Reason;
    for name in [
        EVENTS_RECEIVED,
        EVENT_GAPS,
        ACTOR_ACTIVATIONS,
        ACTOR_RESTARTS,
        ACTOR_PASSIVATIONS,
        HEARTBEATS,
        COMMANDS_RECEIVED,
        COMMAND_DELIVERIES,
        COMMANDS_ACKED,
        COMMANDS_EXPIRED,
        COMMAND_ACKS_UNMATCHED,
    ] {
        counter!(name).increment(0);
    }
    for kind in tillsync_schemas::event::EVENT_KINDS {
        counter!(EVENTS_APPLIED, "kind" => *kind).increment(0);
    }
    for result in ["answered", "limited", "failed"] {
        counter!(COMMAND_SYNCS, "result" => result).increment(0);
    }
    for why in ["sync", "check"] {
        counter!(COMMAND_COPIES_HANDED, "why" => why).increment(0);
    }
    for layer in [DupLayer::Memory, DupLayer::Ledger] {
        counter!(EVENTS_DUPLICATE, "layer" => layer.as_str()).increment(0);
    }
    for kind in ["content_mismatch", "stale"] {
        counter!(EVENTS_CONFLICT, "kind" => kind).increment(0);
    }
    for reason in Reason::ALL {
        counter!(EVENTS_QUARANTINED, "reason" => reason.as_str()).increment(0);
        counter!(COMMANDS_REJECTED, "reason" => reason.as_str()).increment(0);
    }
    counter!(DB_RETRIES, "op" => "ingest").increment(0);
    counter!(COMMANDS_FAILED, "code" => MAX_ATTEMPTS_CODE).increment(0);
    // From zero, so `increase` sees the first refusal (alert TillsyncCommandsBadSignature).
    counter!(COMMANDS_FAILED, "code" => "bad_signature").increment(0);
    counter!(CONFIG_PUBLISHES, "result" => "published", "code" => "none").increment(0);
    counter!(CONFIG_SNAPSHOTS_LOST).increment(0);
    for r in tillsync_schemas::config::Refusal::ALL {
        counter!(CONFIG_PUBLISHES, "result" => "refused", "code" => r.as_str()).increment(0);
    }
    config_undistributed(0);
    for name in [APPLY_LATENCY, EVENT_LAG, BATCH_SIZE, COMMAND_ROUND_TRIP, CONFIG_APPLY_LATENCY] {
        let _ = histogram!(name);
    }
    register_command_counters();
    for change in ["acquired", "released", "lost"] {
        counter!(PARTITION_CHANGES, "change" => change).increment(0);
    }
    partitions_owned(0);
    nats_connected(false);
    for responder in RESPONDERS {
        counter!(REPLIES_REFUSED, "responder" => responder).increment(0);
    }
    // From zero, so `increase` sees the first (alert TillsyncAuthUnavailable).
    counter!(AUTH_DECISIONS, "result" => "refused", "reason" => "unavailable").increment(0);
    counter!(AUTH_RATE_LIMITED).increment(0);
    // Connected at start (the broker migrated); the monitor probes from its first tick on.
    postgres_up(true);
}

/// Where /metrics is served: the handle renders the text format.
pub fn render(handle: &PrometheusHandle) -> String {
    handle.render()
}

pub fn command_syncs(result: &'static str, n: u64) {
    counter!(COMMAND_SYNCS, "result" => result).increment(n);
}
pub fn command_copies_handed(why: &'static str, n: u64) {
    counter!(COMMAND_COPIES_HANDED, "why" => why).increment(n);
}
pub fn command_republished(why: &'static str) {
    counter!(COMMAND_REPUBLISHED, "why" => why).increment(1);
}
pub fn device_cut_off(limit: &'static str) {
    counter!(DEVICES_CUT_OFF, "limit" => limit).increment(1);
}
pub fn command_pending_approval() {
    counter!(COMMANDS_PENDING_APPROVAL).increment(1);
}
pub fn approval_decision(decision: &'static str, outcome: &'static str) {
    counter!(APPROVAL_DECISIONS, "decision" => decision, "outcome" => outcome).increment(1);
}
pub fn command_cancelled() {
    counter!(COMMANDS_CANCELLED).increment(1);
}
pub fn command_cancel_refused(why: &'static str) {
    counter!(COMMAND_CANCELS_REFUSED, "why" => why).increment(1);
}
pub fn command_applied_after_final() {
    counter!(COMMAND_APPLIED_AFTER_FINAL).increment(1);
}
pub fn command_copies_deleted(n: u64) {
    counter!(COMMAND_COPIES_DELETED).increment(n);
}
