//! Every edge metric, defined once. Each bridge owns its own Prometheus registry (no global
//! recorder), so a process running many simulated bridges, or the broker in the same test
//! process, never mixes values. Labels come from small fixed sets; never a device id.

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

pub const EVENTS_ACCEPTED: &str = "tillsync_edge_events_accepted_total";
pub const EVENTS_REFUSED: &str = "tillsync_edge_events_refused_total";
pub const EVENTS_PUBLISHED: &str = "tillsync_edge_events_published_total";
pub const PUBLISH_DUPLICATES: &str = "tillsync_edge_publish_duplicates_total";
pub const PUBLISH_FAILURES: &str = "tillsync_edge_publish_failures_total";
pub const OUTBOX_ROWS: &str = "tillsync_edge_outbox_rows";
pub const OUTBOX_BYTES: &str = "tillsync_edge_outbox_bytes";
pub const OUTBOX_UNACKED: &str = "tillsync_edge_outbox_unacked_rows";
pub const OLDEST_UNSENT: &str = "tillsync_edge_oldest_unsent_age_seconds";
pub const WATERMARK: &str = "tillsync_edge_watermark_seq";
pub const LAST_SEQ: &str = "tillsync_edge_last_seq";
pub const CONNECTED: &str = "tillsync_edge_nats_connected";
pub const COMMANDS: &str = "tillsync_edge_commands_total";
pub const COMMAND_DUPLICATES: &str = "tillsync_edge_command_duplicates_total";
pub const COMMANDS_UNDECODABLE: &str = "tillsync_edge_commands_undecodable_total";
pub const COMMAND_CATCHUPS: &str = "tillsync_edge_command_catchups_total";
pub const COMMANDS_SUBSCRIBED: &str = "tillsync_edge_commands_subscribed";
pub const COMMANDS_HANDED_AGAIN: &str = "tillsync_edge_commands_handed_again_total";
pub const CONFIG_CATCHUPS: &str = "tillsync_edge_config_catchups_total";
pub const COMMANDS_BAD_SIGNATURE: &str = "tillsync_edge_commands_bad_signature_total";
pub const COMMAND_KEYS_REFRESH_FAILURES: &str = "tillsync_edge_command_keys_refresh_failures_total";
pub const HANDLER_LATENCY: &str = "tillsync_edge_handler_seconds";
pub const HEARTBEATS: &str = "tillsync_edge_heartbeats_total";
pub const HEARTBEAT_FAILURES: &str = "tillsync_edge_heartbeat_failures_total";
pub const WATERMARKS_REFUSED: &str = "tillsync_edge_watermarks_refused_total";
pub const EVENTS_RESENT: &str = "tillsync_edge_events_resent_total";
pub const CONFIG_VERSION: &str = "tillsync_edge_config_version";
pub const CONFIG_APPLIED: &str = "tillsync_edge_config_applied_total";
pub const CONFIG_BYTES: &str = "tillsync_edge_config_bytes_total";
pub const CONFIG_REFUSED: &str = "tillsync_edge_config_refused_total";
pub const CONFIG_LATENCY: &str = "tillsync_edge_config_publish_to_applied_seconds";
pub const CONFIG_HANDED: &str = "tillsync_edge_config_handed_total";
pub const CONFIG_HANDLER_FAILURES: &str = "tillsync_edge_config_handler_failures_total";
pub const CUT_OFF: &str = "tillsync_edge_cut_off";
pub const CONNECT_FAILURES: &str = "tillsync_edge_nats_connect_failures_total";
pub const CUTOFF_PROBES: &str = "tillsync_edge_cutoff_probes_total";
pub const TASKS: &str = "tillsync_edge_tasks";

/// How a command catch-up request ended: answered (the broker's end marker came), or asked
/// again (no answer in time: no broker up, the request or its answer lost, or over budget).
pub const CATCHUP_RESULTS: &[&str] = &["answered", "asked_again"];

