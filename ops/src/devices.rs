//! `tillsync devices list|add`: the fleet as the broker sees it (heartbeats and events), and
//! provisioning a device ahead of its first connection.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::global::Global;
use crate::output::{emit, table, ts};

#[derive(Debug, Args)]
pub struct DevicesArgs {
    #[command(subcommand)]
    cmd: DevicesCmd,
}

#[derive(Debug, Subcommand)]
enum DevicesCmd {
    /// Devices with online state, last seen, outbox depth, lag and gaps.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        store: Option<String>,
        /// Only devices currently offline.
        #[arg(long)]
        offline: bool,
    },
    /// Provision a device (the tenant must exist; see `tillsync tenants add`).
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        store: String,
        #[arg(long)]
        device: String,
    },
}

#[derive(Serialize, sqlx::FromRow)]
struct DeviceRow {
    tenant_id: String,
    store_id: String,
    device_id: String,
    provisioned: bool,
    online: bool,
    last_seen: Option<DateTime<Utc>>,
    software_version: Option<String>,
    /// Events the device still holds unsent (from its last heartbeat).
    outbox_depth: Option<i64>,
    /// Age of the oldest unsent event on the device, seconds: how far the cloud lags behind it.
    lag_s: Option<i64>,
    last_seq: i64,
    watermark: i64,
    /// Gaps detected over the device's life, and those still open.
    gaps: i64,
    open_gaps: i64,
}

#[derive(Serialize)]
struct Added {
    tenant_id: String,
    store_id: String,
    device_id: String,
    created: bool,
}

pub async fn run(args: DevicesArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let pool = global.pool().await?;
    let code = match args.cmd {
        DevicesCmd::List { tenant, store, offline } => {
            let rows: Vec<DeviceRow> = sqlx::query_as(
                "SELECT d.tenant_id, d.store_id, d.device_id, d.provisioned, d.online, d.last_seen, d.software_version,
                        d.outbox_depth, d.oldest_unsent_age_s AS lag_s, d.last_seq, d.watermark, d.gaps,
                        (SELECT count(*) FROM device_gaps g WHERE g.tenant_id = d.tenant_id AND g.store_id = d.store_id
                           AND g.device_id = d.device_id AND g.filled_at IS NULL) AS open_gaps
                 FROM devices d
                 WHERE ($1::text IS NULL OR d.tenant_id = $1) AND ($2::text IS NULL OR d.store_id = $2)
                   AND (NOT $3 OR NOT d.online)
                 ORDER BY d.tenant_id, d.store_id, d.device_id",
            )
            .bind(tenant)
            .bind(store)
            .bind(offline)
            .fetch_all(&pool)
            .await?;
            emit(global.json, &rows, |r| human_list(r))?;
            ExitCode::SUCCESS
        }
        DevicesCmd::Add { tenant, store, device } => {
            let addr = tillsync_schemas::DeviceAddr::new(&tenant, &store, &device);
            addr.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)")
                .bind(&tenant)
                .fetch_one(&pool)
                .await?;
            anyhow::ensure!(known, "unknown tenant {tenant:?}: add it first with `tillsync tenants add {tenant}`");
            let created = sqlx::query(
                "INSERT INTO devices (tenant_id, store_id, device_id, provisioned) VALUES ($1, $2, $3, true)
                 ON CONFLICT (tenant_id, store_id, device_id) DO UPDATE SET provisioned = true
                 RETURNING (xmax = 0) AS inserted",
            )
            .bind(&tenant)
            .bind(&store)
            .bind(&device)
            .fetch_one(&pool)
            .await
            .map(|r| sqlx::Row::get::<bool, _>(&r, "inserted"))?;
            let out = Added { tenant_id: tenant, store_id: store, device_id: device, created };
            emit(global.json, &out, |a| {
                let what = if a.created { "provisioned" } else { "already known; marked provisioned" };
                format!("Device {}/{}/{} {what}.", a.tenant_id, a.store_id, a.device_id)
            })?;
            ExitCode::SUCCESS
        }
    };
    pool.close().await;
    Ok(code)
}

fn human_list(rows: &[DeviceRow]) -> String {
    let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                format!("{}/{}/{}", r.tenant_id, r.store_id, r.device_id),
                if r.online { "online" } else { "offline" }.into(),
                ts(r.last_seen),
                opt(r.outbox_depth),
                opt(r.lag_s),
                format!("{}/{}", r.watermark, r.last_seq),
                format!("{} ({} open)", r.gaps, r.open_gaps),
                r.software_version.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out =
        table(&["DEVICE", "STATE", "LAST SEEN", "OUTBOX", "LAG S", "WATERMARK/SEQ", "GAPS", "VERSION"], &cells);
    let online = rows.iter().filter(|r| r.online).count();
    out.push_str(&format!("{} device(s), {} online, {} offline\n", rows.len(), online, rows.len() - online));
    out
}
