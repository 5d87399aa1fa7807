//! Device identity from the operator's side: activation codes (`devices add`, `devices
//! rotate`), revocation, one device's credentials and audit trail (`devices show`), portal
//! credentials (`portals`) and the NATS authorization and TLS setup (`auth init`, `auth routes`,
//! `auth tls`). Every change is audited with the operator's name (`TILLSYNC_ACTOR`, else
//! `$USER@host`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;
use sqlx::PgPool;
use tillsync_broker::admin::auth::{self, records};
use tillsync_schemas::DeviceAddr;

use crate::global::Global;
use crate::output::{emit, table, ts};

/// Who is acting, for the audit trail.
pub fn actor() -> String {
    if let Ok(a) = std::env::var("TILLSYNC_ACTOR") {
        return a;
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

#[derive(Serialize)]
pub struct Issued {
    pub tenant_id: String,
    pub store_id: String,
    pub device_id: String,
    pub purpose: &'static str,
    /// Shown once; only its hash is stored.
    pub code: String,
    pub expires_at: DateTime<Utc>,
}

/// Issues a one-time code for a device (`activate` or `rotate`), valid `hours`.
pub async fn issue_code(pool: &PgPool, d: &DeviceAddr, purpose: &'static str, hours: u32) -> anyhow::Result<Issued> {
    anyhow::ensure!((1..=24 * 30).contains(&hours), "--expires-in-h must be in 1..=720");
    let code = auth::new_code();
    let by = actor();
    let mut tx = pool.begin().await?;
    let expires_at = records::insert_code(&mut tx, &code, d, purpose, &by, hours as i32).await?;
    let detail = format!("{purpose} code valid {hours} h");
    let audit =
        records::Audit { action: "code_issued", device: Some(d), actor: &by, detail: &detail, ..Default::default() };
    records::audit(&mut *tx, &audit).await?;
    tx.commit().await?;
    Ok(Issued {
        tenant_id: d.tenant_id.clone(),
        store_id: d.store_id.clone(),
        device_id: d.device_id.clone(),
        purpose,
        code,
        expires_at,
    })
}

pub fn human_issued(i: &Issued) -> String {
    format!(
        "{} code for {}/{}/{}: {}\nValid until {} (once). At the store run:\n  tillsync-edge activate --code {}\n",
        if i.purpose == "rotate" { "Rotation" } else { "Activation" },
        i.tenant_id,
        i.store_id,
        i.device_id,
        i.code,
        ts(Some(i.expires_at)),
        i.code
    )
}

/// Number of live credentials a device holds.
pub async fn live_keys(pool: &PgPool, d: &DeviceAddr) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM credentials WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3 AND revoked_at IS NULL",
    )
    .bind(&d.tenant_id)
    .bind(&d.store_id)
    .bind(&d.device_id)
    .fetch_one(pool)
    .await?)
}

#[derive(Serialize)]
pub struct Revoked {
    pub tenant_id: String,
    pub store_id: String,
    pub device_id: String,
    pub credentials_revoked: u64,
    pub codes_withdrawn: u64,
}

/// Revokes a device's credentials and withdraws its unused codes (a lost till's code must
/// not activate a thief's bridge). The broker disconnects the live connection within seconds.
pub async fn revoke(pool: &PgPool, d: &DeviceAddr, reason: &str) -> anyhow::Result<Revoked> {
    let by = actor();
    let mut tx = pool.begin().await?;
    let out = revoke_in(&mut tx, d, &by, "revoked", reason).await?;
    tx.commit().await?;
    Ok(out)
}

/// [`revoke`] in the caller's transaction, audited as `action` (`revoked`, `decommissioned`).
pub async fn revoke_in(
    tx: &mut sqlx::PgConnection,
    d: &DeviceAddr,
    by: &str,
    action: &str,
    reason: &str,
) -> anyhow::Result<Revoked> {
    let credentials_revoked = records::revoke_device(&mut *tx, d, by, reason).await?;
    let codes_withdrawn = sqlx::query(
        "UPDATE activation_codes SET expires_at = least(expires_at, now())
         WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3 AND used_at IS NULL AND expires_at > now()",
    )
    .bind(&d.tenant_id)
    .bind(&d.store_id)
    .bind(&d.device_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let detail = format!("{credentials_revoked} credential(s), {codes_withdrawn} unused code(s)");
    let audit = records::Audit {
        action,
        reason: Some(reason),
        device: Some(d),
        actor: by,
        detail: &detail,
        ..Default::default()
    };
    records::audit(&mut *tx, &audit).await?;
    Ok(Revoked {
        tenant_id: d.tenant_id.clone(),
        store_id: d.store_id.clone(),
        device_id: d.device_id.clone(),
        credentials_revoked,
        codes_withdrawn,
    })
}

#[derive(Serialize, sqlx::FromRow)]
pub struct KeyRow {
    pub public_key: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoke_reason: Option<String>,
    pub disconnected_at: Option<DateTime<Utc>>,
    /// Connections the revocation closed (on every NATS node).
    pub connections_closed: Option<i32>,
    pub last_connect_at: Option<DateTime<Utc>>,
    pub last_host: Option<String>,
}

#[derive(Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub at: DateTime<Utc>,
    pub action: String,
    pub reason: Option<String>,
    pub actor: String,
    pub remote: Option<String>,
    pub public_key: Option<String>,
    pub detail: String,
}

