//! Configuration down: head office's versioned configuration of a store (menus, prices,
//! modifiers, taxes, tenders, settings, users), as change sets, deltas and snapshots.
//!
//! Every store has its own version, gap-free from 1. A publish is one change set; it gives each
//! store it reaches the next version. JetStream carries two things per store:
//! - a **delta** per version on `tillsync.cfg.<tenant>.<store>._store` (stream
//!   [`crate::streams::CONFIG`], the last `config_deltas_kept` per store, default 100);
//! - the latest **snapshot** on `tillsync.cfgsnap.<tenant>.<store>._store` (stream
//!   [`crate::streams::CONFIG_SNAPSHOTS`], one per store), read with a direct get.
//!
//! A device applies the delta of version `applied + 1`; it takes the snapshot instead when it
//! has no version yet, when the next delta it needs is gone from the stream, or when it is more
//! than its `snapshot_after` versions behind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::check_id;
use crate::subject::{Family, ROOT, STORE_WIDE};

/// Largest encoded delta or snapshot, in bytes: under nats-server's default 1 MiB payload
/// limit. A publish whose delta or resulting snapshot would be larger is refused (`oversize`).
pub const MAX_CONFIG_BYTES: usize = 900 * 1024;
/// Largest number of changes in one change set.
pub const MAX_CHANGES: usize = 10_000;
/// Deltas kept per store on the config stream unless configured otherwise.
pub const DEFAULT_DELTAS_KEPT: u64 = 100;
/// Header carrying the configuration version on deltas and snapshots.
pub const HEADER_VERSION: &str = "Tillsync-Config-Version";

/// `Nats-Msg-Id` of a version's delta: `cfg:<tenant>:<store>:<version>`.
pub fn delta_msg_id(tenant: &str, store: &str, version: u64) -> String {
    format!("cfg:{tenant}:{store}:{version}")
}

/// Decodes a change set, delta or snapshot: like [`crate::codec::decode`], but these may be
/// up to [`MAX_CONFIG_BYTES`] rather than the 64 KiB of other messages.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, crate::WireError> {
    use crate::Reason;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(crate::WireError::new(
            Reason::Oversize,
            format!("{} bytes, more than {MAX_CONFIG_BYTES}", bytes.len()),
        ));
    }
    rmp_serde::from_slice(bytes).map_err(|e| crate::WireError::new(Reason::Undecodable, e.to_string()))
}

/// What a configuration entity is. Tenant scope unless noted; only `setting` may be published
/// for one store (`--store`): stores override availability only, and do that with events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityType {
    /// `{"name": str}`
    MenuCategory,
    /// `{"name": str, "price_minor": int >= 0, "category_id": ref menu_category, "tax_id"?: ref tax}`
    MenuItem,
    /// `{"name": str, "price_minor": int >= 0, "item_id": ref menu_item}`
    Modifier,
    /// `{"name": str, "rate_bp": int 0..=100000}` (basis points)
    Tax,
    /// `{"name": str}`
    Tender,
    /// id is the settings domain; `{"values": object}`. May be published per store.
    Setting,
    /// `{"name": str, "roles": [one or more of "cashier", "manager", "admin"]}`
    User,
}

impl EntityType {
    pub const ALL: &'static [EntityType] = &[
        EntityType::MenuCategory,
        EntityType::MenuItem,
        EntityType::Modifier,
        EntityType::Tax,
        EntityType::Tender,
        EntityType::Setting,
        EntityType::User,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntityType::MenuCategory => "menu_category",
            EntityType::MenuItem => "menu_item",
            EntityType::Modifier => "modifier",
            EntityType::Tax => "tax",
            EntityType::Tender => "tender",
            EntityType::Setting => "setting",
            EntityType::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<EntityType> {
        EntityType::ALL.iter().copied().find(|t| t.as_str() == s)
    }

    /// Whether a change set for a single store (`store_id` set) may carry this type.
    pub fn store_scoped(self) -> bool {
        self == EntityType::Setting
    }
}

/// One change of a change set as head office writes it (JSON file or the portal's request).
/// `type` is a string here so an unknown type is refused with its code, not a decode error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeRequest {
    /// `upsert` or `delete`.
    pub op: String,
    #[serde(rename = "type")]
    pub entity_type: String,
    pub id: String,
    /// The entity for `upsert`; absent for `delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

