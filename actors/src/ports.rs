//! What actors need from the outside world, as a trait the broker implements: actors stay free
//! of sqlx and NATS, and tests can run them against the real implementations.

use std::future::Future;
use std::pin::Pin;

use tillsync_schemas::{CommandState, DeviceAddr};

use crate::policy::{CopyState, PendingEntry, Publish};

pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A device's durable dedupe and sequence state, as stored in Postgres.
#[derive(Debug, Clone, Default)]
pub struct DeviceSnapshot {
    pub watermark: u64,
    /// Committed seqs above the watermark.
    pub above: Vec<u64>,
    /// The most recent committed events (id, content hash), newest last.
    pub recent: Vec<(String, [u8; 32])>,
}

pub trait Ports: Send + Sync + 'static {
    /// Loads a device's state when its actor starts or restarts.
    fn load_device(&self, addr: DeviceAddr, recent: usize) -> BoxFut<Result<DeviceSnapshot, String>>;

    /// The device's unfinished commands and whether it is online. The command methods have
    /// defaults so that a port without commands (replay) need not implement them.
    fn load_inbox(&self, _addr: DeviceAddr) -> BoxFut<Result<InboxSnapshot, String>> {
        Box::pin(async { Err(NO_COMMANDS.to_string()) })
    }

    /// Records delivery `attempt` (only if the command is still unfinished, unexpired and at
    /// `attempt - 1`), then publishes it and its status. `Ok(false)`: the row had moved on.
    fn deliver(&self, _addr: DeviceAddr, _d: Delivery) -> BoxFut<Result<bool, String>> {
        Box::pin(async { Err(NO_COMMANDS.to_string()) })
    }

    /// Ends an unfinished command as `failed` or `expired` with `code`, deletes its copies
    /// from the device's stream, then publishes the status.
    fn finish(&self, _addr: DeviceAddr, _f: Finish) -> BoxFut<Result<bool, String>> {
        Box::pin(async { Err(NO_COMMANDS.to_string()) })
    }

    /// What the stream and the device's consumer say about the last copy of a command.
    fn check(&self, _addr: DeviceAddr, _stream_seq: Option<u64>) -> BoxFut<Result<CopyState, String>> {
        Box::pin(async { Err(NO_COMMANDS.to_string()) })
    }

    /// Moves an unfinished command's next check to `next_attempt_at_ms`.
    fn reschedule(
        &self,
        _addr: DeviceAddr,
        _command_id: String,
        _next_attempt_at_ms: i64,
    ) -> BoxFut<Result<(), String>> {
        Box::pin(async { Err(NO_COMMANDS.to_string()) })
    }
}

const NO_COMMANDS: &str = "this port does not handle commands";

/// A device's inbox as stored.
#[derive(Debug, Clone, Default)]
pub struct InboxSnapshot {
    /// Unfinished commands, in issue order.
    pub pending: Vec<PendingEntry>,
    pub online: bool,
}

/// One delivery to record and publish.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub command_id: String,
    pub attempt: u32,
    pub next_attempt_at_ms: i64,
    pub now_ms: i64,
    pub why: Publish,
}

/// A broker-side final transition.
#[derive(Debug, Clone)]
pub struct Finish {
    pub command_id: String,
    pub state: CommandState,
    pub attempts: u32,
    pub code: String,
    pub detail: String,
}
