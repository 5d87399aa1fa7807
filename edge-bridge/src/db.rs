//! The bridge's SQLite file: opened in WAL mode, migrated with the embedded migrations, and
//! bound to one device on first start so two devices never share a seq space.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tillsync_schemas::DeviceAddr;

use crate::error::BridgeError;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens (creating if missing) and migrates the SQLite file. `full_sync` fsyncs every commit.
pub async fn open(path: &Path, full_sync: bool) -> Result<SqlitePool, BridgeError> {
    // SQLite serializes writers anyway; a few connections let status reads run beside them.
    open_with(path, full_sync, 4).await
}

/// [`open`] with at most `connections` connections: `bench fleet` holds thousands of files
/// in one process, and each connection costs three file descriptors (file, WAL, shared memory).
pub async fn open_with(path: &Path, full_sync: bool, connections: u32) -> Result<SqlitePool, BridgeError> {
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(if full_sync { SqliteSynchronous::Full } else { SqliteSynchronous::Normal })
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new().max_connections(connections).connect_with(options).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Closes the file's connections, leaving no write-ahead log to replay: its content is
/// checkpointed into the file and the log truncated first. SQLite does that itself when its last
/// connection closes, but the pool closes its connections together, and one that finds another
/// still closing skips the checkpoint; so the log could outlive a clean stop.
pub async fn close(pool: &SqlitePool) {
    let checkpoint = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(pool).await;
    match checkpoint {
        Ok((0, _, _)) => {}
        Ok(_) => tracing::warn!("The write-ahead log was busy at the stop; SQLite replays it at the next start."),
        Err(error) => {
            tracing::warn!(%error, "The write-ahead log was not checkpointed at the stop; SQLite replays it at the next start.")
        }
    }
    pool.close().await;
}

/// Opens an existing file without migrating or creating it (`tillsync-edge status`).
pub async fn open_read_only(path: &Path) -> Result<SqlitePool, BridgeError> {
    let options = SqliteConnectOptions::from_str("sqlite://")?.filename(path).read_only(true);
    Ok(SqlitePoolOptions::new().max_connections(1).connect_with(options).await?)
}

/// Records the device on first start; refuses a file that belongs to another device.
pub async fn bind_identity(pool: &SqlitePool, addr: &DeviceAddr) -> Result<(), BridgeError> {
    let (t, s, d): (Option<String>, Option<String>, Option<String>) =
        sqlx::query_as("SELECT tenant_id, store_id, device_id FROM bridge_state WHERE id = 1").fetch_one(pool).await?;
    match (t, s, d) {
        (Some(t), Some(s), Some(d)) => {
            let found = DeviceAddr::new(t, s, d);
            if &found != addr {
                return Err(BridgeError::WrongDevice { found: fmt(&found), configured: fmt(addr) });
            }
        }
        _ => {
            sqlx::query("UPDATE bridge_state SET tenant_id = ?, store_id = ?, device_id = ? WHERE id = 1")
                .bind(&addr.tenant_id)
                .bind(&addr.store_id)
                .bind(&addr.device_id)
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

fn fmt(a: &DeviceAddr) -> String {
    format!("{}/{}/{}", a.tenant_id, a.store_id, a.device_id)
}

/// Starts a write transaction with `BEGIN IMMEDIATE`: it takes the write lock at once, waiting
/// on the busy timeout. A deferred transaction that reads and then writes fails with
/// SQLITE_BUSY ("database is locked") at the write, without waiting, when another connection
/// wrote in between; every write transaction of the bridge starts here.
pub async fn begin_write(pool: &SqlitePool) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// The applied configuration version (0 before the first; only configuration sync moves it).
pub async fn config_revision(pool: &SqlitePool) -> Result<u64, sqlx::Error> {
    let rev: i64 = sqlx::query_scalar("SELECT config_revision FROM bridge_state WHERE id = 1").fetch_one(pool).await?;
    Ok(rev as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_one_device_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.db");
        let pool = open(&path, false).await.unwrap();
        let a = DeviceAddr::new("acme", "s1", "till-1");
        bind_identity(&pool, &a).await.unwrap();
        bind_identity(&pool, &a).await.unwrap();
        let err = bind_identity(&pool, &DeviceAddr::new("acme", "s1", "till-2")).await.unwrap_err();
        assert!(matches!(err, BridgeError::WrongDevice { .. }), "{err}");
        assert_eq!(config_revision(&pool).await.unwrap(), 0);
    }
}
