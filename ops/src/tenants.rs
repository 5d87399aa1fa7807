//! `tillsync tenants add|list|decommission`: events and commands of a tenant not listed here
//! are quarantined (`unknown_tenant`), so provisioning a tenant comes before its devices
//! connect. Decommissioning takes every device of a tenant out of service (see
//! [`crate::devices::decommission`]) and revokes its portal credentials; the tenant's rows stay.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::devices::decommission;
use crate::failure::Usage;
use crate::global::Global;
use crate::identity;
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
        /// The tenant id: letters, digits, `_` and `-`, up to 64.
        #[arg(value_parser = crate::known::id)]
        tenant: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Every tenant, with its device count (decommissioned devices left out) and whether it
    /// was decommissioned.
    List,
    /// Take a tenant out of service for good: every device of it decommissioned (credentials
    /// revoked, commands cancelled, consumers deleted), its portal credentials revoked, its
    /// activations refused. Its records are kept. Asks to type the tenant back unless --yes.
    Decommission {
        /// The tenant to decommission, with every device of it.
        #[arg(value_parser = crate::known::id)]
        tenant: String,
        #[command(flatten)]
        opts: decommission::Options,
    },
}

#[derive(Serialize, sqlx::FromRow)]
struct TenantRow {
    tenant_id: String,
    name: String,
    created_at: DateTime<Utc>,
    devices: i64,
    decommissioned_at: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
struct Decommissioned {
    tenant_id: String,
    /// Decommissioned by an earlier run: nothing changed in Postgres.
    already: bool,
    decommissioned_at: DateTime<Utc>,
    decommissioned_by: String,
    portal_credentials_revoked: u64,
    devices: Vec<decommission::Device>,
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
            tillsync_schemas::ids::check_id("tenant_id", &tenant).map_err(|e| Usage(e.to_string()))?;
            let gone: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1 AND decommissioned_at IS NOT NULL)",
            )
            .bind(&tenant)
            .fetch_one(&pool)
            .await?;
            anyhow::ensure!(
                !gone,
                "tenant {tenant} was decommissioned; a decommissioned tenant is not provisioned again"
            );
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
                "SELECT t.tenant_id, t.name, t.created_at, count(d.device_id) AS devices, t.decommissioned_at
                 FROM tenants t LEFT JOIN devices d ON d.tenant_id = t.tenant_id AND d.decommissioned_at IS NULL
                 GROUP BY t.tenant_id ORDER BY t.tenant_id",
            )
            .fetch_all(&pool)
            .await?;
            emit(global.json, &rows, |rows| {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.tenant_id.clone(),
                            r.name.clone(),
                            ts(Some(r.created_at)),
                            r.devices.to_string(),
                            ts(r.decommissioned_at),
                        ]
                    })
                    .collect();
                table(&["TENANT", "NAME", "CREATED", "DEVICES", "DECOMMISSIONED"], &cells)
            })?;
        }
        TenantsCmd::Decommission { tenant, opts } => {
            let out = decommission_tenant(&pool, &tenant, &opts, &global.nats).await?;
            emit(global.json, &out, human_decommissioned)?;
        }
    }
    pool.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn decommission_tenant(
    pool: &sqlx::PgPool,
    tenant: &str,
    opts: &decommission::Options,
    nats: &crate::global::NatsArgs,
) -> anyhow::Result<Decommissioned> {
    let why = opts.reason.as_str();
    let known: Option<bool> =
        sqlx::query_scalar("SELECT decommissioned_at IS NOT NULL FROM tenants WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(pool)
            .await?;
    let Some(already) = known else { return Err(crate::known::unknown_tenant(tenant).into()) };
    if !opts.yes && !already {
        decommission::confirm("tenant", tenant)?;
    }
    let js = async_nats::jetstream::new(nats.connect().await?);
    let by = identity::actor();
    let mut tx = pool.begin().await?;
    let (at, first_by): (DateTime<Utc>, String) = sqlx::query_as(
        "UPDATE tenants SET decommissioned_at = coalesce(decommissioned_at, now()),
                            decommissioned_by = coalesce(decommissioned_by, $2)
         WHERE tenant_id = $1 RETURNING decommissioned_at, decommissioned_by",
    )
    .bind(tenant)
    .bind(&by)
    .fetch_one(&mut *tx)
    .await?;
    let addrs: Vec<(String, String)> =
        sqlx::query_as("SELECT store_id, device_id FROM devices WHERE tenant_id = $1 ORDER BY store_id, device_id")
            .bind(tenant)
            .fetch_all(&mut *tx)
            .await?;
    let mut devices = Vec::new();
    for (store, device) in addrs {
        let addr = tillsync_schemas::DeviceAddr::new(tenant, &store, &device);
        devices.push(decommission::mark(&mut tx, &addr, &by, why).await?);
    }
    let portal_credentials_revoked = sqlx::query(
        "UPDATE credentials SET revoked_at = now(), revoked_by = $2, revoke_reason = $3
         WHERE tenant_id = $1 AND kind = 'portal' AND revoked_at IS NULL",
    )
    .bind(tenant)
    .bind(&by)
    .bind(why)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if !already {
        let detail = format!("{} device(s), {portal_credentials_revoked} portal credential(s)", devices.len());
        let audit = tillsync_broker::admin::auth::records::Audit {
            action: "tenant_decommissioned",
            reason: Some(why),
            tenant: Some(tenant),
            actor: &by,
            detail: &detail,
            ..Default::default()
        };
        tillsync_broker::admin::auth::records::audit(&mut *tx, &audit).await?;
    }
    tx.commit().await?;
    let disconnected = decommission::wait_disconnected(pool, tenant, None).await?;
    for d in &mut devices {
        d.disconnected = disconnected;
        decommission::delete_consumers(&js, d).await?;
    }
    Ok(Decommissioned {
        tenant_id: tenant.to_string(),
        already,
        decommissioned_at: at,
        decommissioned_by: first_by,
        portal_credentials_revoked,
        devices,
    })
}

fn human_decommissioned(t: &Decommissioned) -> String {
    let mut out = if t.already {
        format!(
            "Tenant {} was already decommissioned ({} by {}).\n",
            t.tenant_id,
            ts(Some(t.decommissioned_at)),
            t.decommissioned_by
        )
    } else {
        format!(
            "Tenant {} decommissioned: {} device(s), {} portal credential(s) revoked. Its records are kept.\n",
            t.tenant_id,
            t.devices.len(),
            t.portal_credentials_revoked
        )
    };
    for d in &t.devices {
        out += &format!("  {}\n", decommission::human(d).lines().next().unwrap_or_default());
    }
    out
}
