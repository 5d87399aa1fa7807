//! The actors' view of Postgres.

use sqlx::PgPool;
use tillsync_actors::ports::{BoxFut, DeviceSnapshot, Ports};
use tillsync_schemas::DeviceAddr;

pub struct PgPorts {
    pool: PgPool,
}

impl PgPorts {
    pub fn new(pool: PgPool) -> Self {
        PgPorts { pool }
    }
}

impl Ports for PgPorts {
    fn load_device(&self, addr: DeviceAddr, recent: usize) -> BoxFut<Result<DeviceSnapshot, String>> {
        let pool = self.pool.clone();
        Box::pin(async move { load_device(&pool, &addr, recent).await.map_err(|e| e.to_string()) })
    }
}

pub async fn load_device(pool: &PgPool, a: &DeviceAddr, recent: usize) -> Result<DeviceSnapshot, sqlx::Error> {
    let watermark: i64 =
        sqlx::query_scalar("SELECT watermark FROM devices WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3")
            .bind(&a.tenant_id)
            .bind(&a.store_id)
            .bind(&a.device_id)
            .fetch_optional(pool)
            .await?
            .unwrap_or(0);
    let above: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM processed_events WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3 AND seq > $4",
    )
    .bind(&a.tenant_id)
    .bind(&a.store_id)
    .bind(&a.device_id)
    .bind(watermark)
    .fetch_all(pool)
    .await?;
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT event_id, content_hash FROM processed_events
         WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3 ORDER BY seq DESC LIMIT $4",
    )
    .bind(&a.tenant_id)
    .bind(&a.store_id)
    .bind(&a.device_id)
    .bind(recent as i64)
    .fetch_all(pool)
    .await?;
    let recent =
        rows.into_iter().rev().filter_map(|(id, h)| Some((id, <[u8; 32]>::try_from(h.as_slice()).ok()?))).collect();
    Ok(DeviceSnapshot { watermark: watermark as u64, above: above.into_iter().map(|s| s as u64).collect(), recent })
}
