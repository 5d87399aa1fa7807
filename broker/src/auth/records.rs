//! The identity tables (`migrations/0011_identity.sql`): credentials, activation codes and the
//! audit trail. Shared by the broker (callout, activation, kicks) and the CLI.

use sqlx::{PgPool, Postgres, Row, Transaction};
use tillsync_schemas::DeviceAddr;

/// What a live credential allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Device(DeviceAddr),
    Portal(String),
}

/// Where a connection came from, as nats-server reported it.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub server_id: String,
    pub client_id: u64,
    pub host: String,
}

/// Why a key was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Live(Holder),
    Revoked(Option<DeviceAddr>, String),
    Unknown,
}

/// Looks a key up and, when it is live, records the connection being admitted (for a later
/// disconnect: the last one on `credentials`, every one in `credential_connections`). One
/// statement: a revoke committed first makes it match nothing.
pub async fn admit(pool: &PgPool, key: &str, origin: &Origin) -> Result<Lookup, sqlx::Error> {
    let live = sqlx::query(
        "WITH live AS (
           UPDATE credentials SET last_server_id = $2, last_client_id = $3, last_host = $4, last_connect_at = now()
           WHERE public_key = $1 AND revoked_at IS NULL
           RETURNING kind, tenant_id, store_id, device_id
         ), seen AS (
           INSERT INTO credential_connections (public_key, server_id, client_id)
           SELECT $1, $2, $3 FROM live
           ON CONFLICT (public_key, server_id, client_id) DO UPDATE SET at = now()
         )
         SELECT * FROM live",
    )
    .bind(key)
    .bind(&origin.server_id)
    .bind(origin.client_id as i64)
    .bind(&origin.host)
    .fetch_optional(pool)
    .await?;
    if let Some(r) = live {
        return Ok(Lookup::Live(holder(&r)));
    }
    let revoked = sqlx::query("SELECT tenant_id, store_id, device_id, coalesce(revoke_reason, '') AS why FROM credentials WHERE public_key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await?;
    Ok(match revoked {
        Some(r) => Lookup::Revoked(device_of(&r), r.get("why")),
        None => Lookup::Unknown,
    })
}

/// What `key` is: `live`, `revoked`, or `decommissioned` (revoked, and its device or tenant is
/// decommissioned); `None` when no credential has it.
pub async fn key_status(pool: &PgPool, key: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CASE WHEN c.revoked_at IS NULL THEN 'live'
                     WHEN d.decommissioned_at IS NOT NULL OR t.decommissioned_at IS NOT NULL THEN 'decommissioned'
                     ELSE 'revoked' END
         FROM credentials c
         LEFT JOIN devices d ON d.tenant_id = c.tenant_id AND d.store_id = c.store_id AND d.device_id = c.device_id
         LEFT JOIN tenants t ON t.tenant_id = c.tenant_id
         WHERE c.public_key = $1",
    )
    .bind(key)
    .fetch_optional(pool)
    .await
}

fn holder(r: &sqlx::postgres::PgRow) -> Holder {
    match (r.get::<String, _>("kind").as_str(), device_of(r)) {
        ("device", Some(addr)) => Holder::Device(addr),
        _ => Holder::Portal(r.get("tenant_id")),
    }
}

fn device_of(r: &sqlx::postgres::PgRow) -> Option<DeviceAddr> {
    let store: Option<String> = r.get("store_id");
    let device: Option<String> = r.get("device_id");
    Some(DeviceAddr::new(r.get::<String, _>("tenant_id"), &store?, &device?))
}

/// One audit row.
#[derive(Debug, Clone, Default)]
pub struct Audit<'a> {
    pub action: &'a str,
    pub reason: Option<&'a str>,
    pub device: Option<&'a DeviceAddr>,
    pub tenant: Option<&'a str>,
    pub public_key: Option<&'a str>,
    pub actor: &'a str,
    pub remote: Option<&'a str>,
    pub detail: &'a str,
}

