//! What the command line names must exist. A tenant, store, device or approver that is not
//! there is refused with exit 4 ([`Missing`]) and where to find what is, before anything is read
//! or changed: a typo never succeeds with an empty table or "revoked 0 credential(s)". An id no
//! tillsync id can be (`a b`, `s1!`) is a usage error (exit 2) that clap finds first, with the
//! value parsers here ([`id`], [`command_id`], [`public_key`], [`schema`]).
//!
//! A store has no table of its own: it exists once a device of it is known (`devices`) or it
//! has a configuration (`config_stores`). Decommissioned tenants, stores and devices exist:
//! their records stay and can be listed and shown.

use sqlx::PgPool;
use tillsync_schemas::DeviceAddr;

use crate::failure::Missing;

/// clap value parser: a tenant, store, device or approver id (it becomes a subject token).
pub fn id(s: &str) -> Result<String, String> {
    tillsync_schemas::ids::check_id("id", s)
        .map(|()| s.to_string())
        .map_err(|_| "an id is letters, digits, `_` and `-` (up to 64), starting with a letter or digit".into())
}

/// clap value parser: a command id, a hyphenated UUID or a ULID (the broker records no other).
pub fn command_id(s: &str) -> Result<String, String> {
    tillsync_schemas::ids::check_uuid_or_ulid("command id", s)
        .map(|()| s.to_string())
        .map_err(|_| "a command id is a hyphenated UUID or a ULID, as `commands send` printed it".into())
}

/// clap value parser: a public nkey (`U...`).
pub fn public_key(s: &str) -> Result<String, tillsync_schemas::signature::NotAPublicKey> {
    tillsync_schemas::signature::check_public_key(s).map(|()| s.to_string())
}

/// clap value parser: a Postgres schema name the CLI creates (see [`crate::db::check_schema`]).
pub fn schema(s: &str) -> Result<String, String> {
    crate::db::check_schema(s).map(|()| s.to_string()).map_err(|e| e.to_string())
}

/// The tenant is in `tenants`.
pub async fn tenant(pool: &PgPool, tenant: &str) -> anyhow::Result<()> {
    let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)")
        .bind(tenant)
        .fetch_one(pool)
        .await?;
    if known {
        Ok(())
    } else {
        Err(unknown_tenant(tenant).into())
    }
}

pub fn unknown_tenant(tenant: &str) -> Missing {
    Missing {
        code: "unknown_tenant",
        message: format!("unknown tenant {tenant}"),
        hint: format!("add the tenant first: tillsync tenants add {tenant} (or check the name: tillsync tenants list)"),
    }
}

/// The store of the tenant exists.
pub async fn store(pool: &PgPool, tenant: &str, store: &str) -> anyhow::Result<()> {
    filters(pool, Some(tenant), Some(store), None).await
}

/// The device exists (decommissioned or not); its tenant and store first, so the message
/// names the first part that is wrong.
pub async fn device(pool: &PgPool, d: &DeviceAddr) -> anyhow::Result<()> {
    filters(pool, Some(&d.tenant_id), Some(&d.store_id), Some(&d.device_id)).await
}

/// A list's filters: each one given names something that exists (within the others given).
pub async fn filters(
    pool: &PgPool,
    tenant: Option<&str>,
    store: Option<&str>,
    device: Option<&str>,
) -> anyhow::Result<()> {
    if let Some(t) = tenant {
        self::tenant(pool, t).await?;
    }
    if let Some(s) = store {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM devices WHERE ($1::text IS NULL OR tenant_id = $1) AND store_id = $2)
                 OR EXISTS (SELECT 1 FROM config_stores WHERE ($1::text IS NULL OR tenant_id = $1) AND store_id = $2)",
        )
        .bind(tenant)
        .bind(s)
        .fetch_one(pool)
        .await?;
        if !known {
            return Err(unknown_store(tenant, s).into());
        }
    }
    if let Some(d) = device {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM devices WHERE ($1::text IS NULL OR tenant_id = $1)
                              AND ($2::text IS NULL OR store_id = $2) AND device_id = $3)",
        )
        .bind(tenant)
        .bind(store)
        .bind(d)
        .fetch_one(pool)
        .await?;
        if !known {
            return Err(unknown_device(tenant, store, d).into());
        }
    }
    Ok(())
}

fn unknown_store(tenant: Option<&str>, store: &str) -> Missing {
    let (of, list) = match tenant {
        Some(t) => (format!(" of tenant {t}"), format!("tillsync devices list --tenant {t}")),
        None => (" in any tenant".to_string(), "tillsync devices list".to_string()),
    };
    Missing {
        code: "unknown_store",
        message: format!("unknown store {store}{of}"),
        hint: format!(
            "`{list}` shows the stores and their devices (a store is known once a device of it is added: tillsync \
             devices add)"
        ),
    }
}