/// A change set: what `tillsync config publish FILE` reads (JSON) and what the portal sends on
/// [`publish_subject`] (MessagePack, same fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeSet {
    pub tenant_id: String,
    /// `None`: every store of the tenant. `Some`: that store only (settings only).
    #[serde(default)]
    pub store_id: Option<String>,
    /// Refuse with `precondition_failed` unless the store's current version is this (only
    /// with `store_id`), so a portal never overwrites a version it has not seen.
    #[serde(default)]
    pub if_match: Option<u64>,
    /// Who publishes: recorded with every version.
    #[serde(default)]
    pub published_by: String,
    pub changes: Vec<ChangeRequest>,
}

/// One applied change: `body: None` is a delete (a tombstone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    #[serde(rename = "type")]
    pub entity_type: EntityType,
    pub id: String,
    pub body: Option<serde_json::Value>,
}

/// The delta that takes a store from `version - 1` to `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigDelta {
    pub schema_version: u16,
    pub tenant_id: String,
    pub store_id: String,
    pub version: u64,
    /// The publish this version came from (one publish gives many stores a version each).
    pub publish_id: String,
    pub published_by: String,
    pub published_at_ms: i64,
    pub changes: Vec<Change>,
}

/// A store's whole configuration at `version`. `delta_seq` is the stream sequence of that
/// version's delta on the config stream: a device continues with the deltas after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigSnapshot {
    pub schema_version: u16,
    pub tenant_id: String,
    pub store_id: String,
    pub version: u64,
    pub delta_seq: u64,
    pub published_at_ms: i64,
    /// Every live entity; deleted ones are absent.
    pub entities: Vec<Change>,
}

/// The broker's answer to a publish on [`publish_subject`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PublishReply {
    Published { publish_id: String, versions: BTreeMap<String, u64> },
    Refused { code: String, detail: String },
}

/// Why a change set is refused. Stable codes, as [`crate::Reason`]'s are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    Empty,
    Oversize,
    UnknownType,
    UnknownOp,
    InvalidId,
    InvalidBody,
    DuplicateEntity,
    BadReference,
    WrongTenant,
    UnknownTenant,
    UnknownStore,
    StoreOverrideNotAllowed,
    PreconditionFailed,
    Undecodable,
}

impl Refusal {
    pub const ALL: &'static [Refusal] = &[
        Refusal::Empty,
        Refusal::Oversize,
        Refusal::UnknownType,
        Refusal::UnknownOp,
        Refusal::InvalidId,
        Refusal::InvalidBody,
        Refusal::DuplicateEntity,
        Refusal::BadReference,
        Refusal::WrongTenant,
        Refusal::UnknownTenant,
        Refusal::UnknownStore,
        Refusal::StoreOverrideNotAllowed,
        Refusal::PreconditionFailed,
        Refusal::Undecodable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Empty => "empty",
            Refusal::Oversize => "oversize",
            Refusal::UnknownType => "unknown_type",
            Refusal::UnknownOp => "unknown_op",
            Refusal::InvalidId => "invalid_id",
            Refusal::InvalidBody => "invalid_body",
            Refusal::DuplicateEntity => "duplicate_entity",
            Refusal::BadReference => "bad_reference",
            Refusal::WrongTenant => "wrong_tenant",
            Refusal::UnknownTenant => "unknown_tenant",
            Refusal::UnknownStore => "unknown_store",
            Refusal::StoreOverrideNotAllowed => "store_override_not_allowed",
            Refusal::PreconditionFailed => "precondition_failed",
            Refusal::Undecodable => "undecodable",
        }
    }
}

/// A refusal with its detail, for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({detail})", code.as_str())]
pub struct Refused {
    pub code: Refusal,
    pub detail: String,
}

impl Refused {
    pub fn new(code: Refusal, detail: impl Into<String>) -> Refused {
        Refused { code, detail: detail.into() }
    }
}

/// Delta subject of a store: `tillsync.cfg.<tenant>.<store>._store`.
pub fn delta_subject(tenant: &str, store: &str) -> String {
    format!("{ROOT}.{}.{tenant}.{store}.{STORE_WIDE}", Family::Config.token())
}

/// Snapshot subject of a store: `tillsync.cfgsnap.<tenant>.<store>._store`.
pub fn snapshot_subject(tenant: &str, store: &str) -> String {
    format!("{ROOT}.{}.{tenant}.{store}.{STORE_WIDE}", Family::ConfigSnapshot.token())
}

