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
    fn load_device(&self, addr: DeviceAddr, recent: usize) -> BoxFut<Result<DeviceSnapshot, PortError>>;

    /// The device's unfinished commands and whether it is online. The command methods have
    /// defaults so that a port without commands (replay) need not implement them.
    fn load_inbox(&self, _addr: DeviceAddr) -> BoxFut<Result<InboxSnapshot, PortError>> {
        Box::pin(async { Err(PortError::NoCommands) })
    }

    /// Records delivery `attempt` (only if the command is still unfinished, unexpired and at
    /// `attempt - 1`), then publishes it and its status. `Ok(false)`: the row had moved on.
    fn deliver(&self, _addr: DeviceAddr, _d: Delivery) -> BoxFut<Result<bool, PortError>> {
        Box::pin(async { Err(PortError::NoCommands) })
    }

    /// Ends an unfinished command as `failed` or `expired` with `code`, deletes its copies
    /// from the device's stream, then publishes the status.
    fn finish(&self, _addr: DeviceAddr, _f: Finish) -> BoxFut<Result<bool, PortError>> {
        Box::pin(async { Err(PortError::NoCommands) })
    }

    /// What the stream and the device's consumer say about the last copy of a command.
    fn check(&self, _addr: DeviceAddr, _stream_seq: Option<u64>) -> BoxFut<Result<CopyState, PortError>> {
        Box::pin(async { Err(PortError::NoCommands) })
    }

    /// Moves an unfinished command's next check to `next_attempt_at_ms`.
    fn reschedule(
        &self,
        _addr: DeviceAddr,
        _command_id: String,
        _next_attempt_at_ms: i64,
    ) -> BoxFut<Result<(), PortError>> {
        Box::pin(async { Err(PortError::NoCommands) })
    }
}

/// Why a port did not do what an actor asked. The actors never act on the cause (they answer
/// it to the caller or fail and reload), so it is the implementation's own error, boxed: the
/// actors stay free of sqlx and NATS.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// A port without commands (replay) was asked about one.
    #[error("this port does not handle commands")]
    NoCommands,
    /// The implementation failed; `what` says at what (`loading the inbox`, ...).
    #[error("{what}")]
    Failed {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl PortError {
    /// The error of `what`, for `map_err`.
    pub fn failed<E>(what: &'static str) -> impl FnOnce(E) -> PortError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        move |e| PortError::Failed { what, source: Box::new(e) }
    }

    /// The message and its causes on one line, for where the error becomes text (an actor's
    /// failure, which the supervisor logs); a cause already quoted by the line is left out.
    pub fn line(&self) -> String {
        let mut line = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let text = c.to_string();
            if !line.contains(&text) {
                line = format!("{line}: {text}");
            }
            cause = c.source();
        }
        line
    }
}

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
