//! JetStream stream names. The broker creates them; bridges and the operator CLI address them.

use crate::DeviceAddr;

pub const EVENTS: &str = "TILLSYNC_EVENTS";
pub const HEARTBEATS: &str = "TILLSYNC_HEARTBEATS";
pub const COMMANDS: &str = "TILLSYNC_COMMANDS";
pub const COMMAND_ACKS: &str = "TILLSYNC_COMMAND_ACKS";
pub const INTAKE: &str = "TILLSYNC_INTAKE";
pub const STATUS: &str = "TILLSYNC_STATUS";
pub const WATERMARKS: &str = "TILLSYNC_WATERMARKS";
/// Configuration deltas, the last `config_deltas_kept` per store ([`crate::config`]).
pub const CONFIG: &str = "TILLSYNC_CONFIG";
/// The latest configuration snapshot of each store (one message per subject).
pub const CONFIG_SNAPSHOTS: &str = "TILLSYNC_CONFIG_SNAPSHOTS";

/// Durable consumer names used by the broker.
pub const BROKER_EVENTS_CONSUMER: &str = "broker-events";
pub const BROKER_HEARTBEATS_CONSUMER: &str = "broker-heartbeats";
pub const BROKER_INTAKE_CONSUMER: &str = "broker-intake";
pub const BROKER_ACKS_CONSUMER: &str = "broker-acks";

/// Durable consumer of one partition of a broker consumer: `<base>-p<partition>`, e.g.
/// `broker-events-p3`.
pub fn partition_consumer(base: &str, partition: u16) -> String {
    format!("{base}-p{partition}")
}

/// JetStream key-value bucket holding partition leases (`owner.<partition>`) and broker
/// instance heartbeats (`member.<instance_id>`).
pub const PARTITIONS_BUCKET: &str = "tillsync_partitions";

/// Durable consumer name of one device's command consumer:
/// `edge_<len>_<tenant>_<len>_<store>_<device>`. Ids may contain `_`, so without the lengths
/// ("a_b", "c") and ("a", "b_c") would share a consumer, and with it the permission to read it,
/// across tenants.
pub fn device_commands_consumer(addr: &crate::DeviceAddr) -> String {
    let (t, s) = (&addr.tenant_id, &addr.store_id);
    format!("edge_{}_{t}_{}_{s}_{}", t.len(), s.len(), addr.device_id)
}

/// An `edge_` consumer on the commands stream whose name is not the one its filter subject's
/// device uses: one named as before the lengths were added (`edge_<tenant>_<store>_<device>`),
/// which could even read as another device's current name. No device may use it; the broker
/// deletes it.
pub fn is_misnamed_commands_consumer(name: &str, filter_subject: &str) -> bool {
    if !name.starts_with("edge_") {
        return false;
    }
    match crate::subject::parse(filter_subject) {
        Ok(p) if p.family == crate::subject::Family::Commands => device_commands_consumer(&p.device_addr()) != name,
        _ => true,
    }
}

/// Header names.
pub const HEADER_CONTENT_TYPE: &str = "Content-Type";
pub const HEADER_SCHEMA_VERSION: &str = "Tillsync-Schema-Version";
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
pub const HEADER_ATTEMPT: &str = "Tillsync-Attempt";
/// On the empty end marker of a command catch-up (`tillsync.ccopy.…`): how many copies the
/// broker handed before it.
pub const HEADER_SYNC_DONE: &str = "Tillsync-Sync-Done";
pub const CONTENT_TYPE: &str = "application/vnd.tillsync+msgpack";

/// The start of every `Nats-Msg-Id` a device sets: `<tenant>.<store>.<device>.<nonce>`, the
/// nonce being random per outbox and kept with it. JetStream dedupes by msg id across a whole
/// stream whatever the subject, and any client picks the header freely, so an id made of names
/// alone (`till-2:<command>:ack`) could be published first by another till and the real one
/// dropped as its duplicate. Only the broker reads these streams, so no other client learns a
/// device's nonce.
pub fn msg_id_prefix(addr: &DeviceAddr, nonce: &str) -> String {
    format!("{}.{}.{}.{nonce}", addr.tenant_id, addr.store_id, addr.device_id)
}

/// `Nats-Msg-Id` of an event: `<prefix>:<event_id>` ([`msg_id_prefix`]).
pub fn event_msg_id(prefix: &str, event_id: &str) -> String {
    format!("{prefix}:{event_id}")
}

/// `Nats-Msg-Id` of an event's `resend`-th resend (0: the first send, [`event_msg_id`]):
/// `<prefix>:<event_id>:r<resend>`. JetStream remembers a msg id for its whole duplicate
/// window even after the message itself was lost or deleted, so a resend under the first id
/// would be swallowed as a duplicate; a new id per resend lands, and the broker's ledger
/// (keyed by event_id, not msg id) dedupes it.
pub fn event_resend_msg_id(prefix: &str, event_id: &str, resend: u32) -> String {
    match resend {
        0 => event_msg_id(prefix, event_id),
        n => format!("{prefix}:{event_id}:r{n}"),
    }
}

/// `Nats-Msg-Id` of a command ack: `<prefix>:<command_id>:ack`; a re-ack within JetStream's
/// duplicate window stores nothing new.
pub fn ack_msg_id(prefix: &str, command_id: &str) -> String {
    format!("{prefix}:{command_id}:ack")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resends_get_their_own_msg_id() {
        let prefix = msg_id_prefix(&DeviceAddr::new("acme", "s1", "till-1"), "n0nce");
        assert_eq!(prefix, "acme.s1.till-1.n0nce");
        assert_eq!(event_resend_msg_id(&prefix, "e1", 0), "acme.s1.till-1.n0nce:e1");
        assert_eq!(event_resend_msg_id(&prefix, "e1", 2), "acme.s1.till-1.n0nce:e1:r2");
        assert_eq!(ack_msg_id(&prefix, "c1"), "acme.s1.till-1.n0nce:c1:ack");
    }

    #[test]
    fn command_consumers_of_ids_with_underscores_stay_apart() {
        let a = crate::DeviceAddr::new("a_b", "c", "d");
        let b = crate::DeviceAddr::new("a", "b_c", "d");
        assert_ne!(device_commands_consumer(&a), device_commands_consumer(&b));
        assert_eq!(device_commands_consumer(&a), "edge_3_a_b_1_c_d");
    }

    #[test]
    fn a_consumer_is_misnamed_unless_its_filter_subjects_device_uses_that_name() {
        let d = crate::DeviceAddr::new("acme", "s1", "till-1");
        let filter = crate::subject::commands(&d);
        assert!(!is_misnamed_commands_consumer(&device_commands_consumer(&d), &filter));
        assert!(is_misnamed_commands_consumer("edge_acme_s1_till-1", &filter));
        // A legacy name of tenant "4" that reads as a current name of ("acme", "s1", "d").
        let other = crate::subject::commands(&crate::DeviceAddr::new("4", "acme", "2_s1_d"));
        assert!(is_misnamed_commands_consumer("edge_4_acme_2_s1_d", &other));
        assert!(!is_misnamed_commands_consumer("broker-events-p0", "tillsync.ev.*.*.*.0"));
    }
}
