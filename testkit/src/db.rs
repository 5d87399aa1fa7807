//! A fresh database on a given Postgres server: created empty, dropped after.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Executor};

use crate::{Error, Result};

/// A database of its own on the server of an admin URL (one where it may CREATE DATABASE),
/// dropped (`WITH (FORCE)`) when the value is.
#[derive(Debug)]
pub struct FreshDb {
    url: String,
    name: String,
    admin_url: String,
    /// Set by [`FreshDb::drop_now`], so `Drop` leaves it alone.
    dropped: bool,
}

impl FreshDb {
    /// Creates `<prefix>_<uuid>` on `admin_url`'s server.
    pub async fn create(admin_url: &str, prefix: &str) -> Result<FreshDb> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let admin = admin_pool(admin_url).await?;
        let created = admin.execute(format!("CREATE DATABASE {name}").as_str()).await;
        admin.close().await;
        created.map_err(|source| Error::Sql { url: admin_url.into(), source })?;
        Ok(FreshDb { url: with_database(admin_url, &name), name, admin_url: admin_url.into(), dropped: false })
    }

    /// The database's URL (the admin URL with its name).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops it now, where a caller can wait for it and see an error.
    pub async fn drop_now(mut self) -> Result<()> {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Drop runs outside async (or inside a runtime that must not block): a short-lived
        // thread with its own runtime drops the database.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(drop_database(&admin_url, &name)).ok()
        })
        .join();
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    let admin = admin_pool(admin_url).await?;
    let dropped = admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
    admin.close().await;
    dropped.map(|_| ()).map_err(|source| Error::Sql { url: admin_url.into(), source })
}

/// One connection for CREATE and DROP DATABASE, whose slow statements are expected and not
/// worth sqlx's warning.
async fn admin_pool(url: &str) -> Result<PgPool> {
    let sql = |source| Error::Sql { url: url.into(), source };
    let options = PgConnectOptions::from_str(url).map_err(sql)?.disable_statement_logging();
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(sql)
}

/// Replaces the database name (path) of a Postgres URL, keeping its query.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let slash = base[after_scheme..].rfind('/').map_or(base.len(), |i| i + after_scheme);
    let mut out = format!("{}/{name}", &base[..slash]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h/db?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(with_database("postgres://u@h?sslmode=require", "x"), "postgres://u@h/x?sslmode=require");
    }
}
