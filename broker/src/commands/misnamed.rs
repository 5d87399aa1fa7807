//! Command consumers no device may use: an `edge_` consumer whose name is not the one its
//! filter subject's device uses ([`streams::is_misnamed_commands_consumer`]), above all those
//! bridges created before names carried the id lengths (`edge_<tenant>_<store>_<device>`, shared
//! by ("a_b", "c") and ("a", "b_c")). Devices are no longer permitted them and upgraded bridges
//! make their new consumer, so they only hold messages nobody reads. The instance leading
//! partition 0 deletes them at start and every [`EVERY`] (bridges of a broker not yet upgraded
//! may still create them during a rolling upgrade).

use std::time::Duration;

use async_nats::jetstream::context::GetStreamError;
use async_nats::jetstream::stream::{ConsumerError, ConsumersError};
use futures::StreamExt as _;
use tillsync_schemas::streams;

use crate::tasks::Job;
use crate::Ctx;

pub const EVERY: Duration = Duration::from_secs(600);

/// Why misnamed consumers were not all removed; the next round tries again.
#[derive(Debug, thiserror::Error)]
pub enum MisnamedError {
    #[error("looking up stream {}", streams::COMMANDS)]
    Stream(#[source] GetStreamError),
    #[error("listing the consumers of stream {}", streams::COMMANDS)]
    Consumers(#[source] ConsumersError),
    #[error("deleting consumer {name}")]
    Delete {
        name: String,
        #[source]
        source: ConsumerError,
    },
}

pub async fn run(ctx: std::sync::Arc<Ctx>, job: Job) {
    job.run(&ctx, || remove(&ctx)).await
}

/// Deletes every misnamed `edge_` consumer of the commands stream.
pub async fn remove(ctx: &Ctx) -> Result<(), MisnamedError> {
    let stream = ctx.js.get_stream_no_info(streams::COMMANDS).await.map_err(MisnamedError::Stream)?;
    let mut consumers = stream.consumers();
    let mut misnamed = Vec::new();
    while let Some(info) = consumers.next().await {
        let info = info.map_err(MisnamedError::Consumers)?;
        let filter = info.config.filter_subject.as_str();
        if streams::is_misnamed_commands_consumer(&info.name, filter) {
            misnamed.push(info.name);
        }
    }
    for name in &misnamed {
        stream.delete_consumer(name).await.map_err(|source| MisnamedError::Delete { name: name.clone(), source })?;
        tracing::warn!(consumer = %name, "Deleted a command consumer no device may use (named before ids carried their lengths).");
    }
    Ok(())
}