pub async fn audit<'e, E: sqlx::PgExecutor<'e>>(db: E, a: &Audit<'_>) -> Result<(), sqlx::Error> {
    let tenant = a.device.map(|d| d.tenant_id.as_str()).or(a.tenant);
    sqlx::query(
        "INSERT INTO identity_audit (action, reason, tenant_id, store_id, device_id, public_key, actor, remote, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(a.action)
    .bind(a.reason)
    .bind(tenant)
    .bind(a.device.map(|d| d.store_id.as_str()))
    .bind(a.device.map(|d| d.device_id.as_str()))
    .bind(a.public_key)
    .bind(a.actor)
    .bind(a.remote)
    .bind(a.detail)
    .execute(db)
    .await?;
    Ok(())
}

/// An attempt no known credential stands behind (a stranger's), counted in one row per action,
/// reason and source address a minute (`tries`), whatever key it came with.
pub async fn audit_attempt(
    pool: &PgPool,
    action: &str,
    reason: Option<&str>,
    remote: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO identity_audit (action, reason, actor, remote, detail, minute)
         VALUES ($1, $2, 'nats', $3, $4, date_trunc('minute', now()))
         ON CONFLICT (action, coalesce(reason, ''), coalesce(remote, ''), minute) WHERE minute IS NOT NULL
         DO UPDATE SET tries = identity_audit.tries + 1, at = clock_timestamp()",
    )
    .bind(action)
    .bind(reason)
    .bind(remote)
    .bind(detail)
    .execute(pool)
    .await?;
    Ok(())
}

/// A refused connection, recorded at most once a minute per key (or per host for keyless
/// attempts): a revoked till retries forever and must not flood the table.
pub async fn audit_refusal(pool: &PgPool, a: &Audit<'_>) -> Result<(), sqlx::Error> {
    let tenant = a.device.map(|d| d.tenant_id.as_str()).or(a.tenant);
    sqlx::query(
        "INSERT INTO identity_audit (action, reason, tenant_id, store_id, device_id, public_key, actor, remote, detail)
         SELECT 'connection_refused', $1, $2, $3, $4, $5, 'nats', $6, $7
         WHERE NOT EXISTS (
           SELECT 1 FROM identity_audit WHERE action = 'connection_refused' AND at > now() - interval '1 minute'
             AND public_key IS NOT DISTINCT FROM $5 AND ($5 IS NOT NULL OR remote IS NOT DISTINCT FROM $6))",
    )
    .bind(a.reason)
    .bind(tenant)
    .bind(a.device.map(|d| d.store_id.as_str()))
    .bind(a.device.map(|d| d.device_id.as_str()))
    .bind(a.public_key)
    .bind(a.remote)
    .bind(a.detail)
    .execute(pool)
    .await?;
    Ok(())
}

/// A request whose reply pointed outside its requester's inbox (`crate::replies`): at most
/// one row a minute per responder (`reason`) and requester, keys aside, since a stranger can
/// make fresh keys for free.
pub async fn audit_reply_refused(pool: &PgPool, a: &Audit<'_>) -> Result<(), sqlx::Error> {
    let tenant = a.device.map(|d| d.tenant_id.as_str()).or(a.tenant);
    let mut tx = pool.begin().await?;
    // Refusals arrive in bursts, answered concurrently: without the lock each of a burst sees
    // no row yet and inserts one.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext(concat_ws('/', 'reply_refused', $1, $2, $3, $4)))")
        .bind(a.reason)
        .bind(tenant)
        .bind(a.device.map(|d| d.store_id.as_str()))
        .bind(a.device.map(|d| d.device_id.as_str()))
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO identity_audit (action, reason, tenant_id, store_id, device_id, public_key, actor, remote, detail)
         SELECT 'reply_refused', $1, $2, $3, $4, $5, 'nats', NULL, $6
         WHERE NOT EXISTS (
           SELECT 1 FROM identity_audit WHERE action = 'reply_refused' AND at > now() - interval '1 minute'
             AND reason = $1 AND tenant_id IS NOT DISTINCT FROM $2 AND store_id IS NOT DISTINCT FROM $3
             AND device_id IS NOT DISTINCT FROM $4)",
    )
    .bind(a.reason)
    .bind(tenant)
    .bind(a.device.map(|d| d.store_id.as_str()))
    .bind(a.device.map(|d| d.device_id.as_str()))
    .bind(a.public_key)
    .bind(a.detail)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Stores a new code's hash for `device`, valid `hours`; returns when it expires.
