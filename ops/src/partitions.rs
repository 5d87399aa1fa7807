//! The broker's partitioned durable consumers, read as one. Each of its four consumers is split
//! into one durable per partition (`broker-events-p0` .. `broker-events-p15`; docs/architecture.md,
//! "Partitions and ownership"), so whoever asks "how far behind is the broker" sums them:
//! `tillsync status`, the benches' drain detection and the chaos nemesis all come here.

use std::collections::BTreeMap;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures::TryStreamExt as _;
use serde::Serialize;
use tillsync_schemas::streams as names;

/// The broker's consumers: the stream each reads and the base of its partition consumers' names.
pub const CONSUMERS: [(&str, &str); 4] = [
    (names::EVENTS, names::BROKER_EVENTS_CONSUMER),
    (names::HEARTBEATS, names::BROKER_HEARTBEATS_CONSUMER),
    (names::INTAKE, names::BROKER_INTAKE_CONSUMER),
    (names::COMMAND_ACKS, names::BROKER_ACKS_CONSUMER),
];

/// The partition of a consumer named `<base>-p<N>`, else `None`.
pub fn partition_of(name: &str, base: &str) -> Option<u16> {
    name.strip_prefix(base)?.strip_prefix("-p")?.parse().ok()
}

/// Every partition consumer of `base` on `stream`, by partition. One listing request (a page
/// holds 256 consumers), not one info request per partition.
pub async fn consumers(
    js: &jetstream::Context,
    stream: &str,
    base: &str,
) -> anyhow::Result<BTreeMap<u16, consumer::Info>> {
    let s = js.get_stream_no_info(stream).await.with_context(|| format!("stream {stream}"))?;
    let infos: Vec<consumer::Info> =
        s.consumers().try_collect().await.with_context(|| format!("listing the consumers of {stream}"))?;
    Ok(infos.into_iter().filter_map(|i| Some((partition_of(&i.name, base)?, i))).collect())
}

/// Deletes every partition consumer of `base` on `stream`, so the broker that starts next
/// creates them again from the stream's first message. Returns how many it deleted.
pub async fn delete(js: &jetstream::Context, stream: &str, base: &str) -> anyhow::Result<usize> {
    let found = consumers(js, stream, base).await?;
    let s = js.get_stream_no_info(stream).await?;
    for info in found.values() {
        s.delete_consumer(&info.name).await.with_context(|| format!("deleting consumer {}", info.name))?;
    }
    Ok(found.len())
}

/// What a set of consumers holds, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Backlog {
    /// How many consumers were summed.
    pub consumers: usize,
    pub num_pending: u64,
    pub num_ack_pending: u64,
    pub num_redelivered: u64,
    pub num_waiting: u64,
}

impl Backlog {
    pub fn of<'a>(infos: impl IntoIterator<Item = &'a consumer::Info>) -> Backlog {
        infos.into_iter().fold(Backlog::default(), |b, i| Backlog {
            consumers: b.consumers + 1,
            num_pending: b.num_pending + i.num_pending,
            num_ack_pending: b.num_ack_pending + i.num_ack_pending as u64,
            num_redelivered: b.num_redelivered + i.num_redelivered as u64,
            num_waiting: b.num_waiting + i.num_waiting as u64,
        })
    }

    /// Messages not yet settled: undelivered plus delivered and unacked (a partition's lag).
    pub fn lag(&self) -> u64 {
        self.num_pending + self.num_ack_pending
    }
}

/// The events consumers' backlog summed, once each of the `partitions` has its consumer; `None`
/// before (a partition without its consumer yet would hide its messages from the sum).
pub async fn events_backlog(js: &jetstream::Context, partitions: u16) -> anyhow::Result<Option<Backlog>> {
    let found = by_name(js, names::EVENTS, names::BROKER_EVENTS_CONSUMER, partitions).await?;
    Ok((found.len() == usize::from(partitions)).then(|| Backlog::of(found.values())))
}

/// The partition consumers of `base` on `stream` for partitions `0..partitions`, each asked by
/// name at once; a missing one is left out. Unlike a listing, which in a cluster waits up to
/// seconds for a consumer being deleted or recreated (a new owner restarts a taken-over
/// partition's consumer at its ack floor), each answers or is missing at once.
pub async fn by_name(
    js: &jetstream::Context,
    stream: &str,
    base: &str,
    partitions: u16,
) -> anyhow::Result<BTreeMap<u16, consumer::Info>> {
    let s = js.get_stream_no_info(stream).await.with_context(|| format!("stream {stream}"))?;
    let asks = (0..partitions).map(|p| {
        let s = &s;
        async move { (p, s.consumer_info(names::partition_consumer(base, p)).await) }
    });
    Ok(futures::future::join_all(asks).await.into_iter().filter_map(|(p, r)| Some((p, r.ok()?))).collect())
}

/// The partition count the broker recorded in Postgres on its first start; `None` before that.
pub async fn count(pool: &sqlx::PgPool) -> Result<Option<u16>, sqlx::Error> {
    let n: Option<i32> = sqlx::query_scalar("SELECT partitions FROM partition_settings").fetch_optional(pool).await?;
    Ok(n.and_then(|n| u16::try_from(n).ok()))
}

/// Partitions as short ranges: `[0, 1, 2, 3, 8]` is `0-3,8`.
pub fn ranges(partitions: &[u16]) -> String {
    let mut sorted = partitions.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        out.push(if sorted[i] == start { start.to_string() } else { format!("{start}-{}", sorted[i]) });
        i += 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_partition_consumers_of_the_base_count() {
        assert_eq!(partition_of("broker-events-p3", "broker-events"), Some(3));
        assert_eq!(partition_of("broker-events-p15", "broker-events"), Some(15));
        assert_eq!(partition_of("broker-events", "broker-events"), None);
        assert_eq!(partition_of("broker-events-pipeline", "broker-events"), None);
        assert_eq!(partition_of("broker-events-p3", "broker-acks"), None);
    }

    #[test]
    fn ranges_are_compact() {
        assert_eq!(ranges(&[8, 0, 1, 2, 3]), "0-3,8");
        assert_eq!(ranges(&[5]), "5");
        assert_eq!(ranges(&[1, 3, 4, 6]), "1,3-4,6");
        assert_eq!(ranges(&[]), "");
    }
}
