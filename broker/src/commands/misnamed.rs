//! Command consumers no device may use: an `edge_` consumer whose name is not the one its
//! filter subject's device uses ([`streams::is_misnamed_commands_consumer`]), above all those
//! bridges created before names carried the id lengths (`edge_<tenant>_<store>_<device>`, shared
//! by ("a_b", "c") and ("a", "b_c")). Devices are no longer permitted them and upgraded bridges
//! make their new consumer, so they only hold messages nobody reads. The instance leading
//! partition 0 deletes them at start and every [`EVERY`] (bridges of a broker not yet upgraded
//! may still create them during a rolling upgrade).

use std::time::Duration;

use futures::StreamExt as _;
use tillsync_schemas::streams;

use crate::Ctx;

const EVERY: Duration = Duration::from_secs(600);

pub async fn run(ctx: std::sync::Arc<Ctx>) {
    crate::partitions::duty::every(&ctx, EVERY, "Deleting misnamed command consumers", || remove(&ctx)).await
}

/// Deletes every misnamed `edge_` consumer of the commands stream.
pub async fn remove(ctx: &Ctx) -> anyhow::Result<()> {
    let stream = ctx.js.get_stream_no_info(streams::COMMANDS).await?;
    let mut consumers = stream.consumers();
    let mut misnamed = Vec::new();
    while let Some(info) = consumers.next().await {
        let info = info?;
        let filter = info.config.filter_subject.as_str();
        if streams::is_misnamed_commands_consumer(&info.name, filter) {
            misnamed.push(info.name);
        }
    }
    for name in &misnamed {
        stream.delete_consumer(name).await?;
        tracing::warn!(consumer = %name, "Deleted a command consumer no device may use (named before ids carried their lengths).");
    }
    Ok(())
}
