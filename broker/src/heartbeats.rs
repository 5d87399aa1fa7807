//! Heartbeats: update the device row (software version, outbox depth, ...) and mark devices
//! offline after a configurable silence.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use tillsync_schemas::{codec, streams as names, Heartbeat, Reason, WireError};

use crate::{metrics, ts, Ctx};

pub async fn run(ctx: Arc<Ctx>) {
    let sweeper = tokio::spawn(sweep_offline(ctx.clone()));
    let ctx = &ctx;
    crate::consumer::each_message(
        ctx,
        names::HEARTBEATS,
        names::BROKER_HEARTBEATS_CONSUMER,
        ctx.config.message_lanes,
        move |msg| async move {
            let refused = match codec::decode_heartbeat(&msg.subject, &msg.payload) {
                Ok(hb) => match ctx.tenants.exists(&ctx.pool, &hb.tenant_id).await {
                    Ok(true) => apply(ctx, &hb).await.map(|_| None),
                    Ok(false) => Ok(Some(WireError::new(Reason::UnknownTenant, format!("tenant {:?}", hb.tenant_id)))),
                    Err(e) => Err(e),
                },
                Err(e) => Ok(Some(e)),
            };
            let ack = match refused {
                Ok(None) => {
                    metrics::heartbeat();
                    msg.ack().await
                }
                Ok(Some(e)) => match crate::consumer::quarantine(ctx, names::HEARTBEATS, &msg, &e).await {
                    Ok(()) => msg.ack_with(AckKind::Term).await,
                    Err(error) => nak(&msg, &error).await,
                },
                Err(error) => nak(&msg, &error).await,
            };
            if let Err(error) = ack {
                tracing::debug!(%error, "Heartbeat ack failed; it is redelivered and applied again, harmlessly.");
            }
        },
    )
    .await;
    sweeper.abort();
}

async fn nak(msg: &async_nats::jetstream::Message, error: &sqlx::Error) -> Result<(), async_nats::Error> {
    tracing::warn!(%error, "Heartbeat not recorded; redelivering.");
    msg.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))).await
}

async fn apply(ctx: &Ctx, hb: &Heartbeat) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO devices (tenant_id, store_id, device_id, first_seen, last_seen, software_version, outbox_depth,
                              oldest_unsent_age_s, last_acked_seq, config_revision, uptime_s, last_heartbeat, online)
         VALUES ($1, $2, $3, now(), now(), $4, $5, $6, $7, $8, $9, $10, true)
         ON CONFLICT (tenant_id, store_id, device_id) DO UPDATE SET
           last_seen = now(), software_version = $4, outbox_depth = $5, oldest_unsent_age_s = $6,
           last_acked_seq = $7, config_revision = $8, uptime_s = $9, last_heartbeat = $10, online = true",
    )
    .bind(&hb.tenant_id)
    .bind(&hb.store_id)
    .bind(&hb.device_id)
    .bind(&hb.software_version)
    .bind(hb.outbox_depth as i64)
    .bind(hb.oldest_unsent_age_s as i64)
    .bind(hb.last_acked_seq as i64)
    .bind(hb.config_revision as i64)
    .bind(hb.uptime_s as i64)
    .bind(ts(hb.at_ms))
    .execute(&ctx.pool)
    .await?;
    Ok(())
}

/// Marks silent devices offline and exports online/offline counts by tenant.
async fn sweep_offline(ctx: Arc<Ctx>) {
    let silence = ctx.config.offline_after_s as f64;
    let mut tick = tokio::time::interval(Duration::from_secs((ctx.config.offline_after_s / 3).clamp(1, 30)));
    loop {
        tick.tick().await;
        let marked = sqlx::query(
            "UPDATE devices SET online = false WHERE online AND last_seen < now() - make_interval(secs => $1)",
        )
        .bind(silence)
        .execute(&ctx.pool)
        .await;
        if let Err(error) = marked {
            tracing::warn!(%error, "Offline sweep failed.");
            continue;
        }
        let counts: Result<Vec<(String, i64, i64)>, _> = sqlx::query_as(
            "SELECT tenant_id, count(*) FILTER (WHERE online), count(*) FILTER (WHERE NOT online) FROM devices GROUP BY tenant_id",
        )
        .fetch_all(&ctx.pool)
        .await;
        for (tenant, on, off) in counts.unwrap_or_default() {
            metrics::devices_by_state(&tenant, on, off);
        }
    }
}
