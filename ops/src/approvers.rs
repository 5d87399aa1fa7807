//! `tillsync approvers add|list|revoke`: the people of a tenant whose signed approvals count
//! (`schemas::approval`). Each has its own nkey; the broker keeps only the public key and
//! verifies every approval and every decision (`tillsync commands approve|reject`) with it. A
//! revoked approver's signatures no longer count, on commands still waiting as on new ones.
//!
//! Exit codes: 0 done; 1 a decommissioned tenant, an approver already registered (and not
//! revoked), an unreadable key file; 2 a bad id or public key; 4 an unknown tenant, `revoke` of
//! an approver the tenant does not have.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;
use tillsync_schemas::approval::{self, Decision, TEST_APPROVERS};
use tillsync_schemas::{Approval, CommandEnvelope};

use crate::failure::{Known, NotFound, Usage};
use crate::global::Global;
use crate::identity;
use crate::output::{emit, table, ts};

#[derive(Debug, Args)]
pub struct ApproversArgs {
    #[command(subcommand)]
    cmd: ApproversCmd,
}

#[derive(Debug, Subcommand)]
enum ApproversCmd {
    /// Register an approver of a tenant with its public key (from its seed file, or given).
    /// Refused for an approver already registered and not revoked; a revoked one is registered
    /// again with the key given.
    Add {
        /// The approver's tenant; it must exist (`tillsync tenants add`).
        #[arg(long, value_parser = crate::known::id)]
        tenant: String,
        /// The approver's id, as approvals name it: letters, digits, `_` and `-`, up to 64.
        #[arg(value_parser = crate::known::id)]
        approver: String,
        #[command(flatten)]
        key: KeySource,
    },
    /// A tenant's approvers: id, public key, when added and when revoked.
    List {
        /// The tenant whose approvers to list.
        #[arg(long, value_parser = crate::known::id)]
        tenant: String,
    },
    /// Revoke an approver: its signatures no longer count, on commands still waiting too.
    Revoke {
        /// The approver's tenant.
        #[arg(long, value_parser = crate::known::id)]
        tenant: String,
        /// The approver to revoke.
        #[arg(value_parser = crate::known::id)]
        approver: String,
    },
}

/// Where an approver's public key comes from: exactly one of the two.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct KeySource {
    /// The approver's nkey seed file (`tillsync keys generate FILE`); only its public key is
    /// stored. The approver keeps the file to sign with (`tillsync commands approve`).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The approver's public nkey (`U...`, as `tillsync keys public FILE` prints it), when the
    /// seed stays with the approver.
    #[arg(long)]
    public_key: Option<String>,
}

impl KeySource {
    fn public_key(&self) -> anyhow::Result<String> {
        match (&self.key_file, &self.public_key) {
            (Some(file), _) => Ok(tillsync_broker::admin::keyfile::read_seed(file)?.public_key()),
            (None, Some(key)) => {
                tillsync_schemas::signature::check_public_key(key).map_err(|e| Usage(format!("--public-key: {e}")))?;
                Ok(key.clone())
            }
            (None, None) => Err(Usage("pass --key-file or --public-key".into()).into()),
        }
    }
}

#[derive(Serialize, sqlx::FromRow)]
struct ApproverRow {
    approver_id: String,
    public_key: String,
    added_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
struct Added {
    tenant_id: String,
    approver_id: String,
    public_key: String,
    /// Registered again after a revocation (the key given replaced the old one).
    re_registered: bool,
}

#[derive(Serialize)]
struct Revoked {
    tenant_id: String,
    approver_id: String,
    /// Revoked by an earlier run: nothing changed.
    already: bool,
    revoked_at: DateTime<Utc>,
}

pub async fn run(args: ApproversArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let pool = global.pool().await?;
    match args.cmd {
        ApproversCmd::Add { tenant, approver, key } => {
            check_approver_id(&approver)?;
            let public_key = key.public_key()?;
            let added = add(&pool, &tenant, &approver, &public_key).await?;
            emit(global.json, &added, |a| {
                let again = if a.re_registered { " again (it had been revoked)" } else { "" };
                format!(
                    "Approver {} of tenant {} registered{again} with key {}.",
                    a.approver_id, a.tenant_id, a.public_key
                )
            })?;
        }
        ApproversCmd::List { tenant } => {
            known_tenant(&pool, &tenant).await?;
            let rows: Vec<ApproverRow> = sqlx::query_as(
                "SELECT approver_id, public_key, added_at, revoked_at FROM approvers
                 WHERE tenant_id = $1 ORDER BY approver_id",
            )
            .bind(&tenant)
            .fetch_all(&pool)
            .await?;
            emit(global.json, &rows, |rows| {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| vec![r.approver_id.clone(), r.public_key.clone(), ts(Some(r.added_at)), ts(r.revoked_at)])
                    .collect();
                table(&["APPROVER", "PUBLIC KEY", "ADDED", "REVOKED"], &cells)
            })?;
        }
        ApproversCmd::Revoke { tenant, approver } => {
            let revoked = revoke(&pool, &tenant, &approver).await?;
            emit(global.json, &revoked, |r| {
                if r.already {
                    format!(
                        "Approver {} of tenant {} was already revoked ({}).",
                        r.approver_id,
                        r.tenant_id,
                        ts(Some(r.revoked_at))
                    )
                } else {
                    format!(
                        "Approver {} of tenant {} revoked: its signatures no longer count.",
                        r.approver_id, r.tenant_id
                    )
                }
            })?;
        }
    }
    pool.close().await;
    Ok(ExitCode::SUCCESS)
}

