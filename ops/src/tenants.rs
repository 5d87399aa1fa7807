//! `tillsync tenants add|list`: events and commands of a tenant not listed here are quarantined
//! (`unknown_tenant`), so provisioning a tenant comes before its devices connect.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::global::Global;
use crate::output::{emit, table, ts};

#[derive(Debug, Args)]
pub struct TenantsArgs {
    #[command(subcommand)]
    cmd: TenantsCmd,
}

#[derive(Debug, Subcommand)]
enum TenantsCmd {
    /// Provision a tenant (idempotent).
    Add {
        tenant: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Every tenant, with its device count.
    List,
}

#[derive(Serialize, sqlx::FromRow)]
struct TenantRow {
    tenant_id: String,
    name: String,
    created_at: DateTime<Utc>,
    devices: i64,
}

#[derive(Serialize)]
struct Added {
    tenant_id: String,
    created: bool,
}

pub async fn run(args: TenantsArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let pool = global.pool().await?;
    match args.cmd {
        TenantsCmd::Add { tenant, name } => {
            tillsync_schemas::ids::check_id("tenant_id", &tenant).map_err(|e| anyhow::anyhow!("{e}"))?;
            let created = sqlx::query("INSERT INTO tenants (tenant_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(&tenant)
                .bind(&name)
                .execute(&pool)
                .await?
                .rows_affected()
                == 1;
            emit(global.json, &Added { tenant_id: tenant, created }, |a| {
                if a.created {
                    format!("Tenant {} added.", a.tenant_id)
                } else {
                    format!("Tenant {} already exists; nothing changed.", a.tenant_id)
                }
            })?;
        }
        TenantsCmd::List => {
            let rows: Vec<TenantRow> = sqlx::query_as(
                "SELECT t.tenant_id, t.name, t.created_at, count(d.device_id) AS devices
                 FROM tenants t LEFT JOIN devices d ON d.tenant_id = t.tenant_id
                 GROUP BY t.tenant_id, t.name, t.created_at ORDER BY t.tenant_id",
            )
            .fetch_all(&pool)
            .await?;
            emit(global.json, &rows, |rows| {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| vec![r.tenant_id.clone(), r.name.clone(), ts(Some(r.created_at)), r.devices.to_string()])
                    .collect();
                table(&["TENANT", "NAME", "CREATED", "DEVICES"], &cells)
            })?;
        }
    }
    pool.close().await;
    Ok(ExitCode::SUCCESS)
}
