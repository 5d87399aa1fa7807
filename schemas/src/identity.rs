//! Device identity on the wire: activation (a one-time code exchanged for credentials), the
//! private inbox prefixes NATS permissions confine each client to, and the subjects a device
//! may touch. `docs/security.md` is the prose version.

use serde::{Deserialize, Serialize};

use crate::{config, streams, subject, DeviceAddr};

/// The NATS user name a bridge connects with while activating (its password is the code).
pub const ACTIVATION_USER: &str = "activate";

/// Where a bridge asks for activation, named by the public key it proves at connect.
pub fn activate_subject(public_key: &str) -> String {
    format!("tillsync.activate.{public_key}")
}

/// What the broker subscribes to for activations.
pub const ACTIVATE_SUBJECTS: &str = "tillsync.activate.*";

/// Inbox prefix of an activating client: only the key that signed the connect reads it.
pub fn activation_inbox(public_key: &str) -> String {
    format!("_INBOX_ACT.{public_key}")
}

/// Inbox prefix of a device. Dotted, so no two devices' prefixes are prefixes of each other
/// (`_INBOX_a_b_c` would be shared by tenant `a_b` store `c` and tenant `a` store `b_c`).
pub fn device_inbox(addr: &DeviceAddr) -> String {
    format!("_INBOX_DEV.{}.{}.{}", addr.tenant_id, addr.store_id, addr.device_id)
}

/// Inbox prefix of a tenant's portal.
pub fn portal_inbox(tenant: &str) -> String {
    format!("_INBOX_PORTAL.{tenant}")
}

/// The standard inbox prefix of NATS clients. Under authorization only the operator and the
/// broker may subscribe to it; without authorization every client uses it.
pub const DEFAULT_INBOX: &str = "_INBOX";

