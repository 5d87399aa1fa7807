//! `tillsync config publish|show|diff|status`: head office's configuration of the stores
//! (docs/operations.md, "Configuration"). A publish is written to Postgres here; the broker
//! puts the new versions on JetStream. An unknown tenant, store or version is exit 4; a publish
//! to an unknown tenant or store is recorded as refused (`config_refusals`) and exits 4 too.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;
use tillsync_broker::admin::store_config::{self, model, rows, PublishError};
use tillsync_schemas::config::{Change, ChangeRequest, ChangeSet, PublishReply, Refusal, Refused};

use crate::failure::Missing;
use crate::global::Global;
use crate::known;
use crate::output::{emit, table, ts};

/// Exit code of a refused publish (the code and detail are printed).
pub const REFUSED: u8 = 6;

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    cmd: ConfigCmd,
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Publish a change set (a JSON file): every store of the tenant, or one store's settings,
    /// gets its next version. Exit 6 when refused.
    Publish {
        /// The tenant whose stores get the change set.
        #[arg(long, value_parser = known::id)]
        tenant: String,
        /// Publish for this store only (settings only).
        #[arg(long, value_parser = known::id)]
        store: Option<String>,
        /// Refuse unless the store is at this version (precondition_failed).
        #[arg(long)]
        if_match: Option<u64>,
        /// Who publishes (recorded with the versions); default $USER.
        #[arg(long)]
        by: Option<String>,
        /// The change set: {"changes": [{"op": "upsert"|"delete", "type", "id", "body"}]}.
        file: PathBuf,
    },
    /// A store's configuration at a version (default: its newest).
    Show {
        /// The store's tenant.
        #[arg(long, value_parser = known::id)]
        tenant: String,
        /// The store.
        #[arg(long, value_parser = known::id)]
        store: String,
        /// The version to show (default: the newest).
        #[arg(long)]
        version: Option<u64>,
    },
    /// What differs in a store's configuration between two versions.
    Diff {
        /// The store's tenant.
        #[arg(long, value_parser = known::id)]
        tenant: String,
        /// The store.
        #[arg(long, value_parser = known::id)]
        store: String,
        /// The older version.
        from: u64,
        /// The newer version.
        to: u64,
    },
    /// Per device: the version it should run, the one it applied, and since when they differ.
    Status {
        /// Only this tenant's devices.
        #[arg(long, value_parser = known::id)]
        tenant: Option<String>,
        /// Only devices behind their store's version.
        #[arg(long)]
        behind: bool,
    },
}

pub async fn run(args: ConfigArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let pool = global.pool().await?;
    let code = match args.cmd {
        ConfigCmd::Publish { tenant, store, if_match, by, file } => {
            let by = by.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "cli".into());
            publish(&pool, global, Flags { tenant, store, if_match, by }, &file).await?
        }
        ConfigCmd::Show { tenant, store, version } => show(&pool, global, &tenant, &store, version).await?,
        ConfigCmd::Diff { tenant, store, from, to } => diff(&pool, global, &tenant, &store, from, to).await?,
        ConfigCmd::Status { tenant, behind } => status(&pool, global, tenant.as_deref(), behind).await?,
    };
    pool.close().await;
    Ok(code)
}

struct Flags {
    tenant: String,
    store: Option<String>,
    if_match: Option<u64>,
    by: String,
}

/// The file as head office writes it: tenant and store optional (the flags say them).
#[derive(serde::Deserialize)]
struct ChangeFile {
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    store_id: Option<String>,
    #[serde(default)]
    if_match: Option<u64>,
    changes: Vec<ChangeRequest>,
}

/// The change set the flags and the file describe, or why they disagree.
fn change_set(flags: &Flags, text: &str) -> Result<ChangeSet, Refused> {
    let file: ChangeFile = serde_json::from_str(text)
        .map_err(|e| Refused::new(Refusal::Undecodable, format!("the file is not a change set: {e}")))?;
    if let Some(t) = file.tenant_id.as_ref().filter(|t| **t != flags.tenant) {
        return Err(Refused::new(
            Refusal::WrongTenant,
            format!("the file names tenant {t:?}, --tenant is {:?}", flags.tenant),
        ));
    }
    if file.store_id.is_some() && file.store_id != flags.store {
        return Err(Refused::new(
            Refusal::WrongTenant,
            format!(
                "the file names store {}, --store is {}",
                file.store_id.as_deref().unwrap_or("(none)"),
                flags.store.as_deref().unwrap_or("not given")
            ),
        ));
    }
    Ok(ChangeSet {
        tenant_id: flags.tenant.clone(),
        store_id: flags.store.clone(),
        if_match: flags.if_match.or(file.if_match),
        published_by: flags.by.clone(),
        changes: file.changes,
    })
}

