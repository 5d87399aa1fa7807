//! Instance-wide duties (gauges over every store, sweeps, clean-ups) run on the instance that
//! leads partition 0 ([`super::Ownership::leads`]), so exactly one instance does each. This is
//! their one shape: run while leading, then wait the period; look again every second while not.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use crate::Ctx;

/// How often an instance that does not lead looks whether it does now.
const NOT_LEADING: Duration = Duration::from_secs(1);

/// Runs `duty` every `period` while this instance leads, until shutdown; a failure is logged
/// as `what` and retried after the period.
pub async fn every<F, Fut, E>(ctx: &Ctx, period: Duration, what: &str, mut duty: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    loop {
        let wait = if ctx.partitions.leads() {
            if let Err(error) = duty().await {
                tracing::warn!(%error, "{what} failed; retrying in {period:?}.");
            }
            period
        } else {
            NOT_LEADING.min(period)
        };
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
