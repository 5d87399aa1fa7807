//! MessagePack encoding with named fields, and decoding that classifies every failure.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ack::CommandAck;
use crate::command::{CommandEnvelope, COMMAND_KINDS};
use crate::error::{Reason, WireError};
use crate::event::{EventEnvelope, EVENT_KINDS};
use crate::heartbeat::Heartbeat;
use crate::subject::{self, Family};
use crate::{MAX_MESSAGE_BYTES, SUPPORTED_SCHEMA_VERSIONS};

/// Encodes any wire type as a MessagePack map with named fields.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs of strings and numbers into a Vec cannot fail.
    rmp_serde::to_vec_named(value).expect("wire types always encode")
}

/// The fields read first so that a failed decode can say why it failed.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    schema_version: Option<u16>,
    #[serde(default)]
    body: Option<ProbeBody>,
}

#[derive(Deserialize)]
struct ProbeBody {
    kind: String,
}

fn check_size(bytes: &[u8]) -> Result<(), WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::new(Reason::Oversize, format!("{} bytes, more than {MAX_MESSAGE_BYTES}", bytes.len())));
    }
    Ok(())
}

/// Decodes a kinded envelope; on failure says whether the version, the kind or the bytes were wrong.
fn decode_kinded<T: DeserializeOwned>(bytes: &[u8], kinds: &[&str]) -> Result<T, WireError> {
    check_size(bytes)?;
    match rmp_serde::from_slice::<T>(bytes) {
        Ok(v) => Ok(v),
        Err(err) => {
            let undecodable = || WireError::new(Reason::Undecodable, err.to_string());
            let probe: Probe = rmp_serde::from_slice(bytes).map_err(|_| undecodable())?;
            if let Some(v) = probe.schema_version.filter(|v| !SUPPORTED_SCHEMA_VERSIONS.contains(v)) {
                return Err(WireError::new(Reason::UnsupportedVersion, format!("schema_version {v}")));
            }
            match probe.body {
                Some(b) if !kinds.contains(&b.kind.as_str()) => {
                    Err(WireError::new(Reason::UnknownKind, format!("kind {:?}", b.kind)))
                }
                _ => Err(undecodable()),
            }
        }
    }
}

pub(crate) fn decode_plain<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    check_size(bytes)?;
    rmp_serde::from_slice(bytes).map_err(|e| WireError::new(Reason::Undecodable, e.to_string()))
}

/// Decodes, validates and checks an event against the subject it arrived on.
pub fn decode_event(subject: &str, bytes: &[u8]) -> Result<EventEnvelope, WireError> {
    subject::parse(subject)?;
    let ev: EventEnvelope = decode_kinded(bytes, EVENT_KINDS)?;
    ev.validate()?;
    subject::check_matches(subject, Family::Events, &ev.addr())?;
    Ok(ev)
}

/// Decodes and validates a command from the intake subject it arrived on.
pub fn decode_command(subject: &str, bytes: &[u8]) -> Result<CommandEnvelope, WireError> {
    let parsed = subject::parse(subject)?;
    let cmd: CommandEnvelope = decode_kinded(bytes, COMMAND_KINDS)?;
    cmd.validate()?;
    let device_token = cmd.device_id.as_deref().unwrap_or(subject::STORE_WIDE);
    let expected = matches!(parsed.family, Family::Intake | Family::Commands);
    if !expected || parsed.tenant_id != cmd.tenant_id || parsed.store_id != cmd.store_id || parsed.last != device_token
    {
        return Err(WireError::new(
            Reason::SubjectMismatch,
            format!("subject {subject:?} does not name {}/{}/{device_token}", cmd.tenant_id, cmd.store_id),
        ));
    }
    Ok(cmd)
}

pub fn decode_command_ack(subject: &str, bytes: &[u8]) -> Result<CommandAck, WireError> {
    subject::parse(subject)?;
    let ack: CommandAck = decode_plain(bytes)?;
    ack.validate()?;
    subject::check_matches(subject, Family::CommandAcks, &ack.addr())?;
    Ok(ack)
}

pub fn decode_heartbeat(subject: &str, bytes: &[u8]) -> Result<Heartbeat, WireError> {
    subject::parse(subject)?;
    let hb: Heartbeat = decode_plain(bytes)?;
    hb.validate()?;
    subject::check_matches(subject, Family::Heartbeats, &hb.addr())?;
    Ok(hb)
}

/// Decodes a message the broker itself wrote (status, watermark); no subject check.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    decode_plain(bytes)
}
