//! The pure part of configuration: states, what a change set does to them, what each store
//! is sent, and how big that is. No I/O, so every decision here has a fast unit test.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use tillsync_schemas::config::{Change, EntityType};

/// A configuration: (type, id) to body. Deleted entities are absent.
pub type State = BTreeMap<(EntityType, String), Value>;

/// A store's own settings: setting id to body.
pub type Overrides = BTreeMap<String, Value>;

/// Applies changes in order: an upsert sets the body, a delete removes the entity.
pub fn apply(state: &mut State, changes: &[Change]) {
    for c in changes {
        let key = (c.entity_type, c.id.clone());
        match &c.body {
            Some(body) => {
                state.insert(key, body.clone());
            }
            None => {
                state.remove(&key);
            }
        }
    }
}

/// Applies store-scoped changes (settings only) to a store's own settings.
pub fn apply_overrides(overrides: &mut Overrides, changes: &[Change]) {
    for c in changes.iter().filter(|c| c.entity_type == EntityType::Setting) {
        match &c.body {
            Some(body) => {
                overrides.insert(c.id.clone(), body.clone());
            }
            None => {
                overrides.remove(&c.id);
            }
        }
    }
}

/// A store's effective configuration: the tenant's, with the store's own settings instead.
pub fn effective(tenant: &State, overrides: &Overrides) -> State {
    let mut out = tenant.clone();
    for (id, body) in overrides {
        out.insert((EntityType::Setting, id.clone()), body.clone());
    }
    out
}

/// The body a store sees for one entity after a publish.
fn effective_body(tenant: &State, overrides: &Overrides, t: EntityType, id: &str) -> Option<Value> {
    if t == EntityType::Setting {
        if let Some(body) = overrides.get(id) {
            return Some(body.clone());
        }
    }
    tenant.get(&(t, id.to_string())).cloned()
}

/// What one store is sent for a publish: for each changed entity, the body it now sees (a
/// store's own setting stays in force when the tenant's changes; deleting it falls back to the
/// tenant's), or a tombstone. A store without any version yet gets its whole configuration.
pub fn store_delta(changes: &[Change], tenant_after: &State, overrides_after: &Overrides, first: bool) -> Vec<Change> {
    if first {
        return as_changes(&effective(tenant_after, overrides_after));
    }
    changes
        .iter()
        .map(|c| Change {
            entity_type: c.entity_type,
            id: c.id.clone(),
            body: effective_body(tenant_after, overrides_after, c.entity_type, &c.id),
        })
        .collect()
}

/// A state as a list of upserts, in (type, id) order: a snapshot's entities.
pub fn as_changes(state: &State) -> Vec<Change> {
    state.iter().map(|((t, id), body)| Change { entity_type: *t, id: id.clone(), body: Some(body.clone()) }).collect()
}

/// Encoded size of a delta or snapshot carrying `changes`, in bytes: the changes' own size
/// plus a generous allowance for the fixed fields (ids are at most 64 bytes each).
pub fn encoded_size(changes: &[Change]) -> usize {
    const FIXED: usize = 1024;
    FIXED + changes.iter().map(|c| tillsync_schemas::encode(c).len()).sum::<usize>()
}

/// How one entity differs between two states.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntityDiff {
    #[serde(rename = "type")]
    pub entity_type: EntityType,
    pub id: String,
    /// `added`, `changed` or `removed`.
    pub change: &'static str,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Every entity that differs from `from` to `to`, in (type, id) order.