async fn publish(pool: &sqlx::PgPool, global: &Global, flags: Flags, file: &PathBuf) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let result = match change_set(&flags, &text) {
        Ok(cs) => store_config::publish(pool, &cs).await,
        Err(r) => {
            let cs = ChangeSet {
                tenant_id: flags.tenant.clone(),
                store_id: flags.store.clone(),
                if_match: flags.if_match,
                published_by: flags.by.clone(),
                changes: vec![],
            };
            store_config::record_refusal(pool, &cs, &r).await?;
            Err(PublishError::Refused(r))
        }
    };
    let (reply, code) = match result {
        Ok(p) => (PublishReply::Published { publish_id: p.publish_id, versions: p.versions }, ExitCode::SUCCESS),
        Err(PublishError::Refused(r)) => {
            if matches!(r.code, Refusal::UnknownTenant | Refusal::UnknownStore) {
                // Recorded in config_refusals as every refusal is; a name that does not exist
                // ends as it does in every other subcommand (exit 4, with where to look).
                known::filters(pool, Some(&flags.tenant), flags.store.as_deref(), None).await?;
            }
            (PublishReply::Refused { code: r.code.as_str().into(), detail: r.detail }, ExitCode::from(REFUSED))
        }
        Err(PublishError::Db(e)) => return Err(e.into()),
    };
    emit(global.json, &reply, |r| match r {
        PublishReply::Published { publish_id, versions } if versions.is_empty() => {
            format!("Published {publish_id}: the tenant has no stores yet; each new store gets it as its version 1.")
        }
        PublishReply::Published { publish_id, versions } => {
            let cells: Vec<Vec<String>> = versions.iter().map(|(s, v)| vec![s.clone(), v.to_string()]).collect();
            format!("Published {publish_id}.\n{}", table(&["STORE", "VERSION"], &cells))
        }
        PublishReply::Refused { code, detail } => format!("Refused: {code}: {detail}"),
    })?;
    Ok(code)
}

#[derive(Serialize)]
struct Shown {
    tenant_id: String,
    store_id: String,
    version: u64,
    entities: Vec<Change>,
}

/// Checks that the store has `version` (1..=current; `None`: its newest, so at least one) and
/// returns it; exit 4 naming the versions it has.
async fn check_version(pool: &sqlx::PgPool, tenant: &str, store: &str, version: Option<u64>) -> anyhow::Result<u64> {
    let current = rows::current_version(pool, tenant, store).await? as u64;
    let version = version.unwrap_or(current);
    if (1..=current).contains(&version) {
        return Ok(version);
    }
    let (message, hint) = if current == 0 {
        let asked = if version == 0 { String::new() } else { format!(" (asked for version {version})") };
        (
            format!("store {store} of tenant {tenant} has no configuration version yet{asked}"),
            format!("publish one first: tillsync config publish --tenant {tenant} FILE"),
        )
    } else {
        (
            format!("store {store} of tenant {tenant} has no version {version}: it has versions 1 to {current}"),
            format!("tillsync config show --tenant {tenant} --store {store} shows its newest ({current})"),
        )
    };
    Err(Missing { code: "not_found", message, hint }.into())
}

