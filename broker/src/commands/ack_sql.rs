//! Recording device acks in Postgres: the `command_acks` row, and the entry's transition with
//! its `command_log` row, atomically.

use crate::partitions::{fence, Fence};
use std::collections::HashSet;

use sqlx::postgres::PgArguments;
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::{Arguments, PgPool};
use tillsync_actors::policy::{self, AckEffect};
use tillsync_schemas::{CommandAck, CommandState};

use super::sql::{LogRow, BY_DEVICE};
use crate::ts;

/// What recording an ack did.
#[derive(Debug)]
pub struct AckRecorded {
    pub effect: AckEffect,
    /// The log row to publish: a transition, or a correction (`corrects` set).
    pub transition: Option<LogRow>,
    /// From intake to this ack, for a transition.
    pub round_trip_ms: Option<i64>,
}

/// Records a batch of acks, in order; one result per ack.
///
/// The common case, an ack for an unfinished entry, is one statement for the whole batch (one
/// round trip, one commit): the conditional `UPDATE` takes each entry's row lock and makes the
/// transition `on_ack` gives every unfinished entry (`ack_target`), with the ack and log rows.
/// Anything else (an unknown command, an entry already final, a second ack for the same entry
/// in the batch) then takes `record_ack_checked`, which reads the entry under lock and asks
/// `on_ack` what the ack does.
pub async fn record_acks(pool: &PgPool, fence: Fence, acks: &[CommandAck]) -> Result<Vec<AckRecorded>, sqlx::Error> {
    let mut seen = HashSet::new();
    let first: Vec<usize> = (0..acks.len())
        .filter(|&i| seen.insert((&acks[i].tenant_id, &acks[i].command_id, &acks[i].device_id)))
        .collect();
    let mut results: Vec<Option<AckRecorded>> = acks.iter().map(|_| None).collect();
    for (i, rec) in record_unfinished(pool, fence, acks, &first).await? {
        results[i] = Some(rec);
    }
    let mut out = Vec::with_capacity(acks.len());
    for (ack, rec) in acks.iter().zip(results) {
        out.push(match rec {
            Some(rec) => rec,
            None => record_ack_checked(pool, fence, ack).await?,
        });
    }
    Ok(out)
}