pub async fn insert_code(
    tx: &mut Transaction<'_, Postgres>,
    code: &str,
    device: &DeviceAddr,
    purpose: &str,
    by: &str,
    hours: i32,
) -> Result<sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO activation_codes (code_hash, tenant_id, store_id, device_id, purpose, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(hours => $7)) RETURNING expires_at",
    )
    .bind(super::code_hash(code))
    .bind(&device.tenant_id)
    .bind(&device.store_id)
    .bind(&device.device_id)
    .bind(purpose)
    .bind(by)
    .bind(hours)
    .fetch_one(&mut **tx)
    .await
}

/// An activation code taken, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    Code { device: DeviceAddr, purpose: String },
    Refused(&'static str),
}

/// Takes a code once: marks it used if it is unused and unexpired.
pub async fn take_code(tx: &mut Transaction<'_, Postgres>, hash: &str, from: &str) -> Result<Taken, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE activation_codes SET used_at = now(), used_from = $2
         WHERE code_hash = $1 AND used_at IS NULL AND expires_at > now()
         RETURNING tenant_id, store_id, device_id, purpose",
    )
    .bind(hash)
    .bind(from)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(r) = row {
        let device = DeviceAddr::new(
            r.get::<String, _>("tenant_id"),
            r.get::<String, _>("store_id"),
            r.get::<String, _>("device_id"),
        );
        return Ok(Taken::Code { device, purpose: r.get("purpose") });
    }
    let why: Option<bool> = sqlx::query_scalar("SELECT used_at IS NOT NULL FROM activation_codes WHERE code_hash = $1")
        .bind(hash)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(Taken::Refused(match why {
        Some(true) => "code_used",
        Some(false) => "code_expired",
        None => "code_unknown",
    }))
}

/// The device a code was issued for, if any (to file a refused activation under it).
pub async fn code_device(pool: &PgPool, hash: &str) -> Result<Option<DeviceAddr>, sqlx::Error> {
    let row = sqlx::query("SELECT tenant_id, store_id, device_id FROM activation_codes WHERE code_hash = $1")
        .bind(hash)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| {
        DeviceAddr::new(
            r.get::<String, _>("tenant_id"),
            r.get::<String, _>("store_id"),
            r.get::<String, _>("device_id"),
        )
    }))
}

/// True when the device or its tenant was decommissioned (`tillsync devices|tenants
/// decommission`): it is never activated again.
pub async fn decommissioned<'e, E: sqlx::PgExecutor<'e>>(db: E, d: &DeviceAddr) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM devices WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3
                          AND decommissioned_at IS NOT NULL)
             OR EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1 AND decommissioned_at IS NOT NULL)",
    )
    .bind(&d.tenant_id)
    .bind(&d.store_id)
    .bind(&d.device_id)
    .fetch_one(db)
    .await
}

/// Revokes every live credential of a device; returns how many.
pub async fn revoke_device<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    device: &DeviceAddr,
    by: &str,
    reason: &str,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE credentials SET revoked_at = now(), revoked_by = $4, revoke_reason = $5
         WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3 AND revoked_at IS NULL",
    )
    .bind(&device.tenant_id)
    .bind(&device.store_id)
    .bind(&device.device_id)
    .bind(by)
    .bind(reason)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Records a new device key (from an activation).
pub async fn insert_device_key(
    tx: &mut Transaction<'_, Postgres>,
    key: &str,
    device: &DeviceAddr,
    by: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO credentials (public_key, kind, tenant_id, store_id, device_id, created_by)
         VALUES ($1, 'device', $2, $3, $4, $5)",
    )
    .bind(key)
    .bind(&device.tenant_id)
    .bind(&device.store_id)
    .bind(&device.device_id)
    .bind(by)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Where the activating key connected from (recorded by the callout that admitted it).
pub async fn activation_host(pool: &PgPool, key: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT remote FROM identity_audit WHERE public_key = $1 AND action = 'activation_connect' ORDER BY at DESC LIMIT 1",
    )
    .bind(key)
    .fetch_optional(pool)
    .await
    .map(Option::flatten)
}