fn unknown_device(tenant: Option<&str>, store: Option<&str>, device: &str) -> Missing {
    let at = match (tenant, store) {
        (Some(t), Some(s)) => format!(" of {t}/{s}"),
        (Some(t), None) => format!(" of tenant {t}"),
        (None, Some(s)) => format!(" of store {s}"),
        (None, None) => String::new(),
    };
    let list = [("--tenant", tenant), ("--store", store)]
        .iter()
        .filter_map(|(flag, v)| v.map(|v| format!(" {flag} {v}")))
        .collect::<String>();
    Missing {
        code: "unknown_device",
        message: format!("unknown device {device}{at}"),
        hint: format!("`tillsync devices list{list}` shows the devices (a new one: tillsync devices add)"),
    }
}

/// `--reason R` over quarantined messages: one of the coded reasons (`tillsync_schemas::Reason`).
pub fn reason(s: &str) -> Result<String, String> {
    let codes: Vec<&str> = tillsync_schemas::Reason::ALL.iter().map(|r| r.as_str()).collect();
    if codes.contains(&s) {
        return Ok(s.to_string());
    }
    Err(format!("{s:?} is not a reason code; one of: {}", codes.join(", ")))
}

/// `--since T`: RFC 3339 or Unix milliseconds, checked as the command line is read.
pub fn since(s: &str) -> Result<String, String> {
    crate::replay::source::parse_time(s)
        .map(|_| s.to_string())
        .map_err(|_| format!("{s:?} is neither RFC 3339 (2026-12-01T10:00:00Z) nor Unix milliseconds"))
}

/// `quarantine list --tenant T`: the tenant is in `tenants`, or a quarantined message names it
/// (messages of tenants not provisioned are what the quarantine holds).
pub async fn quarantined_tenant(pool: &PgPool, tenant: &str) -> anyhow::Result<()> {
    let known: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)
             OR EXISTS (SELECT 1 FROM quarantine WHERE tenant_id = $1)",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await?;
    if known {
        return Ok(());
    }
    Err(Missing {
        code: "unknown_tenant",
        message: format!("unknown tenant {tenant}: not in tenants, and no quarantined message names it"),
        hint: "check the name: `tillsync tenants list`, `tillsync quarantine list` (its SUBJECT names the tenant)"
            .into(),
    }
    .into())
}

/// The tenant has (or had: revoked ones count) the approver.
pub async fn approver(pool: &PgPool, tenant: &str, approver: &str) -> anyhow::Result<()> {
    let known: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM approvers WHERE tenant_id = $1 AND approver_id = $2)")
            .bind(tenant)
            .bind(approver)
            .fetch_one(pool)
            .await?;
    if known {
        return Ok(());
    }
    Err(Missing {
        code: "unknown_approver",
        message: format!("tenant {tenant} has no approver {approver}"),
        hint: format!(
            "`tillsync approvers list --tenant {tenant}` shows its approvers (a new one: tillsync approvers add)"
        ),
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_parsers_take_what_tillsync_can_name() {
        assert!(id("acme").is_ok() && id("till-1").is_ok() && id("s_1").is_ok());
        for bad in ["", "a b", "-x", "_store", "s1!", "acme.eu"] {
            assert!(id(bad).is_err(), "{bad:?}");
        }
        assert!(command_id("01890a5d-ac96-774b-bcce-b302099a8057").is_ok());
        assert!(command_id("01ARZ3NDEKTSV4RRFFQ69G5FAV").is_ok());
        assert!(command_id("x").is_err());
        assert!(public_key(&nkeys::KeyPair::new_user().public_key()).is_ok());
        assert!(public_key("UNOTAKEY").is_err());
        assert!(schema("shadow_1").is_ok());
        assert!(schema("Bad").is_err() && schema("public").is_err());
    }

    #[test]
    fn hints_name_where_to_look() {
        let s = unknown_store(Some("acme"), "s9");
        assert_eq!((s.code, s.message.as_str()), ("unknown_store", "unknown store s9 of tenant acme"));
        assert!(s.hint.contains("tillsync devices list --tenant acme"), "{}", s.hint);
        let d = unknown_device(Some("acme"), Some("s1"), "till-9");
        assert_eq!(d.message, "unknown device till-9 of acme/s1");
        assert!(d.hint.contains("tillsync devices list --tenant acme --store s1"), "{}", d.hint);
        assert!(unknown_device(None, None, "x").hint.contains("`tillsync devices list` shows"));
        assert!(unknown_tenant("acm").hint.contains("tillsync tenants list"));
    }
}