pub fn diff(from: &State, to: &State) -> Vec<EntityDiff> {
    let keys: std::collections::BTreeSet<_> = from.keys().chain(to.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let (before, after) = (from.get(key), to.get(key));
            let change = match (before, after) {
                (None, Some(_)) => "added",
                (Some(_), None) => "removed",
                (Some(a), Some(b)) if a != b => "changed",
                _ => return None,
            };
            Some(EntityDiff {
                entity_type: key.0,
                id: key.1.clone(),
                change,
                before: before.cloned(),
                after: after.cloned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn up(t: EntityType, id: &str, body: Value) -> Change {
        Change { entity_type: t, id: id.into(), body: Some(body) }
    }
    fn del(t: EntityType, id: &str) -> Change {
        Change { entity_type: t, id: id.into(), body: None }
    }

    #[test]
    fn deletes_remove_and_upserts_replace() {
        let mut s = State::new();
        apply(&mut s, &[up(EntityType::Tender, "cash", json!({"name": "Cash"}))]);
        apply(&mut s, &[up(EntityType::Tender, "cash", json!({"name": "Bar"})), del(EntityType::Tax, "none")]);
        assert_eq!(s.get(&(EntityType::Tender, "cash".into())), Some(&json!({"name": "Bar"})));
        apply(&mut s, &[del(EntityType::Tender, "cash")]);
        assert!(s.is_empty());
    }

    #[test]
    fn a_store_setting_wins_and_its_delete_falls_back_to_the_tenant() {
        let mut tenant = State::new();
        apply(&mut tenant, &[up(EntityType::Setting, "receipt", json!({"values": {"footer": "HQ"}}))]);
        let mut own = Overrides::new();
        apply_overrides(&mut own, &[up(EntityType::Setting, "receipt", json!({"values": {"footer": "Shop"}}))]);
        // The tenant changes its setting: the store keeps seeing its own.
        let tenant_change = [up(EntityType::Setting, "receipt", json!({"values": {"footer": "HQ2"}}))];
        apply(&mut tenant, &tenant_change);
        let d = store_delta(&tenant_change, &tenant, &own, false);
        assert_eq!(d[0].body, Some(json!({"values": {"footer": "Shop"}})));
        // The store's own setting is deleted: the delta carries the tenant's value.
        let drop_own = [del(EntityType::Setting, "receipt")];
        apply_overrides(&mut own, &drop_own);
        let d = store_delta(&drop_own, &tenant, &own, false);
        assert_eq!(d[0].body, Some(json!({"values": {"footer": "HQ2"}})));
        // Gone at both levels: a tombstone.
        let drop_all = [del(EntityType::Setting, "receipt")];
        apply(&mut tenant, &drop_all);
        assert_eq!(store_delta(&drop_all, &tenant, &own, false)[0].body, None);
    }

    #[test]
    fn a_store_without_a_version_gets_everything() {
        let mut tenant = State::new();
        apply(&mut tenant, &[up(EntityType::Tender, "cash", json!({"name": "Cash"}))]);
        let change = [up(EntityType::Tax, "vat", json!({"name": "VAT", "rate_bp": 2000}))];
        apply(&mut tenant, &change);
        let d = store_delta(&change, &tenant, &Overrides::new(), true);
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|c| c.body.is_some()));
    }

    #[test]
    fn diffs_name_added_changed_and_removed() {
        let mut a = State::new();
        apply(
            &mut a,
            &[
                up(EntityType::Tender, "cash", json!({"name": "Cash"})),
                up(EntityType::Tender, "card", json!({"name": "Card"})),
            ],
        );
        let mut b = a.clone();
        apply(
            &mut b,
            &[
                del(EntityType::Tender, "cash"),
                up(EntityType::Tender, "card", json!({"name": "Cards"})),
                up(EntityType::Tax, "vat", json!({"name": "VAT", "rate_bp": 1})),
            ],
        );
        let kinds: Vec<_> = diff(&a, &b).iter().map(|d| (d.id.clone(), d.change)).collect();
        assert_eq!(kinds, vec![("vat".into(), "added"), ("card".into(), "changed"), ("cash".into(), "removed")]);
        assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn sizes_grow_with_the_changes() {
        let small = encoded_size(&[]);
        let big = encoded_size(&[up(EntityType::Tender, "cash", json!({"name": "x".repeat(5000)}))]);
        assert!(big > small + 5000);
    }
}