/// Whether a responder may answer a request whose requester's own inbox prefix is
/// `own_inbox` on `reply`. nats-server does not check reply subjects, so a requester could
/// point the answer at any subject the responder may publish to (a JetStream API call, another
/// tenant's stream): an answer goes only to a literal subject under the requester's own inbox
/// or the standard `_INBOX.` prefix, whose subjects no stream stores.
pub fn may_reply(reply: &str, own_inbox: &str) -> bool {
    let under = |prefix: &str| reply.strip_prefix(prefix).and_then(|r| r.strip_prefix('.'));
    let Some(rest) = under(own_inbox).or_else(|| under(DEFAULT_INBOX)) else { return false };
    !rest.is_empty()
        && rest.split('.').all(|t| !t.is_empty() && t != "*" && t != ">")
        && !reply.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The request a bridge sends to [`activate_subject`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateRequest {
    pub code: String,
}

/// The broker's answer: the identity the key now holds, or a coded refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ActivateReply {
    Activated {
        tenant_id: String,
        store_id: String,
        device_id: String,
        /// Public keys commands are signed with (current first, then the next one).
        command_keys: Vec<String>,
    },
    Refused {
        /// `code_unknown`, `code_used`, `code_expired`, `bad_request` or `unavailable`.
        code: String,
        detail: String,
        /// What the key this connection proved is to the broker: `live`, `revoked` or
        /// `decommissioned` (absent: no credential has it). Only its holder can ask: the
        /// requester proved the key, and the answer goes to that key's own inbox. A refused
        /// bridge learns from it why it is refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
}

/// Publish and subscribe allow-lists, as NATS permissions take them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// Exactly what a device may do (docs/protocol.md 2.3): publish its events, heartbeats,
/// command acks and catch-up requests; receive its commands (live and handed again), its
/// store's configuration deltas, its watermarks, resend requests and replies; read its own
/// watermark and its store's latest delta and snapshot. The consumer grants (its own command
/// and configuration consumers) serve bridges from before the consumer-less downlink and let a
/// bridge delete the consumers its previous version left (docs/security.md "Upgrading").
pub fn device_allowed(addr: &DeviceAddr) -> Allowed {
    let consumer = streams::device_commands_consumer(addr);
    let commands = subject::commands(addr);
    let api = |verb: &str| format!("$JS.API.CONSUMER.{verb}.{}.{consumer}", streams::COMMANDS);
    let cfg_consumer = config::device_consumer(addr);
    let cfg_api = |verb: &str| format!("$JS.API.CONSUMER.{verb}.{}.{cfg_consumer}", streams::CONFIG);
    Allowed {
        publish: vec![
            subject::events(addr),
            subject::heartbeats(addr),
            subject::command_acks(addr),
            crate::command_keys::subject(addr),
            subject::command_sync(addr),
            format!("{}.{commands}", api("CREATE")),
            api("DELETE"),
            api("INFO"),
            api("MSG.NEXT"),
            format!("$JS.ACK.{}.{consumer}.>", streams::COMMANDS),
            format!("$JS.API.DIRECT.GET.{}.{}", streams::WATERMARKS, subject::watermarks(addr)),
            // Configuration: its own cursor on its store's deltas, and its store's snapshot.
            format!("{}.{}", cfg_api("CREATE"), config::delta_subject(&addr.tenant_id, &addr.store_id)),
            cfg_api("DELETE"),
            cfg_api("INFO"),
            cfg_api("MSG.NEXT"),
            format!(
                "$JS.API.DIRECT.GET.{}.{}",
                streams::CONFIG,
                config::delta_subject(&addr.tenant_id, &addr.store_id)
            ),
            format!(
                "$JS.API.DIRECT.GET.{}.{}",
                streams::CONFIG_SNAPSHOTS,
                config::snapshot_subject(&addr.tenant_id, &addr.store_id)
            ),
        ],
        subscribe: vec![
            subject::watermarks(addr),
            subject::resend_requests(addr),
            format!("{}.>", device_inbox(addr)),
            commands,
            subject::command_copies(addr),
            config::delta_subject(&addr.tenant_id, &addr.store_id),
        ],
    }
}

/// A portal credential: one tenant's intake and status, nothing else.
pub fn portal_allowed(tenant: &str) -> Allowed {
    Allowed {
        publish: vec![format!("tillsync.intake.{tenant}.>"), format!("tillsync.cfgpub.{tenant}.>")],
        subscribe: vec![format!("tillsync.status.{tenant}.>"), format!("{}.>", portal_inbox(tenant))],
    }
}

/// A bridge holding only an activation code: its activation request and its reply.
pub fn activation_allowed(public_key: &str) -> Allowed {
    Allowed {
        publish: vec![activate_subject(public_key)],
        subscribe: vec![format!("{}.>", activation_inbox(public_key))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_confined_to_its_own_subjects() {
        let a = device_allowed(&DeviceAddr::new("acme", "s1", "till-1"));
        assert!(a.publish.contains(&"tillsync.ev.acme.s1.till-1".to_string()));
        assert!(a.publish.contains(
            &"$JS.API.CONSUMER.CREATE.TILLSYNC_COMMANDS.edge_4_acme_2_s1_till-1.tillsync.cmd.acme.s1.till-1"
                .to_string()
        ));
        assert!(a.publish.contains(&"$JS.API.DIRECT.GET.TILLSYNC_WATERMARKS.tillsync.wm.acme.s1.till-1".to_string()));
        assert!(a.subscribe.contains(&"_INBOX_DEV.acme.s1.till-1.>".to_string()));
        assert!(a.subscribe.contains(&"tillsync.cmd.acme.s1.till-1".to_string()));
        assert!(a.subscribe.contains(&"tillsync.ccopy.acme.s1.till-1".to_string()));
        assert!(a.publish.contains(&"tillsync.csync.acme.s1.till-1".to_string()));
        assert!(a
            .publish
            .contains(&"$JS.API.DIRECT.GET.TILLSYNC_CONFIG_SNAPSHOTS.tillsync.cfgsnap.acme.s1._store".to_string()));
        // No wildcard reaches past the device's own tokens; the store's configuration is shared
        // by the store's devices.
        for s in a.publish.iter().chain(&a.subscribe) {
            assert!(s.contains("till-1") || s.ends_with("acme.s1._store"), "{s} is not the device's own");
        }
    }

    #[test]
    fn replies_go_only_under_the_requesters_inbox() {
        let own = device_inbox(&DeviceAddr::new("acme", "s1", "till-1"));
        assert!(may_reply("_INBOX_DEV.acme.s1.till-1.abc.1", &own));
        assert!(may_reply("_INBOX.abc123.1", &own));
        for bad in [
            "$JS.API.STREAM.PURGE.TILLSYNC_EVENTS",
            "tillsync.cfgsnap.other._store",
            "_INBOX_DEV.acme.s1.till-2.abc",
            "_INBOX_DEV.acme.s1.till-1",
            "_INBOX_DEV.acme.s1.till-1.",
            "_INBOX_DEV.acme.s1.till-1.>",
            "_INBOX_DEV.acme.s1.till-1.*",
            "_INBOX_DEV.acme.s1.till-1..x",
            "_INBOXX.abc",
            "_INBOX_DEV.acme.s1.till-10.abc",
            "_INBOX.a b",
            "",
        ] {
            assert!(!may_reply(bad, &own), "{bad}");
        }
    }

    #[test]
    fn inbox_prefixes_do_not_nest_across_tenants() {
        let x = device_inbox(&DeviceAddr::new("a_b", "c", "d"));
        let y = device_inbox(&DeviceAddr::new("a", "b_c", "d"));
        assert_ne!(x, y);
        assert!(!x.starts_with(&format!("{y}.")) && !y.starts_with(&format!("{x}.")));
    }

    #[test]
    fn a_portal_gets_one_tenant() {
        let p = portal_allowed("acme");
        assert_eq!(p.publish, vec!["tillsync.intake.acme.>", "tillsync.cfgpub.acme.>"]);
        assert!(p.subscribe.iter().all(|s| s.contains("acme")));
    }

    #[test]
    fn activation_replies_round_trip() {
        let r = ActivateReply::Refused { code: "code_used".into(), detail: "x".into(), key: None };
        let back: ActivateReply = crate::codec::decode(&crate::codec::encode(&r)).unwrap();
        assert_eq!(back, r);
    }
}
