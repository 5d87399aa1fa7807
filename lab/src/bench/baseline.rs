//! The yardstick: a minimal hand-written JetStream -> Postgres pipeline without actors.
//!
//! It pulls batches of up to 500 from its own durable consumer, decodes them, commits each
//! batch in one transaction through the broker's own writer (so the SQL is exactly the same:
//! ledger `INSERT ... SELECT FROM UNNEST ... ON CONFLICT`, read-model upserts, device rows) and
//! acks after the commit. What it leaves out is everything the broker adds around the SQL:
//! actors (fast dedupe, seq tracking, gaps), tenant checks, metrics, watermarks. Strictly one
//! step after another: fetch, commit, ack.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, Message};
use futures::StreamExt;
use sqlx::PgPool;
use tillsync_broker::admin::ingest::writer::{self, Candidate, DeviceUpdate};
use tillsync_schemas::subject::Family;
use tillsync_schemas::{codec, streams as names, DeviceAddr, EventEnvelope};

use super::Measured;

/// A durable consumer of the whole events stream, for one measured pipeline.
pub async fn consumer(js: &jetstream::Context, name: &str) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let stream = js.get_stream(names::EVENTS).await?;
    let _ = stream.delete_consumer(name).await;
    Ok(stream
        .create_consumer(pull::Config {
            durable_name: Some(name.into()),
            filter_subject: Family::Events.all_subjects(),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: Duration::from_secs(120),
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?)
}

/// Commits decoded events in one transaction with the writer's SQL, no actors involved.
pub async fn commit(pool: &PgPool, events: &[(EventEnvelope, u64)]) -> anyhow::Result<()> {
    let hashes: Vec<[u8; 32]> = events.iter().map(|(ev, _)| tillsync_broker::admin::ingest::content_hash(ev)).collect();
    let cands: Vec<Candidate> = events
        .iter()
        .zip(&hashes)
        .map(|((ev, stream_seq), h)| Candidate { ev, hash: *h, stream_seq: Some(*stream_seq) })
        .collect();
    let mut max_seq: HashMap<DeviceAddr, u64> = HashMap::new();
    for (ev, _) in events {
        let m = max_seq.entry(ev.addr()).or_default();
        *m = (*m).max(ev.seq);
    }
    // Without actors there is no seq tracker: the highest seq stands in for the watermark,
    // which costs the same SQL.
    let devices: Vec<DeviceUpdate> = max_seq
        .into_iter()
        .map(|(addr, seq)| DeviceUpdate { addr, max_seq: seq, projected_watermark: seq, gaps: Vec::new() })
        .collect();
    writer::commit(pool, None, &[], &cands, &devices).await?;
    Ok(())
}

pub fn decode(m: &Message) -> anyhow::Result<(EventEnvelope, u64)> {
    let ev = codec::decode_event(&m.subject, &m.payload).map_err(|e| anyhow::anyhow!("bench data invalid: {e}"))?;
    let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
    Ok((ev, seq))
}

/// Drains `total` messages from a fresh consumer in batches of `batch`, committing each batch.
pub async fn run(
    client: &async_nats::Client,
    js: &jetstream::Context,
    database_url: &str,
    total: usize,
    batch: usize,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let pool = tillsync_broker::admin::db::connect(database_url, 4).await?;
    let consumer = consumer(js, "bench-baseline").await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch * 2)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    let linger = Duration::from_millis(5);
    let mut done = 0;
    while done < total {
        let mut msgs = Vec::with_capacity(batch);
        let first = messages.next().await.context("consumer ended")??;
        msgs.push(first);
        let deadline = tokio::time::Instant::now() + linger;
        while msgs.len() < batch && done + msgs.len() < total {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(m)) => msgs.push(m?),
                Ok(None) | Err(_) => break,
            }
        }
        let events = msgs.iter().map(decode).collect::<anyhow::Result<Vec<_>>>()?;
        commit(&pool, &events).await?;
        for m in &msgs {
            m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        }
        done += msgs.len();
    }
    client.flush().await?;
    let seconds = started.elapsed().as_secs_f64();
    pool.close().await;
    Ok(Measured { messages: done, seconds })
}
