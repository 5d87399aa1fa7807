//! `tillsync devices decommission` and `tillsync tenants decommission`: a device (or every
//! device of a tenant) taken out of service for good. In one Postgres transaction: its
//! credentials are revoked (the broker disconnects it within seconds) and unused codes
//! withdrawn, its unfinished commands cancelled (the portal is told), its row marked and the
//! act audited; activation is refused from then on. Then its JetStream consumers (commands,
//! configuration) are deleted. Its read-model rows stay: they are the business's records.
//! Running it again only deletes consumers still there, and says it was already done.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tillsync_schemas::{config, streams, DeviceAddr};

use crate::failure::{NotFound, Usage};
use crate::global::NatsArgs;
use crate::identity;

/// What both decommission commands take besides what they decommission.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Do not ask for confirmation (needed without a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Why, for the audit trail.
    #[arg(long, default_value = "decommissioned by an operator")]
    pub reason: String,
}

#[derive(Serialize)]
pub struct Device {
    pub tenant_id: String,
    pub store_id: String,
    pub device_id: String,
    /// Decommissioned by an earlier run: nothing changed in Postgres.
    pub already: bool,
    pub decommissioned_at: DateTime<Utc>,
    pub decommissioned_by: String,
    pub credentials_revoked: u64,
    pub codes_withdrawn: u64,
    /// Unfinished commands cancelled (the portal hears `cancelled`).
    pub commands_cancelled: u64,
    /// The broker confirmed it disconnected the device's live connection (or it had none)
    /// before its consumers were deleted; false when it did not within 15 s.
    pub disconnected: bool,
    /// JetStream consumers deleted now, and those already gone.
    pub consumers_deleted: Vec<String>,
    pub consumers_absent: Vec<String>,
}

/// Asks the operator to type `id` back. Without a terminal (a script) and without `--yes`,
/// refuses: decommissioning is not undone. Refusals are usage errors (exit 2), nothing changed.
pub fn confirm(what: &str, id: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        let why = format!("decommissioning {what} {id} cannot be undone: pass --yes (no terminal to confirm on)");
        return Err(Usage(why).into());
    }
    eprint!("Decommission {what} {id}? Its credentials are revoked and its consumers deleted, for good.\nType {id} to confirm: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != id {
        return Err(Usage("not confirmed; nothing changed".into()).into());
    }
    Ok(())
}

/// The Postgres part of one device's decommissioning, in the caller's transaction (audited
/// with the revocation, action `decommissioned`).
pub async fn mark(tx: &mut sqlx::PgConnection, d: &DeviceAddr, by: &str, why: &str) -> anyhow::Result<Device> {
    let before: Option<(Option<DateTime<Utc>>, Option<String>)> = sqlx::query_as(
        "SELECT decommissioned_at, decommissioned_by FROM devices
         WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3 FOR UPDATE",
    )
    .bind(&d.tenant_id)
    .bind(&d.store_id)
    .bind(&d.device_id)
    .fetch_optional(&mut *tx)
    .await?;
    let before = before.with_context(|| format!("no device {}/{}/{}", d.tenant_id, d.store_id, d.device_id))?;
    let mut out = Device {
        tenant_id: d.tenant_id.clone(),
        store_id: d.store_id.clone(),
        device_id: d.device_id.clone(),
        already: before.0.is_some(),
        decommissioned_at: before.0.unwrap_or_else(Utc::now),
        decommissioned_by: before.1.unwrap_or_else(|| by.to_string()),
        credentials_revoked: 0,
        codes_withdrawn: 0,
        commands_cancelled: 0,
        disconnected: false,
        consumers_deleted: vec![],
        consumers_absent: vec![],
    };
    if out.already {
        return Ok(out);
    }
    out.decommissioned_at = sqlx::query_scalar(
        "UPDATE devices SET decommissioned_at = now(), decommissioned_by = $4, online = false
         WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3 RETURNING decommissioned_at",
    )
    .bind(&d.tenant_id)
    .bind(&d.store_id)
    .bind(&d.device_id)
    .bind(by)
    .fetch_one(&mut *tx)
    .await?;
    let revoked = identity::revoke_in(tx, d, by, "decommissioned", why).await?;
    out.credentials_revoked = revoked.credentials_revoked;
    out.codes_withdrawn = revoked.codes_withdrawn;
    let detail = format!("device decommissioned by {by}: {why}");
    out.commands_cancelled = tillsync_broker::admin::commands::withdraw_device(tx, d, &detail).await?;
    Ok(out)
}

