//! `tillsync migrate`: applies the broker's migrations to the database, or to a shadow schema.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use crate::global::Global;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Create and migrate this schema of the database instead of the default one.
    #[arg(long, value_parser = crate::known::schema)]
    schema: Option<String>,
}

#[derive(Serialize)]
struct Migrated {
    database: String,
    schema: Option<String>,
    applied_now: usize,
    latest_version: i64,
}

pub async fn run(args: MigrateArgs, global: &Global) -> anyhow::Result<ExitCode> {
    if let Some(s) = &args.schema {
        crate::db::create_schema(&global.database_url, s).await?;
    }
    let pool = crate::db::pool(&global.database_url, args.schema.as_deref(), 2).await?;
    let applied_now = crate::db::migrate(&pool).await?;
    let latest_version = tillsync_broker::admin::db::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    pool.close().await;
    let out = Migrated {
        database: crate::db::redact(&global.database_url),
        schema: args.schema,
        applied_now,
        latest_version,
    };
    crate::output::emit(global.json, &out, |m| {
        format!(
            "{} migration(s) applied to {}{}; schema at version {}.",
            m.applied_now,
            m.database,
            m.schema.as_ref().map(|s| format!(" (schema {s})")).unwrap_or_default(),
            m.latest_version
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
