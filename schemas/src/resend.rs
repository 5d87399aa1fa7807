//! Resend requests down: the broker asks a device to publish a seq range again, because the
//! range is missing in the cloud (an open gap, or seqs the device reports beyond a watermark
//! that stopped moving). Core NATS, not JetStream: a request lost while the device is offline
//! is simply asked again later.

use serde::{Deserialize, Serialize};

use crate::codec::decode_plain;
use crate::error::{Reason, WireError};
use crate::subject::{self, DeviceAddr, Family};

/// `tillsync.rs.<tenant>.<store>.<device>`: "publish seqs `from_seq..=to_seq` again".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResendRequest {
    pub schema_version: u16,
    pub tenant_id: String,
    pub store_id: String,
    pub device_id: String,
    pub from_seq: u64,
    pub to_seq: u64,
}

impl ResendRequest {
    pub fn addr(&self) -> DeviceAddr {
        DeviceAddr::new(&self.tenant_id, &self.store_id, &self.device_id)
    }

    pub fn validate(&self) -> Result<(), WireError> {
        self.addr().validate()?;
        if self.from_seq == 0 || self.to_seq < self.from_seq {
            return Err(WireError::new(
                Reason::InvalidField,
                format!("seq range {}..={} is empty or starts at 0", self.from_seq, self.to_seq),
            ));
        }
        Ok(())
    }

    /// Decodes, validates and checks a request against the subject it arrived on.
    pub fn decode(subject: &str, bytes: &[u8]) -> Result<ResendRequest, WireError> {
        subject::parse(subject)?;
        let req: ResendRequest = decode_plain(bytes)?;
        req.validate()?;
        subject::check_matches(subject, Family::Resend, &req.addr())?;
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;

    fn req(from: u64, to: u64) -> ResendRequest {
        ResendRequest {
            schema_version: crate::SCHEMA_VERSION,
            tenant_id: "acme".into(),
            store_id: "s1".into(),
            device_id: "till-1".into(),
            from_seq: from,
            to_seq: to,
        }
    }

    #[test]
    fn round_trips_and_checks_range_and_subject() {
        let r = req(4, 9);
        let subject = subject::resend_requests(&r.addr());
        assert_eq!(ResendRequest::decode(&subject, &encode(&r)).unwrap(), r);
        for bad in [req(0, 3), req(5, 4)] {
            assert_eq!(ResendRequest::decode(&subject, &encode(&bad)).unwrap_err().reason, Reason::InvalidField);
        }
        let other = subject::resend_requests(&DeviceAddr::new("acme", "s1", "till-2"));
        assert_eq!(ResendRequest::decode(&other, &encode(&r)).unwrap_err().reason, Reason::SubjectMismatch);
    }
}
