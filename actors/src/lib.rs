//! tillsync's actors: a root supervisor, one store actor per store, one device actor per device.
//!
//! The decisions (duplicate? conflict? stale? gap?) are pure functions in [`decide`],
//! [`recent`] and [`seqs`]; the actors hold the per-device state those functions need and are
//! rebuilt from Postgres (through [`ports::Ports`]) after a restart or a passivation. The
//! broker does the I/O: it commits what the actors decided, and tells them only when a commit
//! failed (they hold what they decided as committed).

pub mod decide;
pub mod device;
pub mod inbox;
pub mod policy;
pub mod ports;
pub mod recent;
pub mod root;
pub mod seqs;
pub mod stats;
pub mod store;
pub mod system;

pub use decide::{Decision, DeviceVerdicts, DupLayer, Incoming};
pub use device::DeviceMsg;
pub use ports::{DeviceSnapshot, PortError, Ports};
pub use system::{ActorConfig, ActorSystem};

#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error("actor system did not start: {0}")]
    Start(String),
    #[error("device actor {0} unavailable: {1}")]
    Unavailable(String, String),
    #[error("device actor {0} did not answer in time")]
    Timeout(String),
}
