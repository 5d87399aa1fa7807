//! The command ledger in SQLite: one row per command_id, the dedupe authority down. A row is
//! written `applying` before the handler runs and `done` with the outcome before the ack is
//! published, so a crash at any point is recognised on redelivery.

use sqlx::sqlite::SqlitePool;
use tillsync_schemas::{CommandEnvelope, Outcome};

use crate::now_ms;

/// What the ledger holds for a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// The handler was started and the bridge stopped before recording its outcome.
    Applying,
    Done {
        outcome: Outcome,
        code: String,
        detail: String,
    },
}

pub async fn get(pool: &SqlitePool, command_id: &str) -> Result<Option<Entry>, sqlx::Error> {
    let row: Option<(String, Option<String>, Option<String>, String)> =
        sqlx::query_as("SELECT state, outcome, code, detail FROM commands WHERE command_id = ?")
            .bind(command_id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(state, outcome, code, detail)| match (state.as_str(), outcome.as_deref()) {
        ("done", Some(o)) => Entry::Done { outcome: parse_outcome(o), code: code.unwrap_or_default(), detail },
        _ => Entry::Applying,
    }))
}

fn parse_outcome(s: &str) -> Outcome {
    match s {
        "applied" => Outcome::Applied,
        "rejected" => Outcome::Rejected,
        _ => Outcome::Failed,
    }
}

/// Records that the handler is about to run.
pub async fn start(pool: &SqlitePool, cmd: &CommandEnvelope) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO commands (command_id, kind, state, received_at_ms) VALUES (?, ?, 'applying', ?) ON CONFLICT (command_id) DO NOTHING")
        .bind(&cmd.command_id)
        .bind(cmd.body.kind())
        .bind(now_ms())
        .execute(pool)
        .await?;
    Ok(())
}

/// Records the outcome. A settings_patch does not move the applied configuration version: only
/// configuration sync does ([`crate::store_config::cache`]), so `if_match` means one thing.
pub async fn finish(
    pool: &SqlitePool,
    cmd: &CommandEnvelope,
    outcome: Outcome,
    code: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO commands (command_id, kind, state, outcome, code, detail, received_at_ms, done_at_ms)
         VALUES (?, ?, 'done', ?, ?, ?, ?, ?)
         ON CONFLICT (command_id) DO UPDATE SET state = 'done', outcome = excluded.outcome, code = excluded.code,
             detail = excluded.detail, done_at_ms = excluded.done_at_ms",
    )
    .bind(&cmd.command_id)
    .bind(cmd.body.kind())
    .bind(outcome.as_str())
    .bind(code)
    .bind(detail)
    .bind(now)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

/// Keeps an undecodable command message, so a refusal is never silent.
pub async fn refuse(
    pool: &SqlitePool,
    subject: &str,
    reason: &str,
    detail: &str,
    payload: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO refused_commands (subject, reason, detail, payload, at_ms) VALUES (?, ?, ?, ?, ?)")
        .bind(subject)
        .bind(reason)
        .bind(detail)
        .bind(payload)
        .bind(now_ms())
        .execute(pool)
        .await?;
    Ok(())
}

/// Commands whose outcome is `applied`, for status.
pub async fn applied_count(pool: &SqlitePool) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM commands WHERE outcome = 'applied'").fetch_one(pool).await?;
    Ok(n as u64)
}