/// The batch statement: acks (`which`, distinct entries) whose entry is unfinished make their
/// transition. Returns (index into `acks`, what it did) for those.
async fn record_unfinished(
    pool: &PgPool,
    fence: Fence,
    acks: &[CommandAck],
    which: &[usize],
) -> Result<Vec<(usize, AckRecorded)>, sqlx::Error> {
    if which.is_empty() {
        return Ok(Vec::new());
    }
    let col = |f: &dyn Fn(&CommandAck) -> String| which.iter().map(|&i| f(&acks[i])).collect::<Vec<String>>();
    let at_ms = crate::now_ms();
    // One transaction with the fence check: a former owner's late batch rolls back.
    let mut tx = pool.begin().await?;
    crate::partitions::fence::check(&mut tx, fence).await?;
    let rows: Vec<(i64, i32, DateTime<Utc>, i64)> = sqlx::query_as(
        "WITH input AS (
           SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                $8::timestamptz[], $9::text[], $10::text[])
             WITH ORDINALITY AS u(tenant_id, store_id, device_id, command_id, outcome, code, detail, acked_at,
                                  next_state, log_detail, ord)
         ), upd AS (
           UPDATE command_inbox i SET state = input.next_state, last_code = input.code, next_attempt_at = NULL,
                                      updated_at = now()
           FROM input, commands c
           WHERE i.tenant_id = input.tenant_id AND i.store_id = input.store_id AND i.device_id = input.device_id
             AND i.command_id = input.command_id AND i.state = ANY($14)
             AND c.tenant_id = i.tenant_id AND c.command_id = i.command_id
           RETURNING input.ord, i.attempts, c.received_at
         ), ack AS (
           INSERT INTO command_acks (tenant_id, store_id, device_id, command_id, outcome, code, detail, acked_at, effect)
           SELECT n.tenant_id, n.store_id, n.device_id, n.command_id, n.outcome, n.code, n.detail, n.acked_at, $11
           FROM upd JOIN input n ON n.ord = upd.ord ORDER BY upd.ord
         ), log AS (
           INSERT INTO command_log (tenant_id, store_id, command_id, device_id, state, attempt, code, detail, actor, at)
           SELECT n.tenant_id, n.store_id, n.command_id, n.device_id, n.next_state, upd.attempts, n.code, n.log_detail,
                  $12, $13
           FROM upd JOIN input n ON n.ord = upd.ord ORDER BY upd.ord
           RETURNING id, tenant_id, command_id, device_id
         )
         SELECT upd.ord, upd.attempts, upd.received_at, log.id
         FROM upd JOIN input n ON n.ord = upd.ord
         JOIN log ON log.tenant_id = n.tenant_id AND log.command_id = n.command_id AND log.device_id = n.device_id",
    )
    .bind(col(&|a| a.tenant_id.clone()))
    .bind(col(&|a| a.store_id.clone()))
    .bind(col(&|a| a.device_id.clone()))
    .bind(col(&|a| a.command_id.clone()))
    .bind(col(&|a| a.outcome.as_str().to_string()))
    .bind(col(&|a| a.code.clone()))
    .bind(col(&|a| a.detail.clone()))
    .bind(which.iter().map(|&i| ts(acks[i].at_ms)).collect::<Vec<_>>())
    .bind(col(&|a| policy::ack_target(a.outcome).as_str().to_string()))
    .bind(col(&ack_detail))
    .bind(AckEffect::AppliedTransition.as_str())
    .bind(BY_DEVICE)
    .bind(ts(at_ms))
    // Bound, not literal: a literal list would match the partial indexes' predicate, and a plan
    // made on a small inbox would scan every unfinished entry instead of probing the key.
    .bind(CommandState::ALL.iter().filter(|s| !s.is_final()).map(|s| s.as_str()).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|(ord, attempts, received_at, id)| {
            let ack = &acks[which[ord as usize - 1]];
            let transition = LogRow {
                id,
                tenant_id: ack.tenant_id.clone(),
                store_id: ack.store_id.clone(),
                command_id: ack.command_id.clone(),
                device_id: Some(ack.device_id.clone()),
                state: policy::ack_target(ack.outcome),
                attempt: attempts.max(0) as u32,
                code: Some(ack.code.clone()),
                detail: ack_detail(ack),
                at_ms,
                corrects: None,
            };
            let rec = AckRecorded {
                effect: AckEffect::AppliedTransition,
                transition: Some(transition),
                round_trip_ms: Some(at_ms - received_at.timestamp_millis()),
            };
            (which[ord as usize - 1], rec)
        })
        .collect())
}

/// $1..$9 of the checked ack statement: the `command_acks` row.
fn ack_args(ack: &CommandAck, effect: AckEffect) -> Result<PgArguments, sqlx::Error> {
    let mut a = PgArguments::default();
    let mut add = || -> Result<(), sqlx::error::BoxDynError> {
        a.add(ack.tenant_id.clone())?;
        a.add(ack.store_id.clone())?;
        a.add(ack.device_id.clone())?;
        a.add(ack.command_id.clone())?;
        a.add(ack.outcome.as_str())?;
        a.add(ack.code.clone())?;
        a.add(ack.detail.clone())?;
        a.add(ts(ack.at_ms))?;
        a.add(effect.as_str())
    };
    add().map_err(sqlx::Error::Encode)?;
    Ok(a)
}

/// The outcome goes into the audit detail: `failed` and `rejected` both end `failed`.
fn ack_detail(ack: &CommandAck) -> String {
    match ack.detail.as_str() {
        "" => ack.outcome.as_str().to_string(),
        d => format!("{}: {d}", ack.outcome.as_str()),
    }
}

