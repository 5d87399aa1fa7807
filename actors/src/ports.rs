//! What actors need from the outside world, as a trait the broker implements: actors stay free
//! of sqlx and NATS, and tests can run them against the real implementations.

use std::future::Future;
use std::pin::Pin;

use tillsync_schemas::DeviceAddr;

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
}