/// An approver id as approvals carry it (the broker checks the same).
fn check_approver_id(id: &str) -> anyhow::Result<()> {
    tillsync_schemas::ids::check_id("approver", id).map_err(|e| Usage(format!("{e}")))?;
    Ok(())
}

async fn add(pool: &sqlx::PgPool, tenant: &str, approver: &str, public_key: &str) -> anyhow::Result<Added> {
    known_tenant(pool, tenant).await?;
    let mut tx = pool.begin().await?;
    let existing: Option<(String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT public_key, revoked_at FROM approvers WHERE tenant_id = $1 AND approver_id = $2 FOR UPDATE",
    )
    .bind(tenant)
    .bind(approver)
    .fetch_optional(&mut *tx)
    .await?;
    let re_registered = match existing {
        Some((key, None)) => {
            let same = if key == public_key { " with this very key" } else { " with another key" };
            return Err(Known {
                code: "approver_exists",
                message: format!("approver {approver} of tenant {tenant} is already registered{same} ({key})"),
                hint: format!(
                    "nothing changed; to replace its key: tillsync approvers revoke --tenant {tenant} {approver}, \
                     then add it again"
                ),
            }
            .into());
        }
        Some((_, Some(_))) => {
            sqlx::query(
                "UPDATE approvers SET public_key = $3, added_at = now(), revoked_at = NULL
                 WHERE tenant_id = $1 AND approver_id = $2",
            )
            .bind(tenant)
            .bind(approver)
            .bind(public_key)
            .execute(&mut *tx)
            .await?;
            true
        }
        None => {
            // ON CONFLICT: a concurrent add of the same id leaves the first; this one reports it.
            let inserted = sqlx::query(
                "INSERT INTO approvers (tenant_id, approver_id, public_key) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(tenant)
            .bind(approver)
            .bind(public_key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Err(Known {
                    code: "approver_exists",
                    message: format!("approver {approver} of tenant {tenant} is already registered"),
                    hint: "nothing changed: it was registered concurrently; `tillsync approvers list` shows it".into(),
                }
                .into());
            }
            false
        }
    };
    let audit = tillsync_broker::admin::auth::records::Audit {
        action: "approver_added",
        tenant: Some(tenant),
        public_key: Some(public_key),
        actor: &identity::actor(),
        detail: &format!("approver {approver}{}", if re_registered { " (again, after a revocation)" } else { "" }),
        ..Default::default()
    };
    tillsync_broker::admin::auth::records::audit(&mut *tx, &audit).await?;
    tx.commit().await?;
    Ok(Added {
        tenant_id: tenant.to_string(),
        approver_id: approver.to_string(),
        public_key: public_key.to_string(),
        re_registered,
    })
}

async fn revoke(pool: &sqlx::PgPool, tenant: &str, approver: &str) -> anyhow::Result<Revoked> {
    crate::known::tenant(pool, tenant).await?;
    let mut tx = pool.begin().await?;
    let row: Option<(String, Option<DateTime<Utc>>, DateTime<Utc>)> = sqlx::query_as(
        "WITH before AS (
           SELECT revoked_at FROM approvers WHERE tenant_id = $1 AND approver_id = $2 FOR UPDATE
         )
         UPDATE approvers a SET revoked_at = coalesce(a.revoked_at, now())
         FROM before WHERE a.tenant_id = $1 AND a.approver_id = $2
         RETURNING a.public_key, before.revoked_at, a.revoked_at",
    )
    .bind(tenant)
    .bind(approver)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((public_key, before, revoked_at)) = row else {
        // Says why, with where to look.
        crate::known::approver(pool, tenant, approver).await?;
        return Err(NotFound(format!("no approver {approver} in tenant {tenant}")).into());
    };
    let already = before.is_some();
    if !already {
        let audit = tillsync_broker::admin::auth::records::Audit {
            action: "approver_revoked",
            tenant: Some(tenant),
            public_key: Some(&public_key),
            actor: &identity::actor(),
            detail: &format!("approver {approver}"),
            ..Default::default()
        };
        tillsync_broker::admin::auth::records::audit(&mut *tx, &audit).await?;
    }
    tx.commit().await?;
    Ok(Revoked { tenant_id: tenant.to_string(), approver_id: approver.to_string(), already, revoked_at })
}

