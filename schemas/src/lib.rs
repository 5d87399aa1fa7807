//! The tillsync wire contract, as a pure codec: no I/O, no async, no NATS client. The one
//! exception is [`now_ms`], the wall clock in the wire's Unix milliseconds.
//!
//! Everything that crosses NATS is defined here: the subject hierarchy (built only by the
//! functions in [`subject`]), the envelopes for events, heartbeats, commands, command acks,
//! ack watermarks, command status and resend requests, their MessagePack encoding ([`codec`]) and their
//! validation with stable, coded reasons ([`error::Reason`]), and which bytes of a command the
//! broker signs ([`signature`]). `docs/protocol.md` is the prose
//! version of this crate for people writing a bridge in another language.

pub mod ack;
pub mod approval;
pub mod codec;
pub mod command;
pub mod command_keys;
pub mod config;
pub mod creds;
pub mod error;
pub mod event;
pub mod heartbeat;
pub mod identity;
pub mod ids;
pub mod partition;
pub mod resend;
pub mod signature;
pub mod status;
pub mod streams;
pub mod subject;
pub mod time;
pub mod transport;

pub use ack::{CommandAck, Outcome, Watermark};
pub use approval::{CommandDecision, Decision};
pub use codec::{decode_command, decode_command_ack, decode_event, decode_heartbeat, encode};
pub use command::{Approval, CommandBody, CommandCancel, CommandEnvelope};
pub use error::{Reason, WireError};
pub use event::{EventBody, EventEnvelope};
pub use heartbeat::Heartbeat;
pub use resend::ResendRequest;
pub use status::{CommandState, CommandStatus};
pub use subject::DeviceAddr;
pub use time::now_ms;

/// The schema version this build writes. Readers accept every version in [`SUPPORTED_SCHEMA_VERSIONS`].
pub const SCHEMA_VERSION: u16 = 1;
/// Schema versions this build can read.
pub const SUPPORTED_SCHEMA_VERSIONS: &[u16] = &[1];
/// Largest encoded message accepted on any tillsync subject, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