/// Why the configuration was caught up by reading the stream: at (re)connect, or at a periodic
/// re-check that found the store behind (a live delta was lost).
pub const CONFIG_CATCHUP_WHY: &[&str] = &["connect", "recheck"];

/// Why a NATS connection attempt failed, as far as the client can tell.
pub const CONNECT_FAILURE_REASONS: &[&str] = &["refused", "unreachable"];
/// `tillsync_edge_cut_off{reason}`: the codes of `cutoff::Reason`, in its order (a cutoff test
/// keeps the two equal; the label set is this module's, so it names no domain type).
pub const CUT_OFF_REASONS: &[&str] = &["unreachable", "unavailable", "revoked", "decommissioned", "refused"];
/// Results of a probe of whether the broker can decide, as `tillsync_edge_cutoff_probes_total`
/// labels them.
pub const PROBE_RESULTS: &[&str] = &["admitted", "refused", "unreachable"];

/// How configuration arrives: one version's delta, or the whole snapshot.
pub const CONFIG_VIA: &[&str] = &["delta", "snapshot"];

/// Why rows were sent again: the NATS connection came (back) up, the watermark stalled, or
/// the broker asked for a range.
pub const RESEND_REASONS: &[&str] = &["reconnect", "stall", "request"];

/// Why a watermark was refused: it names another device (or tenant, or store).
pub const WATERMARK_OTHER_DEVICE: &str = "other_device";
/// Why a watermark was refused: it is above every seq this bridge assigned while the outbox
/// holds events it does not cover.
pub const WATERMARK_AHEAD: &str = "ahead_of_outbox";
pub const WATERMARK_REFUSALS: &[&str] = &[WATERMARK_OTHER_DEVICE, WATERMARK_AHEAD];

const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const META: Metadata<'static> = Metadata::new("tillsync_edge", Level::INFO, Some(module_path!()));