/// Waits until the broker has disconnected every revoked, once-connected credential of
/// `tenant` (or of one device): a consumer deleted while its bridge is still connected would
/// be made again by that bridge. False after 15 s (no broker running, or no authorization).
pub async fn wait_disconnected(pool: &PgPool, tenant: &str, device: Option<&DeviceAddr>) -> anyhow::Result<bool> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM credentials WHERE tenant_id = $1 AND kind = 'device'
               AND ($2::text IS NULL OR (store_id = $2 AND device_id = $3))
               AND revoked_at IS NOT NULL AND kicked_at IS NULL AND last_connect_at IS NOT NULL",
        )
        .bind(tenant)
        .bind(device.map(|d| &d.store_id))
        .bind(device.map(|d| &d.device_id))
        .fetch_one(pool)
        .await?;
        if left == 0 {
            return Ok(true);
        }
        if std::time::Instant::now() > deadline {
            eprintln!(
                "warning: the broker has not confirmed the disconnect of {left} connection(s) within 15 s; if a \
                 consumer comes back, run this again"
            );
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Deletes the device's command and configuration consumers; one already gone is fine.
pub async fn delete_consumers(js: &async_nats::jetstream::Context, out: &mut Device) -> anyhow::Result<()> {
    let d = DeviceAddr::new(&out.tenant_id, &out.store_id, &out.device_id);
    for (stream, name) in
        [(streams::COMMANDS, streams::device_commands_consumer(&d)), (streams::CONFIG, config::device_consumer(&d))]
    {
        match js.delete_consumer_from_stream(&name, stream).await {
            Ok(_) => out.consumers_deleted.push(name),
            Err(e) if is_absent(&e) => out.consumers_absent.push(name),
            Err(e) => {
                return Err(anyhow::anyhow!("{e}")).with_context(|| {
                    format!(
                        "deleting consumer {name} of {stream}; Postgres is done: run the command again to delete it"
                    )
                })
            }
        }
    }
    Ok(())
}

/// JetStream's "consumer not found" (10014) and "stream not found" (10059): nothing to delete.
fn is_absent(e: &async_nats::jetstream::stream::ConsumerError) -> bool {
    use async_nats::jetstream::stream::ConsumerErrorKind;
    use async_nats::jetstream::ErrorCode;
    matches!(e.kind(), ConsumerErrorKind::JetStream(j)
        if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND || j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// `devices decommission`: confirm, mark, delete consumers.
pub async fn device(pool: &PgPool, d: &DeviceAddr, opts: &Options, nats: &NatsArgs) -> anyhow::Result<Device> {
    let id = format!("{}/{}/{}", d.tenant_id, d.store_id, d.device_id);
    crate::known::device(pool, d).await?;
    let known: Option<bool> = sqlx::query_scalar(
        "SELECT decommissioned_at IS NOT NULL FROM devices WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3",
    )
    .bind(&d.tenant_id)
    .bind(&d.store_id)
    .bind(&d.device_id)
    .fetch_optional(pool)
    .await?;
    // Removed since the check above (a concurrent run).
    let Some(already) = known else { return Err(NotFound(format!("no device {id}")).into()) };
    // Nothing left to lose when it was done before: the rerun only retries consumer deletion.
    if !opts.yes && !already {
        confirm("device", &id)?;
    }
    let js = async_nats::jetstream::new(nats.connect().await?);
    let mut tx = pool.begin().await?;
    let mut out = mark(&mut tx, d, &identity::actor(), &opts.reason).await?;
    tx.commit().await?;
    out.disconnected = wait_disconnected(pool, &d.tenant_id, Some(d)).await?;
    delete_consumers(&js, &mut out).await?;
    Ok(out)
}

pub fn human(d: &Device) -> String {
    let id = format!("{}/{}/{}", d.tenant_id, d.store_id, d.device_id);
    let consumers = if d.consumers_deleted.is_empty() {
        "no consumer left to delete".to_string()
    } else {
        format!("deleted consumer(s) {}", d.consumers_deleted.join(", "))
    };
    if d.already {
        format!(
            "Device {id} was already decommissioned ({} by {}); {consumers}.",
            crate::output::ts(Some(d.decommissioned_at)),
            d.decommissioned_by
        )
    } else {
        format!(
            "Device {id} decommissioned: {} credential(s) revoked, {} unused code(s) withdrawn, {} command(s) cancelled, {consumers}.\nIts orders, payments and other records are kept.",
            d.credentials_revoked, d.codes_withdrawn, d.commands_cancelled
        )
    }
}
