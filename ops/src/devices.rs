//! `tillsync devices list|add|rotate|revoke|show|decommission`: the fleet as the broker sees
//! it (heartbeats and events), provisioning and activation codes, each device's identity
//! trail, and taking a device out of service ([`decommission`]).

pub mod decommission;

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::failure::{Known, Missing, Usage};
use crate::global::Global;
use crate::identity;
use crate::known;
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
        /// Only this tenant's devices.
        #[arg(long, value_parser = known::id)]
        tenant: Option<String>,
        /// Only this store's devices.
        #[arg(long, value_parser = known::id)]
        store: Option<String>,
        /// Only devices currently offline.
        #[arg(long)]
        offline: bool,
        /// Also decommissioned devices (left out by default).
        #[arg(long)]
        decommissioned: bool,
    },
    /// Provision a device and issue its one-time activation code (the tenant must exist; see
    /// `tillsync tenants add`). Run again to issue a new code, e.g. after a revocation.
    Add {
        #[command(flatten)]
        device: DeviceArg,
        /// Hours the code stays valid.
        #[arg(long, default_value_t = 24)]
        expires_in_h: u32,
    },
    /// Issue a rotation code: once the bridge activates with it, its old key is revoked and the
    /// running bridge reconnects with the new one (no restart, no event lost).
    Rotate {
        #[command(flatten)]
        device: DeviceArg,
        /// Hours the code stays valid.
        #[arg(long, default_value_t = 24)]
        expires_in_h: u32,
    },
    /// Revoke a device's credentials (a lost or stolen till): disconnected within seconds,
    /// refused afterwards; its unused codes are withdrawn. Its events wait in its outbox.
    Revoke {
        #[command(flatten)]
        device: DeviceArg,
        /// Why, for the audit trail.
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
    },
    /// Take a device out of service for good: revoke its credentials, cancel its unfinished
    /// commands, delete its JetStream consumers, refuse its activation from now on. Its
    /// records (orders, payments, ...) are kept. Asks to type the device back unless --yes.
    Decommission {
        #[command(flatten)]
        device: DeviceArg,
        #[command(flatten)]
        opts: decommission::Options,
    },
    /// A device's credentials and its identity audit trail (activations, rotations,
    /// revocations, refused connections: who, when, from where).
    Show {
        #[command(flatten)]
        device: DeviceArg,
        /// Audit rows to show, newest first.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Debug, Args)]
struct DeviceArg {
    /// The device's tenant.
    #[arg(long, value_parser = known::id)]
    tenant: String,
    /// The device's store.
    #[arg(long, value_parser = known::id)]
    store: String,
    /// The device's id.
    #[arg(long, value_parser = known::id)]
    device: String,
}

impl DeviceArg {
    fn addr(&self) -> anyhow::Result<tillsync_schemas::DeviceAddr> {
        let addr = tillsync_schemas::DeviceAddr::new(&self.tenant, &self.store, &self.device);
        addr.validate().map_err(|e| Usage(e.to_string()))?;
        Ok(addr)
    }
}

#[derive(Serialize, sqlx::FromRow)]
struct DeviceRow {
    tenant_id: String,
    store_id: String,
    device_id: String,
    provisioned: bool,
    online: bool,
    decommissioned_at: Option<DateTime<Utc>>,
    last_seen: Option<DateTime<Utc>>,
    software_version: Option<String>,
    /// Events the device still holds unsent (from its last heartbeat).
    outbox_depth: Option<i64>,
    /// Age of the oldest event the device has not yet published, seconds (from its heartbeat).
    unsent_age_s: Option<i64>,
    /// The device's last seq, from its last heartbeat: the watermark it has seen
    /// (`last_acked_seq`) plus the events it holds beyond it (`outbox_depth`).
    device_seq: Option<i64>,
    /// `device_seq` minus the broker's watermark (0 when not above): events the device holds
    /// that Postgres does not cover yet. Stays above 0 when JetStream lost them. Unknown
    /// (`None`) with `device_seq`, before the device's first heartbeat.
    lag: Option<i64>,
    /// How long the watermark has been waiting for `device_seq`, seconds.
    watermark_wait_s: Option<f64>,
    last_seq: i64,
    watermark: i64,
    /// Gaps detected over the device's life, those still open, and the oldest open one's age.
    gaps: i64,
    open_gaps: i64,
    oldest_gap_age_s: Option<f64>,
}

#[derive(Serialize)]
struct Added {
    tenant_id: String,
    store_id: String,
    device_id: String,
    created: bool,
    activation: identity::Issued,
}

pub async fn run(args: DevicesArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let pool = global.pool().await?;
    let code = match args.cmd {
        DevicesCmd::List { tenant, store, offline, decommissioned } => {
            known::filters(&pool, tenant.as_deref(), store.as_deref(), None).await?;
            let rows: Vec<DeviceRow> = sqlx::query_as(
                "SELECT d.tenant_id, d.store_id, d.device_id, d.provisioned, d.online, d.decommissioned_at, d.last_seen,
                        d.software_version,
                        d.outbox_depth, d.oldest_unsent_age_s AS unsent_age_s, CASE WHEN d.last_acked_seq IS NULL THEN NULL
                          ELSE d.last_acked_seq + coalesce(d.outbox_depth, 0) END AS device_seq,
                        CASE WHEN d.last_acked_seq IS NULL THEN NULL
                          ELSE greatest(d.last_acked_seq + coalesce(d.outbox_depth, 0) - d.watermark, 0) END AS lag,
                        EXTRACT(EPOCH FROM now() - d.watermark_wait_since)::float8 AS watermark_wait_s,
                        d.last_seq, d.watermark, d.gaps, coalesce(g.open, 0) AS open_gaps, g.oldest_age_s AS oldest_gap_age_s
                 FROM devices d
                 LEFT JOIN LATERAL (
                   SELECT count(*) AS open, EXTRACT(EPOCH FROM now() - min(detected_at))::float8 AS oldest_age_s
                   FROM device_gaps WHERE tenant_id = d.tenant_id AND store_id = d.store_id
                     AND device_id = d.device_id AND filled_at IS NULL
                 ) g ON true
                 WHERE ($1::text IS NULL OR d.tenant_id = $1) AND ($2::text IS NULL OR d.store_id = $2)
                   AND (NOT $3 OR NOT d.online) AND ($4 OR d.decommissioned_at IS NULL)
                 ORDER BY d.tenant_id, d.store_id, d.device_id",
            )
            .bind(tenant)
            .bind(store)
            .bind(offline)
            .bind(decommissioned)
            .fetch_all(&pool)
            .await?;
            emit(global.json, &rows, |r| human_list(r))?;
            ExitCode::SUCCESS
        }
        DevicesCmd::Add { device, expires_in_h } => {
            let addr = device.addr()?;
            let (tenant, store, device) = (addr.tenant_id.clone(), addr.store_id.clone(), addr.device_id.clone());
            known::tenant(&pool, &tenant).await?;
            anyhow::ensure!(
                !tillsync_broker::admin::auth::records::decommissioned(&pool, &addr).await?,
                "{tenant}/{store}/{device} (or its tenant) was decommissioned; a decommissioned device is never \
                 activated again: give the replacement till a new device id"
            );
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
            // A device of a new store finds its store's configuration waiting at first boot.
            tillsync_broker::admin::store_config::ensure_store(&pool, &tenant, &store).await?;
            let issued = identity::issue_code(&pool, &addr, "activate", expires_in_h).await?;
            let out = Added { tenant_id: tenant, store_id: store, device_id: device, created, activation: issued };
            emit(global.json, &out, |a| {
                let what = if a.created { "provisioned" } else { "already known; marked provisioned" };
                format!(
                    "Device {}/{}/{} {what}.\n{}",
                    a.tenant_id,
                    a.store_id,
                    a.device_id,
                    identity::human_issued(&a.activation)
                )
            })?;
            ExitCode::SUCCESS
        }
        DevicesCmd::Rotate { device, expires_in_h } => {
            let addr = device.addr()?;
            known::device(&pool, &addr).await?;
            if identity::live_keys(&pool, &addr).await? == 0 {
                let id = format!("{}/{}/{}", addr.tenant_id, addr.store_id, addr.device_id);
                return Err(Known {
                    code: "no_live_credential",
                    message: format!("{id} holds no live credential to rotate"),
                    hint: format!(
                        "issue an activation code instead: tillsync devices add --tenant {} --store {} --device {}",
                        addr.tenant_id, addr.store_id, addr.device_id
                    ),
                }
                .into());
            }
            let issued = identity::issue_code(&pool, &addr, "rotate", expires_in_h).await?;
            emit(global.json, &issued, identity::human_issued)?;
            ExitCode::SUCCESS
        }
        DevicesCmd::Revoke { device, reason } => {
            let addr = device.addr()?;
            known::device(&pool, &addr).await?;
            let out = identity::revoke(&pool, &addr, &reason).await?;
            emit(global.json, &out, |r| {
                format!(
                    "Revoked {} credential(s) and withdrew {} unused code(s) of {}/{}/{}; the broker disconnects it within seconds.\nIts events stay in its outbox until it is activated again (`tillsync devices add`).",
                    r.credentials_revoked, r.codes_withdrawn, r.tenant_id, r.store_id, r.device_id
                )
            })?;
            ExitCode::SUCCESS
        }
        DevicesCmd::Decommission { device, opts } => {
            let addr = device.addr()?;
            let out = decommission::device(&pool, &addr, &opts, &global.nats).await?;
            emit(global.json, &out, decommission::human)?;
            ExitCode::SUCCESS
        }
        DevicesCmd::Show { device, limit } => {
            let addr = device.addr()?;
            let shown = identity::show(&pool, &addr, limit).await?;
            if shown.credentials.is_empty() && shown.audit.is_empty() {
                known::device(&pool, &addr).await?;
                let (t, s, d) = (&addr.tenant_id, &addr.store_id, &addr.device_id);
                return Err(Missing {
                    code: "not_found",
                    message: format!("no identity record of {t}/{s}/{d}: never given a code or a credential"),
                    hint: format!(
                        "issue an activation code: tillsync devices add --tenant {t} --store {s} --device {d}"
                    ),
                }
                .into());
            }
            emit(global.json, &shown, identity::human_shown)?;
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
                state(r).into(),
                ts(r.last_seen),
                opt(r.outbox_depth),
                opt(r.unsent_age_s),
                opt(r.device_seq),
                lag(r),
                format!("{}/{}", r.watermark, r.last_seq),
                gaps(r),
                r.software_version.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "DEVICE",
            "STATE",
            "LAST SEEN",
            "OUTBOX",
            "UNSENT S",
            "DEVICE SEQ",
            "LAG",
            "WATERMARK/SEQ",
            "GAPS",
            "VERSION",
        ],
        &cells,
    );
    let online = rows.iter().filter(|r| r.online).count();
    out.push_str(&format!("{} device(s), {} online, {} offline\n", rows.len(), online, rows.len() - online));
    out
}

fn state(r: &DeviceRow) -> &'static str {
    match (r.decommissioned_at, r.online) {
        (Some(_), _) => "decommissioned",
        (None, true) => "online",
        (None, false) => "offline",
    }
}

