//! Reports this broker instance to Postgres every [`EVERY`], for `tillsync status`, and
//! removes the report when it stops. Gauges read rather than counted (consumer lag, streams)
//! are the monitor's ([`crate::monitor`]).

use std::sync::Arc;
use std::time::Duration;

use sqlx::types::chrono::{DateTime, Utc};

use crate::tasks::Job;
use crate::Ctx;

pub const EVERY: Duration = Duration::from_secs(2);

pub async fn run(ctx: Arc<Ctx>, job: Job, instance_id: String) {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string();
    let started = crate::ts(crate::now_ms());
    job.run(&ctx, || report(&ctx, &instance_id, &host, started)).await;
    let _ =
        sqlx::query("DELETE FROM broker_instances WHERE instance_id = $1").bind(&instance_id).execute(&ctx.pool).await;
}

async fn report(ctx: &Ctx, instance_id: &str, host: &str, started: DateTime<Utc>) -> Result<(), sqlx::Error> {
    let resident = ctx.actors.resident() as i64;
    let r = sqlx::query(
        "INSERT INTO broker_instances (instance_id, host, started_at, last_seen, resident_actors)
         VALUES ($1, $2, $3, now(), $4)
         ON CONFLICT (instance_id) DO UPDATE SET last_seen = now(), resident_actors = $4",
    )
    .bind(instance_id)
    .bind(host)
    .bind(started)
    .bind(resident)
    .execute(&ctx.pool)
    .await;
    crate::ingest::export_actor_stats(ctx);
    r.map(|_| ())
}