/// Publish request subject (request/reply, answered by a broker):
/// `tillsync.cfgpub.<tenant>.<store>` or `tillsync.cfgpub.<tenant>._store` for every store.
pub fn publish_subject(tenant: &str, store: Option<&str>) -> String {
    format!("{ROOT}.{}.{tenant}.{}", Family::ConfigPublish.token(), store.unwrap_or(STORE_WIDE))
}

/// The consumer a device reads its store's deltas with: `cfg_<len>_<tenant>_<len>_<store>_<device>`.
/// Ids may contain `_`, so the lengths keep ("a_b", "c") and ("a", "b_c") apart: a device's
/// permissions name this consumer, and no other device may reach it.
pub fn device_consumer(addr: &crate::DeviceAddr) -> String {
    let (t, s) = (&addr.tenant_id, &addr.store_id);
    format!("cfg_{}_{t}_{}_{s}_{}", t.len(), s.len(), addr.device_id)
}

/// Shape checks of one change that need nothing but the change: op, type, id and body fields.
/// References between entities are checked against the resulting state by the broker.
pub fn check_change(c: &ChangeRequest) -> Result<Option<Change>, Refused> {
    let entity_type = EntityType::parse(&c.entity_type)
        .ok_or_else(|| Refused::new(Refusal::UnknownType, format!("unknown type {:?}", c.entity_type)))?;
    check_id("id", &c.id).map_err(|e| Refused::new(Refusal::InvalidId, e.detail))?;
    let at = || format!("{} {:?}", entity_type.as_str(), c.id);
    match c.op.as_str() {
        "delete" => Ok(Some(Change { entity_type, id: c.id.clone(), body: None })),
        "upsert" => {
            let body = c
                .body
                .as_ref()
                .ok_or_else(|| Refused::new(Refusal::InvalidBody, format!("{}: upsert without a body", at())))?;
            check_body(entity_type, body)
                .map_err(|why| Refused::new(Refusal::InvalidBody, format!("{}: {why}", at())))?;
            Ok(Some(Change { entity_type, id: c.id.clone(), body: Some(body.clone()) }))
        }
        other => Err(Refused::new(Refusal::UnknownOp, format!("{}: op {other:?} is neither upsert nor delete", at()))),
    }
}

/// What is wrong with an upsert's body; [`check_change`] puts it in an `invalid_body` refusal's
/// detail after the entity it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BodyError {
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("{0} must be a non-empty string")]
    Text(&'static str),
    #[error("{field} must be an integer in {lo}..={hi}")]
    Integer { field: &'static str, lo: i64, hi: i64 },
    #[error("{0} must be an id")]
    Reference(&'static str),
    #[error("values must be an object")]
    Values,
    #[error("roles must be a list")]
    RolesNotAList,
    #[error("roles must be one or more of {:?}", ROLES)]
    Roles,
}

/// The roles a user entity may hold.
const ROLES: &[&str] = &["cashier", "manager", "admin"];

/// The fields an entity of `t` must have. Other fields pass through untouched.
fn check_body(t: EntityType, body: &serde_json::Value) -> Result<(), BodyError> {
    let obj = body.as_object().ok_or(BodyError::NotAnObject)?;
    let text = |f: &'static str| match obj.get(f).and_then(|v| v.as_str()) {
        Some(s) if !s.trim().is_empty() => Ok(()),
        _ => Err(BodyError::Text(f)),
    };
    let int_in = |f: &'static str, lo: i64, hi: i64| match obj.get(f).and_then(|v| v.as_i64()) {
        Some(n) if (lo..=hi).contains(&n) => Ok(()),
        _ => Err(BodyError::Integer { field: f, lo, hi }),
    };
    let reference = |f: &'static str, required: bool| match obj.get(f) {
        None if !required => Ok(()),
        Some(v) if v.as_str().is_some_and(|s| check_id(f, s).is_ok()) => Ok(()),
        _ => Err(BodyError::Reference(f)),
    };
    match t {
        EntityType::MenuCategory | EntityType::Tender => text("name"),
        EntityType::MenuItem => {
            text("name")?;
            int_in("price_minor", 0, i64::MAX)?;
            reference("category_id", true)?;
            reference("tax_id", false)
        }
        EntityType::Modifier => {
            text("name")?;
            int_in("price_minor", 0, i64::MAX)?;
            reference("item_id", true)
        }
        EntityType::Tax => {
            text("name")?;
            int_in("rate_bp", 0, 100_000)
        }
        EntityType::Setting => match obj.get("values") {
            Some(v) if v.is_object() => Ok(()),
            _ => Err(BodyError::Values),
        },
        EntityType::User => {
            text("name")?;
            let roles = obj.get("roles").and_then(|v| v.as_array()).ok_or(BodyError::RolesNotAList)?;
            if roles.is_empty() || !roles.iter().all(|r| r.as_str().is_some_and(|r| ROLES.contains(&r))) {
                return Err(BodyError::Roles);
            }
            Ok(())
        }
    }
}

