//! Golden bytes: the exact encoding of a few messages is committed under `tests/golden/`, so an
//! accidental change of the wire format fails here. Regenerate deliberately with
//! `TILLSYNC_BLESS=1 cargo test -p tillsync-schemas --test golden` and bump the schema version.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tillsync_schemas::command::CommandBody;
use tillsync_schemas::event::{OrderItemAdded, PaymentCaptured};
use tillsync_schemas::*;

fn golden(name: &str, bytes: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("TILLSYNC_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes, &want[..], "{name}: wire format changed");
}

fn item_added() -> EventEnvelope {
    EventEnvelope {
        schema_version: 1,
        tenant_id: "acme".into(),
        store_id: "s1".into(),
        device_id: "till-1".into(),
        event_id: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
        seq: 42,
        occurred_at_ms: 1_700_000_000_123,
        body: EventBody::OrderItemAdded(OrderItemAdded {
            order_id: "o-1".into(),
            line_id: "l-1".into(),
            sku: "latte".into(),
            name: "Latte".into(),
            quantity: 2,
            unit_price_minor: 350,
        }),
    }
}

#[test]
fn event_order_item_added() {
    let ev = item_added();
    let bytes = encode(&ev);
    golden("event_order_item_added.msgpack", &bytes);
    assert_eq!(decode_event("tillsync.ev.acme.s1.till-1", &bytes).unwrap(), ev);
}

#[test]
fn event_payment_captured() {
    let mut ev = item_added();
    ev.seq = 43;
    ev.event_id = "01ARZ3NDEKTSV4RRFFQ69G5FAV".into();
    ev.body = EventBody::PaymentCaptured(PaymentCaptured {
        order_id: "o-1".into(),
        payment_id: "p-1".into(),
        amount_minor: 700,
        currency: "EUR".into(),
        method: "card".into(),
    });
    golden("event_payment_captured.msgpack", &encode(&ev));
}

#[test]
fn command_refund() {
    let cmd = CommandEnvelope {
        schema_version: 1,
        command_id: "01890a5d-ac96-774b-bcce-b302099a8058".into(),
        tenant_id: "acme".into(),
        store_id: "s1".into(),
        device_id: Some("till-1".into()),
        body: CommandBody::RefundOrder {
            order_id: "o-1".into(),
            payment_id: "p-1".into(),
            amount_minor: 350,
            currency: "EUR".into(),
            reason: "cold coffee".into(),
        },
        issued_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_003_600_000,
        requested_by: "alice".into(),
        approvals: vec![
            Approval {
                approver: "bob".into(),
                role: "manager".into(),
                approved_at_ms: 1_700_000_000_500,
                signature: None,
            },
            Approval {
                approver: "carol".into(),
                role: "finance".into(),
                approved_at_ms: 1_700_000_000_900,
                signature: None,
            },
        ],
        if_match: None,
    };
    let bytes = encode(&cmd);
    golden("command_refund_order.msgpack", &bytes);
    assert_eq!(decode_command("tillsync.intake.acme.s1.till-1", &bytes).unwrap(), cmd);
}

#[test]
fn command_settings_patch_store_wide() {
    let cmd = CommandEnvelope {
        schema_version: 1,
        command_id: "01890a5d-ac96-774b-bcce-b302099a8059".into(),
        tenant_id: "acme".into(),
        store_id: "s1".into(),
        device_id: None,
        body: CommandBody::SettingsPatch { revision: 7, settings: BTreeMap::from([("tip_mode".into(), "off".into())]) },
        issued_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_003_600_000,
        requested_by: "alice".into(),
        approvals: vec![Approval {
            approver: "bob".into(),
            role: "manager".into(),
            approved_at_ms: 1_700_000_000_500,
            signature: None,
        }],
        if_match: Some(6),
    };
    golden("command_settings_patch.msgpack", &encode(&cmd));
    assert!(decode_command("tillsync.intake.acme.s1._store", &encode(&cmd)).is_ok());
}

#[test]
fn ack_applied() {
    let ack = CommandAck {
        schema_version: 1,
        command_id: "01890a5d-ac96-774b-bcce-b302099a8058".into(),
        tenant_id: "acme".into(),
        store_id: "s1".into(),
        device_id: "till-1".into(),
        outcome: Outcome::Applied,
        code: "ok".into(),
        detail: String::new(),
        at_ms: 1_700_000_001_000,
    };
    golden("command_ack_applied.msgpack", &encode(&ack));
}

/// An `acked` status correcting an earlier `expired` one: the device applied the command after
/// the portal was told it expired.
#[test]
fn status_acked_correcting_expired() {
    let status = CommandStatus {
        command_id: "01890a5d-ac96-774b-bcce-b302099a8058".into(),
        tenant_id: "acme".into(),
        store_id: "s1".into(),
        device_id: Some("till-1".into()),
        state: CommandState::Acked,
        attempt: 1,
        code: Some("ok".into()),
        detail: "applied after the portal was told expired".into(),
        at_ms: 1_700_000_002_000,
        corrects: Some(CommandState::Expired),
    };
    let bytes = encode(&status);
    golden("status_acked_correcting_expired.msgpack", &bytes);
    assert_eq!(codec::decode::<CommandStatus>(&bytes).unwrap(), status);
    // A reader from before `corrects` existed wrote no such key: it decodes as nil.
    let mut old = serde_json::to_value(&status).unwrap();
    old.as_object_mut().unwrap().remove("corrects");
    let old: CommandStatus = codec::decode(&rmp_serde::to_vec_named(&old).unwrap()).unwrap();
    assert_eq!(old.corrects, None);
}

#[test]
fn command_cancel() {
    let cancel = CommandCancel {
        schema_version: 1,
        command_id: "01890a5d-ac96-774b-bcce-b302099a8058".into(),
        tenant_id: "acme".into(),
        store_id: "s1".into(),
        requested_by: "rita".into(),
        at_ms: 1_700_000_003_000,
    };
    let bytes = encode(&cancel);
    golden("command_cancel.msgpack", &bytes);
    let back: CommandCancel = codec::decode(&bytes).unwrap();
    assert_eq!(back, cancel);
    assert!(back.validate().is_ok());
    assert_eq!(subject::cancel("acme", "s1"), "tillsync.intake.acme.s1._cancel");
}

#[test]
fn bad_input_is_classified() {
    let subject = "tillsync.ev.acme.s1.till-1";
    let reason = |s: &str, b: &[u8]| decode_event(s, b).unwrap_err().reason;
    assert_eq!(reason(subject, b"\xc1\xff garbage"), Reason::Undecodable);
    assert_eq!(reason(subject, &vec![0u8; MAX_MESSAGE_BYTES + 1]), Reason::Oversize);
    assert_eq!(reason("tillsync.ev.acme.s1.till-2", &encode(&item_added())), Reason::SubjectMismatch);
    assert_eq!(reason("tillsync.ev.acme.s1", &encode(&item_added())), Reason::BadSubject);

    let mut v = item_added();
    v.schema_version = 9;
    assert_eq!(reason(subject, &encode(&v)), Reason::UnsupportedVersion);

    // An unknown kind, written by hand as another-language client would.
    let mut map = serde_json::to_value(item_added()).unwrap();
    map["body"]["kind"] = "teleport".into();
    assert_eq!(reason(subject, &rmp_serde::to_vec_named(&map).unwrap()), Reason::UnknownKind);

    let mut v = item_added();
    if let EventBody::OrderItemAdded(i) = &mut v.body {
        i.unit_price_minor = -1;
    }
    assert_eq!(reason(subject, &encode(&v)), Reason::InvalidAmount);

    let mut v = item_added();
    v.event_id = "nope".into();
    assert_eq!(reason(subject, &encode(&v)), Reason::InvalidId);
}
