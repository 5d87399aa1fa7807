//! Why a round of the configuration downlink failed ([`crate::store_config::sync`]). Each
//! failure ends the round; the next one, after the backoff, reads the last version again and
//! catches up from what SQLite holds. The message carries the cause, said once.

use async_nats::jetstream::consumer::pull::BatchError;
use async_nats::jetstream::context::GetStreamError;
use async_nats::jetstream::stream::{ConsumerError, DirectGetError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigSyncError {
    /// The live subscription to the store's deltas was not made.
    #[error("subscribe {subject}: {source}")]
    Subscribe {
        subject: String,
        #[source]
        source: async_nats::SubscribeError,
    },
    /// The server ended the live subscription.
    #[error("live config deltas ended")]
    LiveEnded,
    /// The connection went down while reading; retried once connected.
    #[error("disconnected")]
    Disconnected,
    #[error("config stream: {0}")]
    Stream(#[source] GetStreamError),
    /// The direct get of the last delta's version.
    #[error("last delta: {0}")]
    LastDelta(#[source] DirectGetError),
    /// The transient consumer that reads the missing deltas was not made.
    #[error("consumer {name}: {source}")]
    Consumer {
        name: String,
        #[source]
        source: ConsumerError,
    },
    #[error("config deltas: {0}")]
    Fetch(#[source] BatchError),
    #[error("config deltas: {0}")]
    Deltas(#[source] async_nats::Error),
    #[error("delta metadata: {0}")]
    Metadata(#[source] async_nats::Error),
    /// Read from the stream, a delta was refused and the snapshot does not reach past it yet.
    #[error("delta at seq {seq} refused and no snapshot past it yet")]
    RefusedDelta { seq: u64 },
    /// Read from the stream, the deltas before `delta` are gone and the snapshot stops short.
    #[error("snapshot at {snapshot} does not reach delta {delta}")]
    SnapshotShort { snapshot: u64, delta: u64 },
    /// Neither the deltas nor the snapshot reached the last version on the stream.
    #[error("caught up to version {reached} of {last}")]
    Behind { reached: u64, last: u64 },
    #[error("config snapshot stream: {0}")]
    SnapshotStream(#[source] GetStreamError),
    #[error("no configuration snapshot yet")]
    NoSnapshot,
    #[error("snapshot: {0}")]
    Snapshot(#[source] DirectGetError),
    /// The store's last snapshot is not one the bridge can use (kept in `refused_config`).
    #[error("snapshot at seq {seq} refused")]
    RefusedSnapshot { seq: u64 },
    /// The cache holds another version than the one this change follows.
    #[error("version {version} does not follow the applied one")]
    NotNext { version: u64 },
    /// The configuration cache was not read or written.
    #[error("SQLite: {0}")]
    Sqlite(#[from] sqlx::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_the_wording_the_log_had() {
        let e = ConfigSyncError::from(sqlx::Error::PoolTimedOut);
        assert_eq!(e.to_string(), format!("SQLite: {}", sqlx::Error::PoolTimedOut));
        let e = ConfigSyncError::SnapshotShort { snapshot: 4, delta: 7 };
        assert_eq!(e.to_string(), "snapshot at 4 does not reach delta 7");
    }
}
