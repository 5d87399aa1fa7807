//! Reports this broker instance to Postgres every few seconds, for `tillsync status`. Gauges
//! read rather than counted (consumer lag, streams) are the monitor's ([`crate::monitor`]).

use std::sync::Arc;
use std::time::Duration;

use crate::Ctx;

pub async fn run(ctx: Arc<Ctx>, instance_id: String) {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string();
    let started = crate::ts(crate::now_ms());
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let resident = ctx.actors.resident() as i64;
        let r = sqlx::query(
            "INSERT INTO broker_instances (instance_id, host, started_at, last_seen, resident_actors)
             VALUES ($1, $2, $3, now(), $4)
             ON CONFLICT (instance_id) DO UPDATE SET last_seen = now(), resident_actors = $4",
        )
        .bind(&instance_id)
        .bind(&host)
        .bind(started)
        .bind(resident)
        .execute(&ctx.pool)
        .await;
        if let Err(error) = r {
            tracing::warn!(%error, "Could not report broker instance.");
        }
        crate::ingest::export_actor_stats(&ctx);
    }
    let _ =
        sqlx::query("DELETE FROM broker_instances WHERE instance_id = $1").bind(&instance_id).execute(&ctx.pool).await;
}
