//! Reading the events stream for a replay: an ordered consumer (ephemeral, no acks, nothing
//! left on the server), filtered to a tenant, store or device, from a sequence or a time,
//! taken in batches up to the end the stream had when the replay started.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::DeliverPolicy;
use futures::StreamExt;
use tillsync_broker::admin::ingest::Raw;
use tillsync_schemas::subject::{self, Family};
use tillsync_schemas::{streams as names, DeviceAddr};

/// Which part of the stream to replay.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub tenant: Option<String>,
    pub store: Option<String>,
    pub device: Option<String>,
}

impl Filter {
    /// The subject filter; the store needs its tenant and the device its store.
    pub fn subject(&self) -> anyhow::Result<String> {
        Ok(match (&self.tenant, &self.store, &self.device) {
            (None, None, None) => Family::Events.all_subjects(),
            (Some(t), None, None) => Family::Events.tenant_subjects(t),
            (Some(t), Some(s), None) => Family::Events.store_subjects(t, s),
            (Some(t), Some(s), Some(d)) => {
                let addr = DeviceAddr::new(t, s, d);
                addr.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
                subject::events(&addr)
            }
            _ => anyhow::bail!("--store needs --tenant, and --device needs --tenant and --store"),
        })
    }
}

/// Where to start.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    All,
    Seq(u64),
    /// Unix milliseconds.
    Time(i64),
}

/// Parses `--from-time`: RFC 3339, or Unix milliseconds.
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .with_context(|| format!("--from-time {s:?} is neither RFC 3339 nor Unix milliseconds"))
}

fn deliver_policy(start: Start) -> anyhow::Result<DeliverPolicy> {
    Ok(match start {
        Start::All | Start::Seq(0) => DeliverPolicy::All,
        Start::Seq(n) => DeliverPolicy::ByStartSequence { start_sequence: n },
        Start::Time(ms) => DeliverPolicy::ByStartTime {
            start_time: async_nats::datetime::from_nanos(ms as i128 * 1_000_000)
                .map_err(|e| anyhow::anyhow!("--from-time: {e}"))?,
        },
    })
}

/// An open replay source.
pub struct Source {
    messages: Option<Ordered>,
    /// Messages matching the filter from the start position, when the replay began.
    pub total: u64,
    /// The stream's last sequence when the replay began: the replay stops there.
    pub end_seq: u64,
    done: bool,
}

/// Longest wait for the next message before the source gives up on a stalled server.
const NEXT_TIMEOUT: Duration = Duration::from_secs(30);

impl Source {
    pub async fn open(
        js: &async_nats::jetstream::Context,
        filter_subject: &str,
        start: Start,
    ) -> anyhow::Result<Source> {
        let mut stream =
            js.get_stream(names::EVENTS).await.context("the events stream does not exist (is a broker running?)")?;
        let end_seq = stream.info().await?.state.last_sequence;
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: filter_subject.to_string(),
                deliver_policy: deliver_policy(start)?,
                ..Default::default()
            })
            .await
            .context("creating the ordered consumer")?;
        let total = consumer.cached_info().num_pending;
        let done = total == 0 || matches!(start, Start::Seq(n) if n > end_seq);
        let messages = if done { None } else { Some(consumer.messages().await.context("reading the events stream")?) };
        Ok(Source { messages, total, end_seq, done })
    }

    /// The next batch of at most `max` messages in stream order; empty once the end is reached.
    pub async fn next_batch(&mut self, max: usize) -> anyhow::Result<Vec<Raw>> {
        let mut batch = Vec::new();
        let Some(messages) = self.messages.as_mut() else { return Ok(batch) };
        while !self.done && batch.len() < max {
            // The first message may take a pull round trip; the rest of a batch is buffered.
            let wait = if batch.is_empty() { NEXT_TIMEOUT } else { Duration::from_millis(200) };
            let next = match tokio::time::timeout(wait, messages.next()).await {
                Ok(Some(m)) => m.map_err(|e| anyhow::anyhow!("reading the events stream: {e}"))?,
                Ok(None) => anyhow::bail!("the events stream ended unexpectedly"),
                Err(_) if batch.is_empty() => anyhow::bail!("no message from JetStream in {NEXT_TIMEOUT:?}"),
                Err(_) => break,
            };
            let info = next.info().map_err(|e| anyhow::anyhow!("message without JetStream metadata: {e}"))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if seq > self.end_seq {
                self.done = true;
                break;
            }
            batch.push(Raw { stream_seq: seq, subject: next.subject.to_string(), payload: next.payload.clone() });
            self.done = pending == 0 || seq >= self.end_seq;
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build_subjects() {
        let f = |t: Option<&str>, s: Option<&str>, d: Option<&str>| {
            Filter { tenant: t.map(Into::into), store: s.map(Into::into), device: d.map(Into::into) }.subject()
        };
        assert_eq!(f(None, None, None).unwrap(), "tillsync.ev.>");
        assert_eq!(f(Some("a"), None, None).unwrap(), "tillsync.ev.a.>");
        assert_eq!(f(Some("a"), Some("s"), None).unwrap(), "tillsync.ev.a.s.>");
        assert_eq!(f(Some("a"), Some("s"), Some("d")).unwrap(), "tillsync.ev.a.s.d");
        assert!(f(None, Some("s"), None).is_err());
        assert!(f(Some("a"), None, Some("d")).is_err());
    }

    #[test]
    fn times_parse_as_rfc3339_or_ms() {
        assert_eq!(parse_time("1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000);
        assert!(parse_time("yesterday").is_err());
    }
}
