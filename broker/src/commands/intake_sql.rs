//! Accepting commands in Postgres: an intake batch's commands in one statement.

use crate::partitions::Fence;
use std::collections::HashSet;

use sqlx::PgPool;
use tillsync_actors::policy::{self, InboxParams};
use tillsync_schemas::CommandState;

use super::sql::{CommandRow, LogRow, BY_BROKER, BY_PORTAL, COMMAND_COLUMNS};
use crate::ts;

/// What accepting a command did.
#[derive(Debug)]
pub enum Accepted {
    /// Recorded: per target device, a `queued` log row, and a `delivered` one (attempt 1) when
    /// delivered directly; in the order of the ids.
    New(Vec<LogRow>),
    /// The command id was seen before; nothing changed.
    Duplicate,
    /// Neither the named device nor (store-wide) any device of the store is known.
    NoDevice,
}

/// The audit detail of a command's `queued` rows.
fn queued_detail(c: &CommandRow<'_>) -> String {
    format!("{} requested by {}, approved by {}", c.kind, c.requested_by, c.approvers.join(", "))
}

/// Accepts commands in one statement (one round trip, one commit), one result per command in
/// order. Each command's target devices are the named one if known, else every known device
/// of its store (a decommissioned device is not known); only if there are some and its id is new is it recorded, with an inbox entry
/// and a `queued` log row per device. A command waiting for approval (same id, store and
/// device) is released by its approved envelope: recorded as new from here on. Inbox entries are numbered in the order given, so a
/// device's commands keep their issue order. A command id repeated within the batch is a
/// duplicate of its first occurrence.
///
/// Where the device actor's `plan` would deliver the new entry at once
/// ([`policy::direct_first_delivery`]: the device is online and no earlier command of it still
/// waits for a first delivery), the entry is recorded as delivery attempt 1 in the same
/// statement, with its `delivered` log row: the caller publishes it, and no actor is woken.
/// An earlier entry still `queued` holds the new one back even if it has just expired (the
/// sweeper expires it within a second and the actor then delivers): the check stays a probe
/// of the device's pending entries, which the statement's generic plan ([`crate::db::connect_keyed`])
/// needs.
pub async fn accept_many(
    pool: &PgPool,
    fence: Fence,
    rows: &[CommandRow<'_>],
    p: InboxParams,
) -> Result<Vec<Accepted>, sqlx::Error> {
    let mut seen = HashSet::new();
    let first: Vec<usize> = (0..rows.len()).filter(|&i| seen.insert((rows[i].tenant_id, rows[i].command_id))).collect();
    let mut out: Vec<Accepted> = rows.iter().map(|_| Accepted::Duplicate).collect();
    if first.is_empty() {
        return Ok(out);
    }
    let pick = |f: &dyn Fn(&CommandRow<'_>) -> String| first.iter().map(|&i| f(&rows[i])).collect::<Vec<String>>();
    // Approvers travel flattened, with each command's slice bounds: Postgres arrays of arrays
    // must be rectangular.
    let (mut approvers, mut lo, mut hi) = (Vec::new(), Vec::new(), Vec::new());
    for &i in &first {
        lo.push(approvers.len() as i32 + 1);
        approvers.extend(rows[i].approvers.iter().cloned());
        hi.push(approvers.len() as i32);
    }
    let at_ms = crate::now_ms();
    let direct: Vec<Option<_>> =
        first.iter().map(|&i| policy::direct_first_delivery(at_ms, rows[i].expires_at_ms, true, p).map(ts)).collect();
    let sql = format!(
        "WITH input AS (
           SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::text[],
                                $8::int[], $9::int[], $10::timestamptz[], $11::timestamptz[], $12::text[],
                                $17::timestamptz[])
             WITH ORDINALITY AS u(tenant_id, store_id, command_id, device_id, kind, envelope, requested_by,
                                  lo, hi, issued_at, expires_at, detail, direct_next, ord)
         ), targets AS (
           SELECT n.ord, d.device_id,
                  d.online AND n.direct_next IS NOT NULL AND NOT EXISTS (
                    SELECT 1 FROM command_inbox q
                    WHERE q.tenant_id = n.tenant_id AND q.store_id = n.store_id AND q.device_id = d.device_id
                      AND q.state = 'queued') AS direct
           FROM input n
           JOIN devices d ON d.tenant_id = n.tenant_id AND d.store_id = n.store_id
                         AND (n.device_id IS NULL OR d.device_id = n.device_id) AND d.decommissioned_at IS NULL
         ), cmd AS (
           INSERT INTO {COMMAND_COLUMNS}
           SELECT n.tenant_id, n.store_id, n.command_id, n.device_id, n.kind, n.envelope, n.requested_by,
                  coalesce(($13::text[])[n.lo:n.hi], '{{}}'), n.issued_at, n.expires_at, $14, NULL
           FROM input n WHERE EXISTS (SELECT 1 FROM targets t WHERE t.ord = n.ord) ORDER BY n.ord
           ON CONFLICT (tenant_id, command_id) DO UPDATE
             SET envelope = EXCLUDED.envelope, approvers = EXCLUDED.approvers, pending_approval = false
             WHERE commands.pending_approval AND commands.store_id = EXCLUDED.store_id
               AND commands.device_id IS NOT DISTINCT FROM EXCLUDED.device_id
           RETURNING tenant_id, command_id
         ), new AS (
           SELECT n.ord, n.tenant_id, n.store_id, n.command_id, n.expires_at, n.detail, n.direct_next, t.device_id,
                  t.direct
           FROM input n
           JOIN cmd ON cmd.tenant_id = n.tenant_id AND cmd.command_id = n.command_id
           JOIN targets t ON t.ord = n.ord
         ), inbox AS (
           INSERT INTO command_inbox (tenant_id, store_id, device_id, command_id, state, attempts, next_attempt_at, expires_at,
                                      published_at)
           SELECT tenant_id, store_id, device_id, command_id, CASE WHEN direct THEN $18 ELSE $15 END,
                  CASE WHEN direct THEN 1 ELSE 0 END, CASE WHEN direct THEN direct_next ELSE $14 END, expires_at,
                  CASE WHEN direct THEN $14 END
           FROM new ORDER BY ord, device_id
         ), log AS (
           INSERT INTO command_log (tenant_id, store_id, command_id, device_id, state, attempt, code, detail, actor, at)
           SELECT new.tenant_id, new.store_id, new.command_id, new.device_id, s.state, s.attempt, NULL,
                  CASE WHEN s.k = 1 THEN new.detail ELSE '' END, s.actor, $14
           FROM new CROSS JOIN (VALUES (1, $15, 0, $16), (2, $18, 1, $19)) AS s(k, state, attempt, actor)
           WHERE s.k = 1 OR new.direct
           ORDER BY new.ord, new.device_id, s.k
           RETURNING id, tenant_id, command_id, device_id, state
         )
         SELECT n.ord, (SELECT count(*) FROM targets t WHERE t.ord = n.ord), log.id, log.device_id, log.state
         FROM input n LEFT JOIN log ON log.tenant_id = n.tenant_id AND log.command_id = n.command_id
         ORDER BY log.id"
    );
    type Found = (i64, i64, Option<i64>, Option<String>, Option<String>);
    // One transaction with the fence check: a former owner's late batch rolls back.
    let mut tx = pool.begin().await?;
    crate::partitions::fence::check(&mut tx, fence).await?;
    let found: Vec<Found> = sqlx::query_as(&sql)
        .bind(pick(&|c| c.tenant_id.into()))
        .bind(pick(&|c| c.store_id.into()))
        .bind(pick(&|c| c.command_id.into()))
        .bind(first.iter().map(|&i| rows[i].device_id.map(str::to_string)).collect::<Vec<_>>())
        .bind(pick(&|c| c.kind.into()))
        .bind(first.iter().map(|&i| rows[i].envelope.to_vec()).collect::<Vec<_>>())
        .bind(pick(&|c| c.requested_by.into()))
        .bind(lo)
        .bind(hi)
        .bind(first.iter().map(|&i| ts(rows[i].issued_at_ms)).collect::<Vec<_>>())
        .bind(first.iter().map(|&i| ts(rows[i].expires_at_ms)).collect::<Vec<_>>())
        .bind(pick(&queued_detail))
        .bind(approvers)
        .bind(ts(at_ms))
        .bind(CommandState::Queued.as_str())
        .bind(BY_PORTAL)
        .bind(direct)
        .bind(CommandState::Delivered.as_str())
        .bind(BY_BROKER)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    for (ord, targets, id, device_id, state) in found {
        let i = first[ord as usize - 1];
        let c = &rows[i];
        let state = state.as_deref().and_then(CommandState::parse).unwrap_or(CommandState::Queued);
        match (targets, id.zip(device_id)) {
            (0, _) => out[i] = Accepted::NoDevice,
            (_, None) => {}
            (_, Some((id, device_id))) => {
                let delivered = state == CommandState::Delivered;
                let log = LogRow {
                    id,
                    tenant_id: c.tenant_id.into(),
                    store_id: c.store_id.into(),
                    command_id: c.command_id.into(),
                    device_id: Some(device_id),
                    state,
                    attempt: u32::from(delivered),
                    code: None,
                    detail: if delivered { String::new() } else { queued_detail(c) },
                    at_ms,
                    corrects: None,
                };
                match &mut out[i] {
                    Accepted::New(logs) => logs.push(log),
                    other => *other = Accepted::New(vec![log]),
                }
            }
        }
    }
    Ok(out)
}
