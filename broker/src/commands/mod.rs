//! Commands down: intake, approval policy, per-device inbox, delivery, acks, expiry, feedback.

use std::sync::Arc;

use crate::Ctx;

/// Consumes the intake and ack streams until shutdown.
pub async fn run(ctx: Arc<Ctx>) {
    ctx.cancel.cancelled().await;
}