/// One bridge's metrics and the registry that renders them.
pub struct Metrics {
    recorder: PrometheusRecorder,
    pub accepted: Counter,
    pub published: Counter,
    pub publish_duplicates: Counter,
    pub publish_failures: Counter,
    pub outbox_rows: Gauge,
    pub outbox_bytes: Gauge,
    pub outbox_unacked: Gauge,
    pub oldest_unsent: Gauge,
    pub watermark: Gauge,
    pub last_seq: Gauge,
    pub connected: Gauge,
    pub command_duplicates: Counter,
    pub commands_undecodable: Counter,
    pub commands_bad_signature: Counter,
    pub commands_handed_again: Counter,
    pub commands_subscribed: Gauge,
    pub command_keys_refresh_failures: Counter,
    pub handler_latency: Histogram,
    pub heartbeats: Counter,
    pub heartbeat_failures: Counter,
    pub config_version: Gauge,
    pub config_latency: Histogram,
    pub config_handed: Counter,
    pub config_handler_failures: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("static buckets are valid")
            .build_recorder();
        describe(&recorder);
        let c = |name: &'static str| recorder.register_counter(&Key::from_static_name(name), &META);
        let g = |name: &'static str| recorder.register_gauge(&Key::from_static_name(name), &META);
        let m = Metrics {
            accepted: c(EVENTS_ACCEPTED),
            published: c(EVENTS_PUBLISHED),
            publish_duplicates: c(PUBLISH_DUPLICATES),
            publish_failures: c(PUBLISH_FAILURES),
            outbox_rows: g(OUTBOX_ROWS),
            outbox_bytes: g(OUTBOX_BYTES),
            outbox_unacked: g(OUTBOX_UNACKED),
            oldest_unsent: g(OLDEST_UNSENT),
            watermark: g(WATERMARK),
            last_seq: g(LAST_SEQ),
            connected: g(CONNECTED),
            command_duplicates: c(COMMAND_DUPLICATES),
            commands_undecodable: c(COMMANDS_UNDECODABLE),
            commands_bad_signature: c(COMMANDS_BAD_SIGNATURE),
            commands_handed_again: c(COMMANDS_HANDED_AGAIN),
            commands_subscribed: g(COMMANDS_SUBSCRIBED),
            command_keys_refresh_failures: c(COMMAND_KEYS_REFRESH_FAILURES),
            handler_latency: recorder.register_histogram(&Key::from_static_name(HANDLER_LATENCY), &META),
            heartbeats: c(HEARTBEATS),
            heartbeat_failures: c(HEARTBEAT_FAILURES),
            config_version: g(CONFIG_VERSION),
            config_latency: recorder.register_histogram(&Key::from_static_name(CONFIG_LATENCY), &META),
            config_handed: c(CONFIG_HANDED),
            config_handler_failures: c(CONFIG_HANDLER_FAILURES),
            recorder,
        };
        // Pre-register the refusal codes operators alert on, so they show as 0 before the first one.
        for code in [
            crate::error::OUTBOX_FULL,
            crate::error::REVOKED,
            crate::error::DECOMMISSIONED,
            crate::error::EVENT_ID_REUSED,
        ] {
            m.refused(code).increment(0);
        }
        for reason in CUT_OFF_REASONS {
            m.cut_off(reason).set(0.0);
        }
        for reason in CONNECT_FAILURE_REASONS {
            m.connect_failures(reason).increment(0);
        }
        for result in PROBE_RESULTS {
            m.cutoff_probe(result).increment(0);
        }
        for reason in RESEND_REASONS {
            m.resent(reason).increment(0);
        }
        for reason in WATERMARK_REFUSALS {
            m.watermark_refused(reason).increment(0);
        }
        for via in CONFIG_VIA {
            m.config_applied(via).increment(0);
            m.config_bytes(via).increment(0);
        }
        for result in CATCHUP_RESULTS {
            m.command_catchup(result).increment(0);
        }
        for why in CONFIG_CATCHUP_WHY {
            m.config_catchup(why).increment(0);
        }
        for code in crate::store_config::cache::REFUSAL_CODES {
            m.config_refused(code).increment(0);
        }
        m
    }

    /// Refused events by code (`outbox_full`, `storage_unavailable`, or a wire Reason code).
    pub fn refused(&self, code: &'static str) -> Counter {
        self.labelled_counter(EVENTS_REFUSED, "code", code)
    }

    /// Command outcomes by outcome (`applied`, `failed`, `rejected`).
    pub fn command(&self, outcome: &'static str) -> Counter {
        self.labelled_counter(COMMANDS, "outcome", outcome)
    }

    /// Command catch-up requests, by how they ended (one of [`CATCHUP_RESULTS`]).
    pub fn command_catchup(&self, result: &'static str) -> Counter {
        self.labelled_counter(COMMAND_CATCHUPS, "result", result)
    }

    /// Configuration catch-ups that read the stream, by why (one of [`CONFIG_CATCHUP_WHY`]).
    pub fn config_catchup(&self, why: &'static str) -> Counter {
        self.labelled_counter(CONFIG_CATCHUPS, "why", why)
    }

    /// Events rewound to be published again, by reason (one of [`RESEND_REASONS`]).
    pub fn resent(&self, reason: &'static str) -> Counter {
        self.labelled_counter(EVENTS_RESENT, "reason", reason)
    }

    /// Watermarks refused, by reason ([`WATERMARK_REFUSALS`]).
    pub fn watermark_refused(&self, reason: &'static str) -> Counter {
        self.labelled_counter(WATERMARKS_REFUSED, "reason", reason)
    }

    /// Configuration change sets applied, by way (one of [`CONFIG_VIA`]).
    pub fn config_applied(&self, via: &'static str) -> Counter {
        self.labelled_counter(CONFIG_APPLIED, "via", via)
    }

    /// Encoded configuration bytes applied, by way (one of [`CONFIG_VIA`]).
    pub fn config_bytes(&self, via: &'static str) -> Counter {
        self.labelled_counter(CONFIG_BYTES, "via", via)
    }

    /// Configuration messages refused, by code ([`crate::store_config::cache::REFUSAL_CODES`]).
    pub fn config_refused(&self, code: &'static str) -> Counter {
        self.labelled_counter(CONFIG_REFUSED, "code", code)
    }

    /// 1 for the reason the bridge is cut off from NATS now (`cutoff::Reason`, [`CUT_OFF_REASONS`]), 0 for
    /// the others; all 0 while connected.
    pub fn cut_off(&self, reason: &'static str) -> Gauge {
        self.recorder.register_gauge(&Key::from_parts(CUT_OFF, vec![Label::new("reason", reason)]), &META)
    }

    /// Failed NATS connection attempts, by reason (one of [`CONNECT_FAILURE_REASONS`]).
    pub fn connect_failures(&self, reason: &'static str) -> Counter {
        self.labelled_counter(CONNECT_FAILURES, "reason", reason)
    }

    /// Probes of whether the broker can decide, by result ([`PROBE_RESULTS`]).
    pub fn cutoff_probe(&self, result: &'static str) -> Counter {
        self.labelled_counter(CUTOFF_PROBES, "result", result)
    }

    /// 1 while the background task `task` runs, 0 once it has ended: the task registry's gauge
    /// (`tillsync_tasks::Tasks::new`).
    pub fn task(&self, task: &'static str, running: bool) {
        let gauge = self.recorder.register_gauge(&Key::from_parts(TASKS, vec![Label::new("task", task)]), &META);
        gauge.set(if running { 1.0 } else { 0.0 });
    }

    fn labelled_counter(&self, name: &'static str, label: &'static str, value: &'static str) -> Counter {
        self.recorder.register_counter(&Key::from_parts(name, vec![Label::new(label, value)]), &META)
    }

    /// The Prometheus text exposition of this bridge.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn describe(r: &PrometheusRecorder) {
    let counter = |name: &'static str, help: &'static str| r.describe_counter(name.into(), None, help.into());
    let gauge =
        |name: &'static str, unit: Option<Unit>, help: &'static str| r.describe_gauge(name.into(), unit, help.into());
    counter(EVENTS_ACCEPTED, "Events written to the outbox and answered 202.");
    counter(
        EVENTS_REFUSED,
        "Events refused, by code (outbox_full, storage_unavailable, shutting_down, revoked, event_id_reused, or a validation reason).",
    );
    counter(EVENTS_PUBLISHED, "Events whose JetStream publish was acked.");
    counter(PUBLISH_DUPLICATES, "Publish acks flagged duplicate: JetStream deduped a retry by Nats-Msg-Id.");
    counter(PUBLISH_FAILURES, "Publish attempts that failed (offline, no stream, timeout); retried with backoff.");
    gauge(OUTBOX_ROWS, Some(Unit::Count), "Rows in the outbox, acked or not.");
    gauge(OUTBOX_BYTES, Some(Unit::Bytes), "Encoded event bytes in the outbox.");
    gauge(OUTBOX_UNACKED, Some(Unit::Count), "Events not yet covered by the broker's watermark.");
    gauge(OLDEST_UNSENT, Some(Unit::Seconds), "Age of the oldest event not yet published.");
    gauge(WATERMARK, None, "The broker's ack watermark for this device.");
    counter(
        WATERMARKS_REFUSED,
        "Watermarks refused, by reason (other_device: names another tenant, store or device; ahead_of_outbox: above every seq assigned while events are unconfirmed).",
    );
    gauge(LAST_SEQ, None, "Highest seq assigned.");
    gauge(CONNECTED, None, "1 while connected to NATS.");
    counter(COMMANDS, "Commands handled, by outcome (applied, failed, rejected).");
    counter(COMMAND_DUPLICATES, "Redelivered commands answered with their stored outcome.");
    counter(COMMANDS_UNDECODABLE, "Command messages refused as undecodable (kept in refused_commands).");
    counter(
        COMMANDS_BAD_SIGNATURE,
        "Command messages refused as unsigned, signed by an untrusted key, altered or signed for another device.",
    );
    counter(
        COMMAND_CATCHUPS,
        "Command catch-up requests after (re)connecting, by result (answered: the broker's end marker came; asked_again: none in time).",
    );
    gauge(
        COMMANDS_SUBSCRIBED,
        None,
        "1 while the bridge's subscriptions to its commands (live and handed again) are in place, else 0.",
    );
    counter(
        COMMANDS_HANDED_AGAIN,
        "Copies of unfinished commands the broker handed again (after a catch-up request or a due check); the ledger answers those already run.",
    );
    counter(
        CONFIG_CATCHUPS,
        "Configuration catch-ups that read the deltas stream, by why (connect, recheck: a periodic re-check found the store behind).",
    );
    r.describe_histogram(HANDLER_LATENCY.into(), Some(Unit::Seconds), "Command handler run time.".into());
    counter(HEARTBEATS, "Heartbeats published.");
    counter(HEARTBEAT_FAILURES, "Heartbeats that could not be published.");
    counter(EVENTS_RESENT, "JetStream-acked events published again, by reason (reconnect, stall, request).");
    gauge(CONFIG_VERSION, None, "The applied configuration version (0: none yet).");
    counter(CONFIG_APPLIED, "Configuration change sets applied, by way (delta, snapshot).");
    counter(CONFIG_BYTES, "Encoded bytes of the deltas and snapshots applied, by way (delta, snapshot).");
    counter(
        CONFIG_REFUSED,
        "Configuration messages refused (kept in refused_config), by code (undecodable, wrong_store).",
    );
    r.describe_histogram(
        CONFIG_LATENCY.into(),
        Some(Unit::Seconds),
        "From head office's publish to this bridge's commit of the version.".into(),
    );
    gauge(
        CUT_OFF,
        None,
        "1 for why the bridge has no NATS connection now (unreachable, unavailable, revoked, refused); all 0 while connected.",
    );
    counter(
        CONNECT_FAILURES,
        "Failed NATS connection attempts, by reason (refused: Authorization Violation; unreachable).",
    );
    counter(
        CUTOFF_PROBES,
        "Probes of whether the broker can decide while refused (activation user, no code sent), by result (admitted, refused, unreachable).",
    );
    gauge(
        TASKS,
        None,
        "1 while the bridge's background task runs, 0 once it has ended (by task: publisher, resend, heartbeat, ...).",
    );
    counter(CONFIG_HANDED, "Applied configuration change sets the handler took.");
    counter(CONFIG_HANDLER_FAILURES, "Hand-offs of an applied configuration the handler failed; retried with backoff.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_own_registry() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.refused(crate::error::OUTBOX_FULL).increment(2);
        assert!(a.render().contains(r#"tillsync_edge_events_refused_total{code="outbox_full"} 2"#));
        assert!(b.render().contains(r#"tillsync_edge_events_refused_total{code="outbox_full"} 0"#));
    }

    #[test]
    fn cut_off_series_exist_at_zero_from_the_start() {
        let text = Metrics::new().render();
        for reason in CUT_OFF_REASONS {
            assert!(text.contains(&format!("tillsync_edge_cut_off{{reason=\"{reason}\"}} 0")), "{text}");
        }
        for code in ["revoked", "decommissioned", "event_id_reused"] {
            assert!(text.contains(&format!("tillsync_edge_events_refused_total{{code=\"{code}\"}} 0")), "{text}");
        }
        assert!(text.contains(r#"tillsync_edge_nats_connect_failures_total{reason="refused"} 0"#));
        assert!(text.contains(r#"tillsync_edge_cutoff_probes_total{result="admitted"} 0"#));
    }

    #[test]
    fn a_task_reads_1_while_it_runs_and_0_once_it_ended() {
        let metrics = Metrics::new();
        metrics.task("publisher", true);
        assert!(metrics.render().contains("tillsync_edge_tasks{task=\"publisher\"} 1\n"));
        metrics.task("publisher", false);
        assert!(metrics.render().contains("tillsync_edge_tasks{task=\"publisher\"} 0\n"));
    }
}
