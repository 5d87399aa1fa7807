//! The naive pipeline: one transaction and one ack per event, same SQL as the writer.
//!
//! This is what "just process each message" costs: every event pays a commit (a WAL flush)
//! and a round of statements of its own. It runs on a sample (at least 5,000 events unless the
//! stream holds fewer), because at a few hundred events per second the whole preload would
//! take minutes and the rate does not depend on the sample size.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt;

use super::{baseline, Measured};

pub async fn run(
    client: &async_nats::Client,
    js: &jetstream::Context,
    database_url: &str,
    sample: usize,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let pool = tillsync_broker::admin::db::connect(database_url, 2).await?;
    let consumer = baseline::consumer(js, "bench-naive").await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(100)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    let mut done = 0;
    while done < sample {
        let m = messages.next().await.context("consumer ended")??;
        let event = baseline::decode(&m)?;
        baseline::commit(&pool, std::slice::from_ref(&event)).await?;
        m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        done += 1;
    }
    client.flush().await?;
    let seconds = started.elapsed().as_secs_f64();
    pool.close().await;
    Ok(Measured { messages: done, seconds })
}
