//! The actors' view of Postgres.

use sqlx::PgPool;
use tillsync_actors::policy::CopyState;
use tillsync_actors::ports::{BoxFut, Delivery, DeviceSnapshot, Finish, InboxSnapshot, PortError, Ports};
use tillsync_schemas::DeviceAddr;

use crate::commands::io::CommandIo;

pub struct PgPorts {
    pool: PgPool,
    /// Set by the live broker; without it (replay) the command ports answer an error.
    commands: Option<CommandIo>,
}

impl PgPorts {
    pub fn new(pool: PgPool) -> Self {
        PgPorts { pool, commands: None }
    }

    /// Enables the command inbox ports, which publish through `js`.
    pub fn with_commands(
        mut self,
        js: async_nats::jetstream::Context,
        marks: crate::commands::publish::Marks,
        signer: std::sync::Arc<crate::signing::Signer>,
    ) -> Self {
        self.commands = Some(CommandIo { pool: self.pool.clone(), js, marks, signer });
        self
    }

    fn io(&self) -> Result<CommandIo, PortError> {
        self.commands.clone().ok_or(PortError::NoCommands)
    }
}

impl Ports for PgPorts {
    fn load_device(&self, addr: DeviceAddr, recent: usize) -> BoxFut<Result<DeviceSnapshot, PortError>> {
        let pool = self.pool.clone();
        Box::pin(async move {
            load_device(&pool, &addr, recent).await.map_err(PortError::failed("loading the device's state"))
        })
    }

    fn load_inbox(&self, addr: DeviceAddr) -> BoxFut<Result<InboxSnapshot, PortError>> {
        let io = self.io();
        Box::pin(async move { io?.load_inbox(&addr).await.map_err(PortError::failed("loading the inbox")) })
    }

    fn deliver(&self, addr: DeviceAddr, d: Delivery) -> BoxFut<Result<bool, PortError>> {
        let io = self.io();
        Box::pin(async move { io?.deliver(&addr, &d).await.map_err(PortError::failed("delivering a command")) })
    }

    fn finish(&self, addr: DeviceAddr, f: Finish) -> BoxFut<Result<bool, PortError>> {
        let io = self.io();
        Box::pin(async move { io?.finish(&addr, &f).await.map_err(PortError::failed("finishing a command")) })
    }

    fn check(&self, addr: DeviceAddr, stream_seq: Option<u64>) -> BoxFut<Result<CopyState, PortError>> {
        let io = self.io();
        Box::pin(
            async move { io?.check(&addr, stream_seq).await.map_err(PortError::failed("checking a command's copy")) },
        )
    }

    fn reschedule(
        &self,
        addr: DeviceAddr,
        command_id: String,
        next_attempt_at_ms: i64,
    ) -> BoxFut<Result<(), PortError>> {
        let io = self.io();
        Box::pin(async move {
            io?.reschedule(&addr, &command_id, next_attempt_at_ms)
                .await
                .map_err(PortError::failed("rescheduling a command"))
        })
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