/// Records an ack whatever the entry's state, in one transaction: reads the entry under lock,
/// decides with `on_ack`, writes.
async fn record_ack_checked(pool: &PgPool, fence: Fence, ack: &CommandAck) -> Result<AckRecorded, sqlx::Error> {
    let mut tx = pool.begin().await?;
    fence::check(&mut tx, fence).await?;
    // The entry (locked) and whether an earlier ack already made its transition. No entry, no
    // earlier transition: `on_ack` then answers "unknown command" either way.
    let current: Option<(String, i32, DateTime<Utc>, bool)> = sqlx::query_as(
        "SELECT i.state, i.attempts, c.received_at,
                EXISTS (SELECT 1 FROM command_acks a
                        WHERE a.tenant_id = i.tenant_id AND a.command_id = i.command_id AND a.device_id = i.device_id
                          AND a.effect IN ('applied_transition', 'applied_after_final'))
         FROM command_inbox i
         JOIN commands c ON c.tenant_id = i.tenant_id AND c.command_id = i.command_id
         WHERE i.tenant_id = $1 AND i.store_id = $2 AND i.device_id = $3 AND i.command_id = $4
         FOR UPDATE OF i",
    )
    .bind(&ack.tenant_id)
    .bind(&ack.store_id)
    .bind(&ack.device_id)
    .bind(&ack.command_id)
    .fetch_optional(&mut *tx)
    .await?;
    let state = current.as_ref().and_then(|(s, ..)| CommandState::parse(s));
    let acked_before = current.as_ref().is_some_and(|c| c.3);
    let (effect, next) = policy::on_ack(state, acked_before, ack.outcome);
    // The ack row always; with a transition ($10), the entry's new state and its log row; with
    // a correction ($16: applied after the portal was told it ended), the entry's
    // `applied_after_final_at` and an `acked` log row naming the state it corrects ($17). All
    // in one statement.
    let transition_to = next.filter(|_| current.is_some());
    let corrects = state.filter(|_| effect == AckEffect::AppliedAfterFinal);
    let logged = transition_to.or(corrects.map(|_| CommandState::Acked));
    let attempt = current.as_ref().map_or(0, |c| c.1.max(0) as u32);
    let detail = match corrects {
        Some(s) => format!("{}; applied after the portal was told {}", ack_detail(ack), s.as_str()),
        None => ack_detail(ack),
    };
    let at_ms = crate::now_ms();
    let id: Option<i64> = sqlx::query_scalar_with(
        "WITH ack AS (
           INSERT INTO command_acks (tenant_id, store_id, device_id, command_id, outcome, code, detail, acked_at, effect)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ), upd AS (
           UPDATE command_inbox SET state = $11, last_code = $6, next_attempt_at = NULL, updated_at = now()
           WHERE $10 AND tenant_id = $1 AND store_id = $2 AND device_id = $3 AND command_id = $4
         ), fix AS (
           UPDATE command_inbox SET applied_after_final_at = $15
           WHERE $16 AND tenant_id = $1 AND store_id = $2 AND device_id = $3 AND command_id = $4
         )
         INSERT INTO command_log (tenant_id, store_id, command_id, device_id, state, attempt, code, detail, actor, at,
                                  corrects)
         SELECT $1, $2, $4, $3, $11, $12, $6, $13, $14, $15, $17 WHERE $10 OR $16
         RETURNING id",
        ack_args(ack, effect)?,
    )
    .bind(transition_to.is_some())
    .bind(logged.unwrap_or(CommandState::Acked).as_str())
    .bind(attempt as i32)
    .bind(&detail)
    .bind(BY_DEVICE)
    .bind(ts(at_ms))
    .bind(corrects.is_some())
    .bind(corrects.map(|s| s.as_str()))
    .fetch_optional(&mut *tx)
    .await?;
    let transition = id.zip(logged).map(|(id, state)| LogRow {
        id,
        tenant_id: ack.tenant_id.clone(),
        store_id: ack.store_id.clone(),
        command_id: ack.command_id.clone(),
        device_id: Some(ack.device_id.clone()),
        state,
        attempt,
        code: Some(ack.code.clone()),
        detail,
        at_ms,
        corrects,
    });
    let round_trip_ms = transition_to.and(current.as_ref()).map(|c| at_ms - c.2.timestamp_millis());
    tx.commit().await?;
    Ok(AckRecorded { effect, transition, round_trip_ms })
}