/// The references an entity's body makes: `(field, type it must name)`.
pub fn references(t: EntityType) -> &'static [(&'static str, EntityType)] {
    match t {
        EntityType::MenuItem => &[("category_id", EntityType::MenuCategory), ("tax_id", EntityType::Tax)],
        EntityType::Modifier => &[("item_id", EntityType::MenuItem)],
        _ => &[],
    }
}

/// Checks a whole change set's shape: not empty, not too many changes, each change valid, no
/// entity twice, settings only when scoped to a store. Returns the checked changes in order.
pub fn check_change_set(cs: &ChangeSet) -> Result<Vec<Change>, Refused> {
    check_id("tenant_id", &cs.tenant_id).map_err(|e| Refused::new(Refusal::InvalidId, e.detail))?;
    if let Some(s) = &cs.store_id {
        check_id("store_id", s).map_err(|e| Refused::new(Refusal::InvalidId, e.detail))?;
    }
    if cs.changes.is_empty() {
        return Err(Refused::new(Refusal::Empty, "the change set has no changes"));
    }
    if cs.changes.len() > MAX_CHANGES {
        return Err(Refused::new(Refusal::Oversize, format!("{} changes, more than {MAX_CHANGES}", cs.changes.len())));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(cs.changes.len());
    for c in &cs.changes {
        let Some(change) = check_change(c)? else { continue };
        if cs.store_id.is_some() && !change.entity_type.store_scoped() {
            return Err(Refused::new(
                Refusal::StoreOverrideNotAllowed,
                format!(
                    "{} {:?}: only settings may be published for one store",
                    change.entity_type.as_str(),
                    change.id
                ),
            ));
        }
        if !seen.insert((change.entity_type, change.id.clone())) {
            return Err(Refused::new(
                Refusal::DuplicateEntity,
                format!("{} {:?} appears twice", change.entity_type.as_str(), change.id),
            ));
        }
        out.push(change);
    }
    Ok(out)
}

/// Checks that every reference in `state` (the store's configuration after the change set)
/// names a live entity. `state` maps (type, id) to body.
pub fn check_references(state: &BTreeMap<(EntityType, String), serde_json::Value>) -> Result<(), Refused> {
    for ((t, id), body) in state {
        for (field, target) in references(*t) {
            if let Some(r) = body.get(*field).and_then(|v| v.as_str()) {
                if !state.contains_key(&(*target, r.to_string())) {
                    return Err(Refused::new(
                        Refusal::BadReference,
                        format!("{} {id:?}: {field} {r:?} names no {}", t.as_str(), target.as_str()),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn upsert(t: &str, id: &str, body: serde_json::Value) -> ChangeRequest {
        ChangeRequest { op: "upsert".into(), entity_type: t.into(), id: id.into(), body: Some(body) }
    }

    fn set(changes: Vec<ChangeRequest>) -> ChangeSet {
        ChangeSet { tenant_id: "acme".into(), store_id: None, if_match: None, published_by: "hq".into(), changes }
    }

    #[test]
    fn a_valid_change_set_passes_and_keeps_its_order() {
        let cs = set(vec![
            upsert("menu_category", "mains", json!({"name": "Mains"})),
            upsert("menu_item", "burger", json!({"name": "Burger", "price_minor": 950, "category_id": "mains"})),
            ChangeRequest { op: "delete".into(), entity_type: "tender".into(), id: "cheque".into(), body: None },
        ]);
        let out = check_change_set(&cs).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[2], Change { entity_type: EntityType::Tender, id: "cheque".into(), body: None });
    }

    #[test]
    fn each_shape_error_has_its_code() {
        let code = |cs: ChangeSet| check_change_set(&cs).unwrap_err().code;
        assert_eq!(code(set(vec![])), Refusal::Empty);
        assert_eq!(code(set(vec![upsert("coupon", "c1", json!({}))])), Refusal::UnknownType);
        assert_eq!(code(set(vec![upsert("tender", "bad id", json!({"name": "x"}))])), Refusal::InvalidId);
        assert_eq!(
            code(set(vec![upsert("menu_item", "i", json!({"name": "x", "price_minor": -1, "category_id": "c"}))])),
            Refusal::InvalidBody
        );
        assert_eq!(
            code(set(vec![upsert("user", "u", json!({"name": "x", "roles": ["owner"]}))])),
            Refusal::InvalidBody
        );
        let mut twice = set(vec![
            upsert("tender", "cash", json!({"name": "Cash"})),
            upsert("tender", "cash", json!({"name": "Cash"})),
        ]);
        assert_eq!(code(twice.clone()), Refusal::DuplicateEntity);
        twice.changes[0].op = "merge".into();
        assert_eq!(code(twice), Refusal::UnknownOp);
        let mut scoped = set(vec![upsert("tender", "cash", json!({"name": "Cash"}))]);
        scoped.store_id = Some("s1".into());
        assert_eq!(code(scoped.clone()), Refusal::StoreOverrideNotAllowed);
        scoped.changes = vec![upsert("setting", "receipt", json!({"values": {"footer": "Thanks"}}))];
        assert!(check_change_set(&scoped).is_ok());
    }

    #[test]
    fn a_body_refusal_names_the_entity_and_the_field() {
        let detail = |c: ChangeRequest| check_change(&c).unwrap_err().detail;
        let item = json!({"name": "x", "price_minor": -1, "category_id": "c"});
        assert_eq!(
            detail(upsert("menu_item", "i", item)),
            format!("menu_item \"i\": price_minor must be an integer in 0..={}", i64::MAX)
        );
        assert_eq!(
            detail(upsert("user", "u", json!({"name": "x", "roles": ["owner"]}))),
            r#"user "u": roles must be one or more of ["cashier", "manager", "admin"]"#
        );
        assert_eq!(detail(upsert("tender", "t", json!([]))), r#"tender "t": the body must be a JSON object"#);
    }

    #[test]
    fn dangling_references_are_refused() {
        let mut state = BTreeMap::new();
        state.insert(
            (EntityType::MenuItem, "burger".to_string()),
            json!({"name": "B", "price_minor": 1, "category_id": "mains"}),
        );
        assert_eq!(check_references(&state).unwrap_err().code, Refusal::BadReference);
        state.insert((EntityType::MenuCategory, "mains".to_string()), json!({"name": "Mains"}));
        assert!(check_references(&state).is_ok());
    }

    #[test]
    fn deltas_round_trip_through_msgpack() {
        let d = ConfigDelta {
            schema_version: 1,
            tenant_id: "acme".into(),
            store_id: "s1".into(),
            version: 7,
            publish_id: "p".into(),
            published_by: "hq".into(),
            published_at_ms: 1,
            changes: vec![
                Change {
                    entity_type: EntityType::Tax,
                    id: "vat".into(),
                    body: Some(json!({"name": "VAT", "rate_bp": 2000})),
                },
                Change { entity_type: EntityType::Tender, id: "cheque".into(), body: None },
            ],
        };
        let back: ConfigDelta = decode(&crate::encode(&d)).unwrap();
        assert_eq!(back, d);
        // Larger than other messages may be, smaller than the limit: decodes.
        let big = ConfigDelta { changes: vec![d.changes[0].clone(); 2_000], ..d.clone() };
        let bytes = crate::encode(&big);
        assert!(bytes.len() > crate::MAX_MESSAGE_BYTES && bytes.len() < MAX_CONFIG_BYTES);
        assert_eq!(decode::<ConfigDelta>(&bytes).unwrap(), big);
        assert_eq!(decode::<ConfigDelta>(&vec![0; MAX_CONFIG_BYTES + 1]).unwrap_err().reason, crate::Reason::Oversize);
        assert_eq!(delta_msg_id("acme", "s1", 7), "cfg:acme:s1:7");
        assert_eq!(delta_subject("acme", "s1"), "tillsync.cfg.acme.s1._store");
        assert_eq!(snapshot_subject("acme", "s1"), "tillsync.cfgsnap.acme.s1._store");
        assert_eq!(publish_subject("acme", None), "tillsync.cfgpub.acme._store");
        let consumer = |t, s| device_consumer(&crate::DeviceAddr::new(t, s, "d"));
        assert_eq!(consumer("acme", "s1"), "cfg_4_acme_2_s1_d");
        assert_ne!(consumer("a_b", "c"), consumer("a", "b_c"));
    }
}
