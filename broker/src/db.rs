//! Postgres: the pool and the embedded migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// The cloud schema, embedded in every binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Connect options from `url`, named for `pg_stat_activity` (`application_name`, unless the
/// URL sets one), so a DBA can tell the broker's connections from the CLI's and a replay's.
/// `client_min_messages = warning`: Postgres's NOTICEs (the migrator's "relation
/// _sqlx_migrations already exists, skipping" on every start) are not news to an operator,
/// and sqlx logs each at INFO.
pub fn options(url: &str, application_name: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    let options =
        if options.get_application_name().is_some() { options } else { options.application_name(application_name) };
    Ok(options.options([("client_min_messages", "warning")]))
}

fn pool_options(max: u32) -> PgPoolOptions {
    PgPoolOptions::new().max_connections(max).acquire_timeout(Duration::from_secs(10))
}

pub async fn connect(url: &str, max: u32) -> Result<PgPool, sqlx::Error> {
    pool_options(max).connect_with(options(url, "tillsync")?).await
}

/// The broker's pools end a transaction left open longer than `idle_tx`
/// (`idle_in_transaction_session_timeout`): the broker never leaves one idle that long, but a
/// paused broker (GC pause, SIGSTOP) can, holding its partition's fence row `FOR SHARE`, and
/// the instance taking the partition over must not wait for it to wake up. Postgres rolls it
/// back; the paused broker then finds the fence moved on.
pub fn broker_options(url: &str, idle_tx: Duration, instance_id: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let ms = idle_tx.as_millis().max(1000).to_string();
    Ok(options(url, &format!("tillsync-broker {instance_id}"))?.options([("idle_in_transaction_session_timeout", ms)]))
}

/// The broker's main pool ([`broker_options`]).
pub async fn connect_broker(url: &str, max: u32, idle_tx: Duration, instance_id: &str) -> Result<PgPool, sqlx::Error> {
    pool_options(max).connect_with(broker_options(url, idle_tx, instance_id)?).await
}

/// A pool for the command path's batch statements, which reach every row by key.
///
/// Each is prepared once per connection and keeps one generic plan
/// (`plan_cache_mode = force_generic_plan`): parsing and planning a many-CTE statement for every
/// small batch took more CPU than running it (perf at 1,000 commands/s: planning 15 % of the
/// machine, parsing 8 %, execution 15 %). A generic plan made while a table is small would
/// scan it whole and keep doing so as it grows (it is replanned only when the table's
/// statistics change), so on these connections the planner may not choose sequential scans,
/// hash or merge joins while any index path exists. Only statements written for that belong
/// here: every row reached by its key, and state conditions bound as parameters where a key
/// probe is meant (a literal would let a partial index of all unfinished entries compete
/// with the key, and win while the table is small). The test
/// `commands::keyed_statements_planned_on_an_empty_inbox_still_probe_keys` holds them to it.
pub async fn connect_keyed(url: &str, max: u32) -> Result<PgPool, sqlx::Error> {
    connect_keyed_with(options(url, "tillsync")?, max).await
}

/// [`connect_keyed`] from connect options (the broker passes [`broker_options`]).
pub async fn connect_keyed_with(options: PgConnectOptions, max: u32) -> Result<PgPool, sqlx::Error> {
    let options = options.options([
        ("plan_cache_mode", "force_generic_plan"),
        ("enable_seqscan", "off"),
        ("enable_hashjoin", "off"),
        ("enable_mergejoin", "off"),
    ]);
    pool_options(max).connect_with(options).await
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// True for errors worth retrying (connection loss, serialization failures, deadlocks).
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("40001" | "40P01" | "57P01" | "57P03" | "53300" | "08006" | "08003"))
        }
        _ => false,
    }
}