/// Registers the two public test approvers ([`TEST_APPROVERS`]) in `tenant` (if not there):
/// for the benchmarks and the chaos run only, whose commands [`test_approvals`] signs.
pub async fn add_test_approvers(pool: &sqlx::PgPool, tenant: &str) -> sqlx::Result<()> {
    for (i, (id, _)) in TEST_APPROVERS.iter().enumerate() {
        sqlx::query(
            "INSERT INTO approvers (tenant_id, approver_id, public_key) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(id)
        .bind(approval::test_key(i).public_key())
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// `n` (at most 2) approvals of `cmd` by the test approvers, signed with their public test
/// keys (see [`add_test_approvers`]). `cmd.requested_by` must not be one of them.
pub fn test_approvals(cmd: &CommandEnvelope, n: usize, at_ms: i64) -> Vec<Approval> {
    TEST_APPROVERS
        .iter()
        .enumerate()
        .take(n)
        .map(|(i, (id, _))| Approval {
            approver: (*id).to_string(),
            role: "manager".into(),
            approved_at_ms: at_ms,
            signature: Some(approval::sign(&approval::test_key(i), cmd, id, Decision::Approve)),
        })
        .collect()
}

/// Refuses a tenant not in `tenants` (exit 4), or decommissioned (exit 1).
async fn known_tenant(pool: &sqlx::PgPool, tenant: &str) -> anyhow::Result<()> {
    let gone: Option<bool> =
        sqlx::query_scalar("SELECT decommissioned_at IS NOT NULL FROM tenants WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(pool)
            .await?;
    match gone {
        Some(false) => Ok(()),
        Some(true) => Err(Known {
            code: "tenant_decommissioned",
            message: format!("tenant {tenant} was decommissioned; its approvers cannot change"),
            hint: "nothing changed".into(),
        }
        .into()),
        None => Err(crate::known::unknown_tenant(tenant).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_comes_from_a_seed_file_or_a_checked_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bob.nk");
        let key = nkeys::KeyPair::new_user();
        tillsync_broker::admin::keyfile::write_new(&file, &key).unwrap();
        let from_file = KeySource { key_file: Some(file), public_key: None };
        assert_eq!(from_file.public_key().unwrap(), key.public_key());
        let given = KeySource { key_file: None, public_key: Some(key.public_key()) };
        assert_eq!(given.public_key().unwrap(), key.public_key());
        let bad = KeySource { key_file: None, public_key: Some("UNOTAKEY".into()) };
        let e = bad.public_key().unwrap_err();
        assert!(e.downcast_ref::<Usage>().is_some(), "{e}");
        let missing = KeySource { key_file: Some(dir.path().join("none.nk")), public_key: None };
        assert!(missing.public_key().is_err());
    }

    #[test]
    fn test_approvals_verify_with_the_test_keys() {
        let body = tillsync_schemas::CommandBody::VoidOrder { order_id: "o".into(), reason: "r".into() };
        let cmd = CommandEnvelope {
            schema_version: tillsync_schemas::SCHEMA_VERSION,
            command_id: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
            tenant_id: "t".into(),
            store_id: "s".into(),
            device_id: None,
            body,
            issued_at_ms: 1,
            expires_at_ms: 2,
            requested_by: "portal".into(),
            approvals: vec![],
            if_match: None,
        };
        let approvals = test_approvals(&cmd, 2, 1);
        assert_eq!(approvals.len(), 2);
        for (i, a) in approvals.iter().enumerate() {
            let key = approval::test_key(i).public_key();
            assert!(approval::verify(&key, &cmd, &a.approver, Decision::Approve, a.signature.as_deref().unwrap()));
        }
        assert_eq!(test_approvals(&cmd, 1, 1).len(), 1);
    }

    #[test]
    fn approver_ids_are_checked() {
        assert!(check_approver_id("bob").is_ok());
        assert!(check_approver_id("approver-a").is_ok());
        for bad in ["", "-x", "a b", "a.b"] {
            assert!(check_approver_id(bad).is_err(), "{bad:?}");
        }
    }
}