/// The lag, and for how long the watermark has waited for it; `-` before a heartbeat.
fn lag(r: &DeviceRow) -> String {
    match (r.lag, r.watermark_wait_s) {
        (None, _) => "-".into(),
        (Some(l), Some(s)) if l > 0 => format!("{l} ({s:.0} s)"),
        (Some(l), _) => l.to_string(),
    }
}

/// Total gaps, and the open ones with the oldest's age.
fn gaps(r: &DeviceRow) -> String {
    match r.oldest_gap_age_s {
        Some(age) if r.open_gaps > 0 => format!("{} ({} open, oldest {age:.0} s)", r.gaps, r.open_gaps),
        _ => format!("{} (0 open)", r.gaps),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decommissioned_device_shows_as_such_whatever_its_last_heartbeat_said() {
        let row = |online, decommissioned_at| DeviceRow {
            tenant_id: "a".into(),
            store_id: "s".into(),
            device_id: "d".into(),
            provisioned: true,
            online,
            decommissioned_at,
            last_seen: None,
            software_version: None,
            outbox_depth: None,
            unsent_age_s: None,
            device_seq: None,
            lag: None,
            watermark_wait_s: None,
            last_seq: 0,
            watermark: 0,
            gaps: 0,
            open_gaps: 0,
            oldest_gap_age_s: None,
        };
        assert_eq!(state(&row(true, None)), "online");
        assert_eq!(state(&row(false, None)), "offline");
        assert_eq!(state(&row(true, Some(Utc::now()))), "decommissioned");
        // No heartbeat yet: its seq and lag are unknown, not 0.
        let text = human_list(&[row(false, None)]);
        let cells: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!((cells[5], cells[6], cells[7]), ("-", "-", "0/0"), "{text}");
        let json = serde_json::to_value(row(false, None)).unwrap();
        assert!(json["device_seq"].is_null() && json["lag"].is_null(), "{json}");
        let mut reported = row(true, None);
        (reported.device_seq, reported.lag, reported.watermark_wait_s) = (Some(7), Some(2), Some(3.0));
        let text = human_list(&[reported]);
        let cells: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!((cells[5], cells[6], cells[7]), ("7", "2", "(3"), "{text}");
    }
}
