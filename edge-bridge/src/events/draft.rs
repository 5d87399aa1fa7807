//! What the POS submits: an event draft (kind, payload, optional event_id and occurred_at_ms).
//! The bridge adds identity from its config, the seq, and the event_id when none is given.

use serde::Deserialize;
use tillsync_schemas::{DeviceAddr, EventBody, EventEnvelope, Reason, WireError, MAX_MESSAGE_BYTES};

/// An event before the bridge has accepted it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDraft {
    /// The POS's own id (UUID or ULID), making its retries idempotent; generated (UUIDv7) when `None`.
    pub event_id: Option<String>,
    /// When it happened on the till, Unix ms; the bridge's clock at accept time when `None`.
    pub occurred_at_ms: Option<i64>,
    pub body: EventBody,
}

impl EventDraft {
    pub fn new(body: EventBody) -> EventDraft {
        EventDraft { event_id: None, occurred_at_ms: None, body }
    }

    /// Parses the local API's JSON: `{"event_id"?, "occurred_at_ms"?, "kind", "payload"}`.
    pub fn from_json(bytes: &[u8]) -> Result<EventDraft, WireError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(WireError::new(
                Reason::Oversize,
                format!("{} bytes, more than {MAX_MESSAGE_BYTES}", bytes.len()),
            ));
        }
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            event_id: Option<String>,
            #[serde(default)]
            occurred_at_ms: Option<i64>,
            kind: Option<String>,
            #[serde(default)]
            payload: serde_json::Value,
        }
        let raw: Raw = serde_json::from_slice(bytes)
            .map_err(|e| WireError::new(Reason::Undecodable, format!("not a JSON event draft: {e}")))?;
        let kind = raw.kind.ok_or_else(|| WireError::new(Reason::UnknownKind, "kind is missing"))?;
        if !tillsync_schemas::event::EVENT_KINDS.contains(&kind.as_str()) {
            return Err(WireError::new(Reason::UnknownKind, format!("kind {kind:?}")));
        }
        let tagged = serde_json::json!({ "kind": kind, "payload": raw.payload });
        let body: EventBody = serde_json::from_value(tagged)
            .map_err(|e| WireError::new(Reason::InvalidField, format!("{kind} payload: {e}")))?;
        Ok(EventDraft { event_id: raw.event_id, occurred_at_ms: raw.occurred_at_ms, body })
    }

    /// SHA-256 of what the POS sent apart from the id: `occurred_at_ms` as given (or absent)
    /// and the body. A resubmit under a known `event_id` is a retry only when this matches.
    /// The body is hashed in its MessagePack form, so JSON spacing and key order do not count.
    pub fn content_hash(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        #[derive(serde::Serialize)]
        struct Content<'a> {
            occurred_at_ms: Option<i64>,
            body: &'a EventBody,
        }
        let bytes = tillsync_schemas::codec::encode(&Content { occurred_at_ms: self.occurred_at_ms, body: &self.body });
        Sha256::digest(&bytes).into()
    }

    /// The envelope this draft becomes at `seq`, fully validated.
    pub fn into_envelope(
        self,
        addr: &DeviceAddr,
        seq: u64,
        event_id: String,
        now_ms: i64,
    ) -> Result<EventEnvelope, WireError> {
        let ev = EventEnvelope {
            schema_version: tillsync_schemas::SCHEMA_VERSION,
            tenant_id: addr.tenant_id.clone(),
            store_id: addr.store_id.clone(),
            device_id: addr.device_id.clone(),
            event_id,
            seq,
            occurred_at_ms: self.occurred_at_ms.unwrap_or(now_ms),
            body: self.body,
        };
        ev.validate()?;
        let size = tillsync_schemas::encode(&ev).len();
        if size > MAX_MESSAGE_BYTES {
            return Err(WireError::new(
                Reason::Oversize,
                format!("{size} bytes encoded, more than {MAX_MESSAGE_BYTES}"),
            ));
        }
        Ok(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> DeviceAddr {
        DeviceAddr::new("acme", "s1", "till-1")
    }

    #[test]
    fn parses_a_draft_and_validates_it() {
        let d =
            EventDraft::from_json(br#"{"kind":"order_opened","payload":{"order_id":"o-1","currency":"EUR"}}"#).unwrap();
        assert_eq!(d.body.kind(), "order_opened");
        let ev = d.into_envelope(&addr(), 7, uuid::Uuid::now_v7().to_string(), 1_700_000_000_000).unwrap();
        assert_eq!(ev.seq, 7);
        assert_eq!(ev.occurred_at_ms, 1_700_000_000_000);
    }

    #[test]
    fn content_is_what_the_pos_sent_whatever_its_spelling() {
        let parse = |json: &str| EventDraft::from_json(json.as_bytes()).unwrap().content_hash();
        let a = parse(r#"{"event_id":"x","kind":"order_opened","payload":{"order_id":"o-1","currency":"EUR"}}"#);
        let spaced =
            parse(r#"{ "payload": {"currency": "EUR", "order_id": "o-1"}, "kind": "order_opened", "event_id": "y" }"#);
        assert_eq!(a, spaced, "spacing, key order and the id itself do not count");
        assert_ne!(a, parse(r#"{"kind":"order_opened","payload":{"order_id":"o-2","currency":"EUR"}}"#));
        assert_ne!(
            a,
            parse(r#"{"occurred_at_ms":1,"kind":"order_opened","payload":{"order_id":"o-1","currency":"EUR"}}"#)
        );
    }

    #[test]
    fn refusals_are_coded() {
        let code = |json: &str| EventDraft::from_json(json.as_bytes()).unwrap_err().reason;
        assert_eq!(code("{nope"), Reason::Undecodable);
        assert_eq!(code(r#"{"payload":{}}"#), Reason::UnknownKind);
        assert_eq!(code(r#"{"kind":"order_teleported","payload":{}}"#), Reason::UnknownKind);
        assert_eq!(code(r#"{"kind":"order_opened","payload":{"order_id":"o-1"}}"#), Reason::InvalidField);
        let bad_currency =
            EventDraft::from_json(br#"{"kind":"order_opened","payload":{"order_id":"o-1","currency":"eur"}}"#)
                .unwrap()
                .into_envelope(&addr(), 1, uuid::Uuid::now_v7().to_string(), 1)
                .unwrap_err();
        assert_eq!(bad_currency.reason, Reason::InvalidAmount);
        let bad_id = EventDraft::from_json(br#"{"kind":"order_opened","payload":{"order_id":"o-1","currency":"EUR"}}"#)
            .unwrap()
            .into_envelope(&addr(), 1, "not-an-id".into(), 1)
            .unwrap_err();
        assert_eq!(bad_id.reason, Reason::InvalidId);
    }
}