#[derive(Serialize)]
pub struct Shown {
    pub tenant_id: String,
    pub store_id: String,
    pub device_id: String,
    pub credentials: Vec<KeyRow>,
    pub audit: Vec<AuditRow>,
}

/// A device's keys (newest first) and its last `limit` audit rows (newest first).
pub async fn show(pool: &PgPool, d: &DeviceAddr, limit: i64) -> anyhow::Result<Shown> {
    let credentials = sqlx::query_as(
        "SELECT public_key, created_at, created_by, revoked_at, revoke_reason, kicked_at AS disconnected_at,
                kicked_connections AS connections_closed, last_connect_at, last_host
         FROM credentials WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3 ORDER BY created_at DESC",
    )
    .bind(&d.tenant_id)
    .bind(&d.store_id)
    .bind(&d.device_id)
    .fetch_all(pool)
    .await?;
    // Refused connections of the device's keys are filed under the key; take those too.
    let audit = sqlx::query_as(
        "SELECT at, action, reason, actor, remote, public_key, detail FROM identity_audit a
         WHERE (tenant_id = $1 AND store_id = $2 AND device_id = $3)
            OR public_key IN (SELECT public_key FROM credentials WHERE tenant_id = $1 AND store_id = $2 AND device_id = $3)
         ORDER BY at DESC, id DESC LIMIT $4",
    )
    .bind(&d.tenant_id)
    .bind(&d.store_id)
    .bind(&d.device_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(Shown {
        tenant_id: d.tenant_id.clone(),
        store_id: d.store_id.clone(),
        device_id: d.device_id.clone(),
        credentials,
        audit,
    })
}

pub fn human_shown(s: &Shown) -> String {
    let short = |k: &str| format!("{}…", &k[..k.len().min(12)]);
    let mut out = format!("Device {}/{}/{}\n\nCredentials:\n", s.tenant_id, s.store_id, s.device_id);
    let keys: Vec<Vec<String>> = s
        .credentials
        .iter()
        .map(|k| {
            let state = match (&k.revoked_at, &k.disconnected_at) {
                (None, _) => "live".to_string(),
                (Some(_), Some(_)) => match k.connections_closed {
                    Some(1) => "revoked, 1 connection closed".to_string(),
                    Some(n) => format!("revoked, {n} connections closed"),
                    None => "revoked, disconnected".to_string(),
                },
                (Some(_), None) => "revoked".to_string(),
            };
            vec![
                short(&k.public_key),
                state,
                ts(Some(k.created_at)),
                ts(k.revoked_at),
                ts(k.last_connect_at),
                k.last_host.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&table(&["KEY", "STATE", "CREATED", "REVOKED", "LAST CONNECT", "FROM"], &keys));
    out.push_str("\nAudit (newest first):\n");
    let rows: Vec<Vec<String>> = s
        .audit
        .iter()
        .map(|a| {
            vec![
                ts(Some(a.at)),
                a.action.clone(),
                a.reason.clone().unwrap_or_else(|| "-".into()),
                a.actor.clone(),
                a.remote.clone().unwrap_or_else(|| "-".into()),
                a.detail.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["AT", "ACTION", "REASON", "BY", "FROM", "DETAIL"], &rows));
    out
}

#[derive(Debug, Args)]
pub struct PortalsArgs {
    #[command(subcommand)]
    cmd: PortalsCmd,
}

#[derive(Debug, Subcommand)]
enum PortalsCmd {
    /// Issue a portal credential for one tenant: an nkey seed written to --out (mode 0600).
    Add {
        /// The tenant whose intake and status the credential may use (must exist).
        #[arg(long, value_parser = crate::known::id)]
        tenant: String,
        /// File to write the seed to (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a portal credential by its public key.
    Revoke {
        /// The credential's public key (`U...`, as `portals add` printed it).
        #[arg(long, value_parser = crate::known::public_key)]
        key: String,
        /// Why, recorded in the audit trail.
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
    },
}

#[derive(Serialize)]
struct PortalIssued {
    tenant_id: String,
    public_key: String,
    seed_file: PathBuf,
}

pub async fn portals(args: PortalsArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let pool = global.pool().await?;
    let by = actor();
    match args.cmd {
        PortalsCmd::Add { tenant, out } => {
            crate::known::tenant(&pool, &tenant).await?;
            let key = nkeys::KeyPair::new_user();
            tillsync_broker::admin::keyfile::write_new(&out, &key)
                .map_err(|e| anyhow::anyhow!("{}: {e} (it must not exist yet)", out.display()))?;
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO credentials (public_key, kind, tenant_id, created_by) VALUES ($1, 'portal', $2, $3)",
            )
            .bind(key.public_key())
            .bind(&tenant)
            .bind(&by)
            .execute(&mut *tx)
            .await?;
            let pk = key.public_key();
            let audit = records::Audit {
                action: "portal_issued",
                tenant: Some(&tenant),
                public_key: Some(&pk),
                actor: &by,
                ..Default::default()
            };
            records::audit(&mut *tx, &audit).await?;
            tx.commit().await?;
            let issued = PortalIssued { tenant_id: tenant, public_key: pk, seed_file: out };
            emit(global.json, &issued, |i| {
                format!(
                    "Portal credential for tenant {} ({}) written to {}.\nIt may publish tillsync.intake.{}.> and read tillsync.status.{}.> only.",
                    i.tenant_id,
                    i.public_key,
                    i.seed_file.display(),
                    i.tenant_id,
                    i.tenant_id
                )
            })?;
        }
        PortalsCmd::Revoke { key, reason } => {
            let mut tx = pool.begin().await?;
            let before: Option<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
                "SELECT tenant_id, revoked_at FROM credentials WHERE public_key = $1 AND kind = 'portal' FOR UPDATE",
            )
            .bind(&key)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((tenant, revoked_at)) = before else { return Err(unknown_portal_key(&key).into()) };
            if let Some(at) = revoked_at {
                let out = serde_json::json!({"revoked": key, "tenant_id": tenant, "already": true, "revoked_at": at});
                emit(global.json, &out, |_| {
                    format!("Portal credential {key} was already revoked ({}).", ts(Some(at)))
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            sqlx::query(
                "UPDATE credentials SET revoked_at = now(), revoked_by = $2, revoke_reason = $3
                 WHERE public_key = $1 AND kind = 'portal' AND revoked_at IS NULL",
            )
            .bind(&key)
            .bind(&by)
            .bind(&reason)
            .execute(&mut *tx)
            .await?;
            let audit = records::Audit {
                action: "revoked",
                reason: Some(&reason),
                public_key: Some(&key),
                actor: &by,
                ..Default::default()
            };
            records::audit(&mut *tx, &audit).await?;
            tx.commit().await?;
            let out = serde_json::json!({"revoked": key, "tenant_id": tenant, "already": false});
            emit(global.json, &out, |_| format!("Portal credential {key} of tenant {tenant} revoked."))?;
        }
    }
    pool.close().await;
    Ok(ExitCode::SUCCESS)
}

/// No portal credential has the key: exit 4.
fn unknown_portal_key(key: &str) -> crate::failure::Missing {
    crate::failure::Missing {
        code: "unknown_portal_key",
        message: format!("no portal credential has the key {key}"),
        hint: "check the key: the `U...` one `tillsync portals add` printed (identity_audit rows `portal_issued` \
               name every one issued)"
            .into(),
    }
}

#[derive(Debug, Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    cmd: AuthCmd,
}

#[derive(Debug, Subcommand)]
enum AuthCmd {
    /// Generate the NATS service keys and the nats-server authorization config into DIR.
    Init {
        /// Directory for the keys and `nats-server.conf` (created; existing keys are kept).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Generate cluster route security into DIR: a route CA, the nodes' certificate and key, and
    /// `routes.conf` (route user and password, mutual TLS, the routes) to include inside the
    /// `cluster {}` block of every node. A node without them is refused by the others.
    Routes {
        /// Directory to write into (the one `auth init` wrote; existing route files are kept).
        #[arg(long)]
        dir: PathBuf,
        /// Where nats-server sees DIR (the config names the certificate files by this path).
        #[arg(long)]
        nats_dir: Option<PathBuf>,
        /// Every node's route address, HOST:PORT (repeat for each node; the certificate is
        /// issued for these host names).
        #[arg(long = "route", value_name = "HOST:PORT", required = true)]
        routes: Vec<String>,
    },
    /// Generate client TLS into DIR: a client CA (its key is not kept), the NATS server's
    /// certificate and key for the host names given, one client certificate and key for the
    /// broker, CLI and bridges, and `tls.conf` to include at the top level of the server config
    /// (`verify: true`: no client connects without a certificate, none in plain text).
    Tls {
        /// Directory to write into (may be the one `auth init` wrote; existing TLS files are kept).
        #[arg(long)]
        dir: PathBuf,
        /// Where nats-server sees DIR (the config names the certificate files by this path).
        #[arg(long)]
        nats_dir: Option<PathBuf>,
        /// A host name or IP address clients dial the server by (repeat for each; the server's
        /// certificate is issued for these).
        #[arg(long = "host", value_name = "NAME", required = true)]
        hosts: Vec<String>,
    },
}

pub async fn auth_cmd(args: AuthArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let dir = match args.cmd {
        AuthCmd::Init { dir } => dir,
        AuthCmd::Routes { dir, nats_dir, routes } => return auth_routes(&dir, nats_dir, &routes, global),
        AuthCmd::Tls { dir, nats_dir, hosts } => return auth_tls(&dir, nats_dir, &hosts, global),
    };
    let files = auth::setup::generate(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let out = serde_json::json!({
        "dir": files.dir,
        "server_config": files.path(auth::setup::SERVER_CONF),
        "broker": files.path(auth::setup::BROKER),
        "operator": files.path(auth::setup::OPERATOR),
        "auth_callout": files.path(auth::setup::CALLOUT),
        "system": files.path(auth::setup::SYSTEM),
        "issuer": files.path(auth::setup::ISSUER),
        "signing": files.path(auth::setup::SIGNING),
    });
    emit(global.json, &out, |_| {
        let p = |n: &str| files.path(n).display().to_string();
        format!(
            "Wrote NATS authorization keys to {} (mode 0600).\n\
             nats-server:   include {}\n\
             broker:        NATS_CREDS={} TILLSYNC_AUTH_CALLOUT_CREDS={} TILLSYNC_AUTH_ISSUER_SEED={} TILLSYNC_NATS_SYSTEM_CREDS={} TILLSYNC_SIGNING_KEY_FILE={}\n\
             tillsync CLI:  NATS_CREDS={}\n",
            files.dir.display(),
            p(auth::setup::SERVER_CONF),
            p(auth::setup::BROKER),
            p(auth::setup::CALLOUT),
            p(auth::setup::ISSUER),
            p(auth::setup::SYSTEM),
            p(auth::setup::SIGNING),
            p(auth::setup::OPERATOR),
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

fn auth_routes(dir: &Path, nats_dir: Option<PathBuf>, routes: &[String], global: &Global) -> anyhow::Result<ExitCode> {
    use auth::routes as r;
    let nats_dir = nats_dir.unwrap_or_else(|| dir.to_path_buf());
    let conf = r::generate(dir, &nats_dir, routes).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let out = serde_json::json!({
        "routes_config": conf,
        "ca": dir.join(r::ROUTE_CA),
        "cert": dir.join(r::ROUTE_CERT),
        "key": dir.join(r::ROUTE_KEY),
        "routes": routes,
    });
    emit(global.json, &out, |_| {
        format!(
            "Wrote cluster route security to {} (mode 0600).\n\
             nats-server, inside cluster {{}} of every node:  include {}\n",
            dir.display(),
            nats_dir.join(r::ROUTES_CONF).display(),
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Exit 2 for a bad host (nothing written), 1 when a file exists or a write fails.
fn auth_tls(dir: &Path, nats_dir: Option<PathBuf>, hosts: &[String], global: &Global) -> anyhow::Result<ExitCode> {
    use auth::client_tls as t;
    let nats_dir = nats_dir.unwrap_or_else(|| dir.to_path_buf());
    let conf = t::generate(dir, &nats_dir, hosts).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => anyhow::Error::new(crate::failure::Usage(e.to_string())),
        _ => anyhow::anyhow!("{}: {e}", dir.display()),
    })?;
    let out = serde_json::json!({
        "tls_config": conf,
        "ca": dir.join(t::CA),
        "server_cert": dir.join(t::SERVER_CERT),
        "server_key": dir.join(t::SERVER_KEY),
        "client_cert": dir.join(t::CLIENT_CERT),
        "client_key": dir.join(t::CLIENT_KEY),
        "hosts": hosts,
    });
    emit(global.json, &out, |_| {
        let p = |n: &str| dir.join(n).display().to_string();
        format!(
            "Wrote NATS client TLS to {} (mode 0600).\n\
             nats-server, at the top level:  include {}\n\
             broker, tillsync, tillsync-edge:  NATS_URL=tls://{}:4222 NATS_CA_FILE={} NATS_CERT_FILE={} NATS_KEY_FILE={}\n",
            dir.display(),
            nats_dir.join(t::TLS_CONF).display(),
            hosts[0],
            p(t::CA),
            p(t::CLIENT_CERT),
            p(t::CLIENT_KEY),
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
