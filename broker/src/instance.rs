//! Reports this broker instance to Postgres every few seconds, for `tillsync status`, and
//! refreshes gauges that are read rather than counted (consumer lag).

use std::sync::Arc;
use std::time::Duration;

use tillsync_schemas::streams as names;

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
        export_consumer_lag(&ctx).await;
    }
    let _ =
        sqlx::query("DELETE FROM broker_instances WHERE instance_id = $1").bind(&instance_id).execute(&ctx.pool).await;
}

async fn export_consumer_lag(ctx: &Ctx) {
    for (stream, consumer) in [
        (names::EVENTS, names::BROKER_EVENTS_CONSUMER),
        (names::HEARTBEATS, names::BROKER_HEARTBEATS_CONSUMER),
        (names::INTAKE, names::BROKER_INTAKE_CONSUMER),
        (names::COMMAND_ACKS, names::BROKER_ACKS_CONSUMER),
    ] {
        let Ok(s) = ctx.js.get_stream(stream).await else { continue };
        let Ok(mut c) = s.get_consumer::<async_nats::jetstream::consumer::pull::Config>(consumer).await else {
            continue;
        };
        if let Ok(info) = c.info().await {
            crate::metrics::consumer_info(consumer, info.num_pending, info.num_ack_pending, info.num_redelivered);
        }
    }
}
