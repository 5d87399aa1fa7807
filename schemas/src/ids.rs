//! Identifier and value checks shared by every envelope.

use crate::error::{Reason, WireError};

/// Longest tenant, store, device or other identifier, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest free-text field (names, reasons, details), in bytes.
pub const MAX_TEXT_LEN: usize = 512;
/// Largest money amount in minor units (cents): 100 million in major units.
pub const MAX_AMOUNT_MINOR: i64 = 10_000_000_000;

/// Identifiers become subject tokens, so they must be subject-safe: `[A-Za-z0-9][A-Za-z0-9_-]*`,
/// at most [`MAX_ID_LEN`] bytes. A leading `_` is reserved for tokens such as `_store`.
pub fn check_id(field: &str, value: &str) -> Result<(), WireError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(WireError::new(Reason::InvalidId, format!("{field} {value:?} must match [A-Za-z0-9][A-Za-z0-9_-]{{0,63}}")))
    }
}

/// Event and command ids are UUIDs (v7 for events, any version for commands) or ULIDs.
pub fn check_uuid_or_ulid(field: &str, value: &str) -> Result<(), WireError> {
    if is_uuid(value) || is_ulid(value) {
        Ok(())
    } else {
        Err(WireError::new(Reason::InvalidId, format!("{field} {value:?} is neither a hyphenated UUID nor a ULID")))
    }
}

fn is_uuid(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_ulid(v: &str) -> bool {
    const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    v.len() == 26 && v.as_bytes()[0] <= b'7' && v.bytes().all(|c| CROCKFORD.contains(&c.to_ascii_uppercase()))
}

pub fn check_text(field: &str, value: &str, required: bool) -> Result<(), WireError> {
    if required && value.trim().is_empty() {
        return Err(WireError::new(Reason::InvalidField, format!("{field} is required")));
    }
    if value.len() > MAX_TEXT_LEN {
        return Err(WireError::new(
            Reason::InvalidField,
            format!("{field} is {} bytes, more than {MAX_TEXT_LEN}", value.len()),
        ));
    }
    Ok(())
}

/// Amounts are positive integers in minor units, at most [`MAX_AMOUNT_MINOR`].
pub fn check_amount(field: &str, value: i64) -> Result<(), WireError> {
    if value > 0 && value <= MAX_AMOUNT_MINOR {
        Ok(())
    } else {
        Err(WireError::new(
            Reason::InvalidAmount,
            format!("{field} {value} must be in 1..={MAX_AMOUNT_MINOR} minor units"),
        ))
    }
}

/// ISO 4217 style: three upper-case ASCII letters.
pub fn check_currency(value: &str) -> Result<(), WireError> {
    if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(WireError::new(Reason::InvalidAmount, format!("currency {value:?} must be 3 upper-case letters")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("d", "till-1_A").is_ok());
        for bad in ["", "_store", "a.b", "a*", "a>", "a b", &"x".repeat(65)] {
            assert_eq!(check_id("d", bad).unwrap_err().reason, Reason::InvalidId, "{bad}");
        }
    }

    #[test]
    fn event_ids() {
        assert!(check_uuid_or_ulid("e", "01890a5d-ac96-774b-bcce-b302099a8057").is_ok());
        assert!(check_uuid_or_ulid("e", "01ARZ3NDEKTSV4RRFFQ69G5FAV").is_ok());
        assert!(check_uuid_or_ulid("e", "not-an-id").is_err());
        assert!(check_uuid_or_ulid("e", "81ARZ3NDEKTSV4RRFFQ69G5FAV").is_err());
    }

    #[test]
    fn amounts() {
        assert!(check_amount("a", 1).is_ok());
        assert!(check_amount("a", 0).is_err());
        assert!(check_amount("a", -5).is_err());
        assert!(check_amount("a", MAX_AMOUNT_MINOR + 1).is_err());
        assert!(check_currency("EUR").is_ok());
        assert!(check_currency("eur").is_err());
    }
}