async fn show(
    pool: &sqlx::PgPool,
    global: &Global,
    tenant: &str,
    store: &str,
    version: Option<u64>,
) -> anyhow::Result<ExitCode> {
    known::store(pool, tenant, store).await?;
    let version = check_version(pool, tenant, store, version).await?;
    let state = rows::state_at(pool, tenant, store, version as i64).await?;
    let shown =
        Shown { tenant_id: tenant.into(), store_id: store.into(), version, entities: model::as_changes(&state) };
    emit(global.json, &shown, |s| {
        let cells: Vec<Vec<String>> =
            s.entities.iter().map(|c| vec![c.entity_type.as_str().into(), c.id.clone(), body_text(&c.body)]).collect();
        format!(
            "Store {} of {} at version {}:\n{}",
            s.store_id,
            s.tenant_id,
            s.version,
            table(&["TYPE", "ID", "BODY"], &cells)
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

fn body_text(body: &Option<serde_json::Value>) -> String {
    body.as_ref().map(|b| b.to_string()).unwrap_or_else(|| "-".into())
}

#[derive(Serialize)]
struct Diffed {
    tenant_id: String,
    store_id: String,
    from: u64,
    to: u64,
    changes: Vec<model::EntityDiff>,
}

async fn diff(
    pool: &sqlx::PgPool,
    global: &Global,
    tenant: &str,
    store: &str,
    from: u64,
    to: u64,
) -> anyhow::Result<ExitCode> {
    known::store(pool, tenant, store).await?;
    check_version(pool, tenant, store, Some(from)).await?;
    check_version(pool, tenant, store, Some(to)).await?;
    let (a, b) = (
        rows::state_at(pool, tenant, store, from as i64).await?,
        rows::state_at(pool, tenant, store, to as i64).await?,
    );
    let d = Diffed { tenant_id: tenant.into(), store_id: store.into(), from, to, changes: model::diff(&a, &b) };
    emit(global.json, &d, |d| {
        let cells: Vec<Vec<String>> = d
            .changes
            .iter()
            .map(|c| vec![c.change.into(), c.entity_type.as_str().into(), c.id.clone(), body_text(&c.after)])
            .collect();
        format!(
            "Store {} of {}, version {} to {}:\n{}",
            d.store_id,
            d.tenant_id,
            d.from,
            d.to,
            table(&["CHANGE", "TYPE", "ID", "NOW"], &cells)
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize, sqlx::FromRow)]
struct DeviceConfig {
    tenant_id: String,
    store_id: String,
    device_id: String,
    /// The store's newest version: what the device should run.
    desired: i64,
    /// The version the device's last heartbeat reported applied (none before its first).
    applied: Option<i64>,
    /// When the first version the device lacks was published (none when it is current).
    behind_since: Option<DateTime<Utc>>,
    online: bool,
}

async fn status(pool: &sqlx::PgPool, global: &Global, tenant: Option<&str>, behind: bool) -> anyhow::Result<ExitCode> {
    known::filters(pool, tenant, None, None).await?;
    let rows: Vec<DeviceConfig> = sqlx::query_as(
        "SELECT d.tenant_id, d.store_id, d.device_id, COALESCE(c.version, 0) AS desired, d.config_revision AS applied,
                v.published_at AS behind_since, d.online
         FROM devices d
         LEFT JOIN config_stores c ON c.tenant_id = d.tenant_id AND c.store_id = d.store_id
         LEFT JOIN config_versions v ON v.tenant_id = d.tenant_id AND v.store_id = d.store_id
              AND v.version = COALESCE(d.config_revision, 0) + 1
         WHERE ($1::text IS NULL OR d.tenant_id = $1)
           AND (NOT $2 OR COALESCE(d.config_revision, 0) < COALESCE(c.version, 0))
         ORDER BY d.tenant_id, d.store_id, d.device_id",
    )
    .bind(tenant)
    .bind(behind)
    .fetch_all(pool)
    .await?;
    emit(global.json, &rows, |rows| {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.tenant_id.clone(),
                    r.store_id.clone(),
                    r.device_id.clone(),
                    r.desired.to_string(),
                    r.applied.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                    ts(r.behind_since),
                    if r.online { "online" } else { "offline" }.into(),
                ]
            })
            .collect();
        table(&["TENANT", "STORE", "DEVICE", "DESIRED", "APPLIED", "BEHIND SINCE", "STATE"], &cells)
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(store: Option<&str>) -> Flags {
        Flags { tenant: "acme".into(), store: store.map(Into::into), if_match: None, by: "hq".into() }
    }

    #[test]
    fn the_file_must_agree_with_the_flags() {
        let ok = r#"{"changes": [{"op": "delete", "type": "tender", "id": "cash"}]}"#;
        let cs = change_set(&flags(None), ok).unwrap();
        assert_eq!((cs.tenant_id.as_str(), cs.published_by.as_str()), ("acme", "hq"));
        let other = r#"{"tenant_id": "globex", "changes": []}"#;
        assert_eq!(change_set(&flags(None), other).unwrap_err().code, Refusal::WrongTenant);
        let store = r#"{"tenant_id": "acme", "store_id": "s1", "changes": []}"#;
        assert_eq!(change_set(&flags(None), store).unwrap_err().code, Refusal::WrongTenant);
        assert!(change_set(&flags(Some("s1")), store).is_ok());
        assert_eq!(change_set(&flags(None), "{").unwrap_err().code, Refusal::Undecodable);
    }
}
