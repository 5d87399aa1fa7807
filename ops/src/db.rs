//! Postgres connections of the CLI: the live database, another database, or a shadow schema
//! of the live one (every connection's `search_path` set to it), always in UTC so timestamps
//! compare as text.

use anyhow::Context;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// A schema name safe to interpolate: lower-case letters, digits and `_`, not starting with a digit.
pub fn check_schema(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && !matches!(name, "public" | "pg_catalog" | "information_schema");
    if !ok {
        let why = format!("schema name {name:?} must be lower-case letters, digits and _ (and not public)");
        return Err(crate::failure::Usage(why).into());
    }
    Ok(())
}

/// A pool on `url`, optionally confined to `schema`.
pub async fn pool(url: &str, schema: Option<&str>, max: u32) -> anyhow::Result<PgPool> {
    connect(url, schema, max, false).await
}

/// A pool for a replay target (a shadow schema or another database), whose transactions
/// commit without waiting for their WAL flush (`synchronous_commit = off`). That is safe for
/// a rebuild: a crash loses only the newest commits, in WAL order, so a lost batch takes its
/// later progress row with it and `--resume` replays it; nothing is half-applied.
pub async fn rebuild_pool(url: &str, schema: Option<&str>, max: u32) -> anyhow::Result<PgPool> {
    connect(url, schema, max, true).await
}

async fn connect(url: &str, schema: Option<&str>, max: u32, async_commit: bool) -> anyhow::Result<PgPool> {
    let app = if async_commit { "tillsync replay" } else { "tillsync-cli" };
    let mut opts =
        tillsync_broker::admin::db::options(url, app).with_context(|| format!("bad database URL {}", redact(url)))?;
    opts = opts.options([("TimeZone", "UTC")]);
    if let Some(s) = schema {
        check_schema(s)?;
        opts = opts.options([("search_path", s)]);
    }
    if async_commit {
        opts = opts.options([("synchronous_commit", "off")]);
    }
    // One direct attempt first: the pool retries a refused connection until its acquire
    // timeout and then says only "timed out", losing the cause an operator needs.
    let first = sqlx::ConnectOptions::connect(&opts)
        .await
        .with_context(|| format!("cannot connect to Postgres at {}", redact(url)))?;
    let _ = sqlx::Connection::close(first).await;
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(opts)
        .await
        .with_context(|| format!("cannot connect to Postgres at {}", redact(url)))
}

/// Creates `schema` (if missing) in the database of `url`.
pub async fn create_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    check_schema(schema)?;
    let admin = pool(url, None, 1).await?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).execute(&admin).await?;
    admin.close().await;
    Ok(())
}

/// Applies every migration; returns how many were applied now.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<usize> {
    let before = applied(pool).await;
    tillsync_broker::admin::db::MIGRATOR.run(pool).await.context("migrating")?;
    Ok(applied(pool).await.saturating_sub(before))
}

async fn applied(pool: &PgPool) -> usize {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map(|n| n as usize)
        .unwrap_or(0)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert!(check_schema("shadow_1").is_ok());
        for bad in ["", "Shadow", "1x", "a;drop", "public", "a-b"] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
