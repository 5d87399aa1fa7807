//! The lease bucket: a JetStream key-value bucket (`tillsync_partitions`) with one key per
//! partition (`owner.<p>`, value: the holder's instance id) and one per instance
//! (`member.<id>`). Keys are taken and renewed with compare-and-set on their revision, so two
//! instances never both think they took the same lease; a lease is expired when its key has
//! not changed for the TTL, as measured by each observer's own clock (no clock is compared
//! with another host's).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{CreateKeyValueError, GetStreamError, UpdateStreamError};
use async_nats::jetstream::kv::{self, Operation, Store};
use async_nats::jetstream::stream::InfoError;
use async_nats::jetstream::Context;
use tillsync_schemas::streams::PARTITIONS_BUCKET;

use super::assign::{Lease, View};

pub fn owner_key(p: u16) -> String {
    format!("owner.{p}")
}

/// The member key of an instance; characters a key may not hold become `_`.
pub fn member_key(instance: &str) -> String {
    let clean: String = instance
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=') { c } else { '_' })
        .collect();
    format!("member.{clean}")
}

/// Why the lease bucket is not usable; the partition loop retries.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("creating lease bucket {PARTITIONS_BUCKET}")]
    Create(#[source] CreateKeyValueError),
    #[error("lease bucket {PARTITIONS_BUCKET}: deny_purge: looking up its stream")]
    Stream(#[source] GetStreamError),
    #[error("lease bucket {PARTITIONS_BUCKET}: deny_purge: reading its stream's configuration")]
    Info(#[source] InfoError),
    #[error("lease bucket {PARTITIONS_BUCKET}: deny_purge: updating its stream")]
    Update(#[source] UpdateStreamError),
}

/// A lease not taken or given back: someone wrote the key first, or JetStream did not answer.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("taking {key}")]
    Create {
        key: String,
        #[source]
        source: kv::CreateError,
    },
    #[error("taking {key}")]
    Update {
        key: String,
        #[source]
        source: kv::UpdateError,
    },
    #[error("giving up {key}")]
    GiveUp {
        key: String,
        #[source]
        source: kv::DeleteError,
    },
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// The bucket, created on first use. Keys nobody renews (instances long gone) age out.
pub async fn bucket(js: &Context, replicas: usize, ttl: Duration) -> Result<Store, BucketError> {
    let kv = match js.get_key_value(PARTITIONS_BUCKET).await {
        Ok(kv) => kv,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: PARTITIONS_BUCKET.to_string(),
                description: "tillsync partition leases and broker instances".into(),
                history: 1,
                max_age: (ttl * 120).max(Duration::from_secs(600)),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(BucketError::Create)?,
    };
    deny_purge(js).await?;
    Ok(kv)
}

/// The bucket's stream refuses API purges (the key-value client has no such option): a purge,
/// even one a client provokes by pointing a direct get's answer at
/// `$JS.API.STREAM.PURGE.KV_tillsync_partitions`, would leave every partition unowned at once.
/// JetStream only denies purges on a stream without roll-ups; leases use put, create, update
/// and delete, never the key-value purge (a roll-up), so the bucket gives roll-ups up.
async fn deny_purge(js: &Context) -> Result<(), BucketError> {
    let name = format!("KV_{PARTITIONS_BUCKET}");
    let mut stream = js.get_stream(&name).await.map_err(BucketError::Stream)?;
    let mut config = stream.info().await.map_err(BucketError::Info)?.config.clone();
    if !config.deny_purge || config.allow_rollup {
        config.allow_rollup = false;
        config.deny_purge = true;
        js.update_stream(config).await.map_err(BucketError::Update)?;
    }
    Ok(())
}

/// One key as last observed: its revision, its value (`None`: deleted) and when this instance
/// saw that revision first.
#[derive(Debug, Clone)]
pub struct Seen {
    pub revision: u64,
    pub value: Option<String>,
    pub at: Instant,
}

/// Everything this instance has observed of the bucket.
#[derive(Debug)]
pub struct Observed {
    keys: HashMap<String, Seen>,
    /// When observing began: a key never seen counts as free since then.
    since: Instant,
}

impl Observed {
    pub fn new() -> Observed {
        Observed { keys: HashMap::new(), since: Instant::now() }
    }

    /// Records a watched entry, unless a newer revision of the key is already known (this
    /// instance's own writes are recorded as they succeed, before the watch echoes them).
    pub fn apply(&mut self, e: &kv::Entry) {
        let value = match e.operation {
            Operation::Put => Some(String::from_utf8_lossy(&e.value).into_owned()),
            Operation::Delete | Operation::Purge => None,
        };
        self.set(&e.key, e.revision, value);
    }

    pub fn set(&mut self, key: &str, revision: u64, value: Option<String>) {
        if self.keys.get(key).is_some_and(|s| s.revision >= revision) {
            return;
        }
        self.keys.insert(key.to_string(), Seen { revision, value, at: Instant::now() });
    }

    pub fn get(&self, key: &str) -> Option<&Seen> {
        self.keys.get(key)
    }

    /// The live members and each partition's lease, as of `now`.
    pub fn view(&self, partitions: u16, ttl: Duration, now: Instant) -> View {
        let live = self
            .keys
            .iter()
            .filter(|(k, s)| k.starts_with("member.") && now.duration_since(s.at) < ttl)
            .filter_map(|(_, s)| s.value.clone())
            .collect();
        let leases = (0..partitions)
            .map(|p| match self.keys.get(&owner_key(p)) {
                Some(Seen { value: Some(holder), at, .. }) if now.duration_since(*at) < ttl => {
                    Lease::Held(holder.clone())
                }
                Some(Seen { value: Some(_), at, .. }) => Lease::Free(now.duration_since(*at) - ttl),
                Some(Seen { value: None, at, .. }) => Lease::Free(now.duration_since(*at)),
                None => Lease::Free(now.duration_since(self.since)),
            })
            .collect();
        View { live, leases }
    }
}

impl Default for Observed {
    fn default() -> Self {
        Observed::new()
    }
}

/// Takes `owner.<p>` for `me`: creates it when absent or deleted, else replaces the revision
/// this instance saw (an expired lease). Returns the new revision; fails if anyone wrote first.
pub async fn take(kv: &Store, p: u16, me: &str, seen: Option<&Seen>) -> Result<u64, LeaseError> {
    let key = owner_key(p);
    let value = me.to_string().into_bytes().into();
    match seen {
        Some(Seen { value: Some(_), revision, .. }) => {
            kv.update(&key, value, *revision).await.map_err(|source| LeaseError::Update { key, source })
        }
        _ => kv.create(&key, value).await.map_err(|source| LeaseError::Create { key, source }),
    }
}

/// Renews a held lease at `revision`; fails when someone else took it.
pub async fn renew(kv: &Store, p: u16, me: &str, revision: u64) -> Result<u64, kv::UpdateError> {
    kv.update(owner_key(p), me.to_string().into_bytes().into(), revision).await
}

/// Lets go of a held lease, unless someone else took it meanwhile.
pub async fn give_up(kv: &Store, p: u16, revision: u64) -> Result<(), LeaseError> {
    let key = owner_key(p);
    kv.delete_expect_revision(&key, Some(revision)).await.map_err(|source| LeaseError::GiveUp { key, source })
}
