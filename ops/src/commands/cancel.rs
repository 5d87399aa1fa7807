//! `tillsync commands cancel ID`: cancels a command the way the portal does, by publishing a
//! cancel on `tillsync.intake.<tenant>.<store>._cancel`, and reports what the broker answered
//! on the command's status subject, per device copy: `cancelled` (never applied afterwards,
//! unless the device had already taken it, which a later correcting status would say), or
//! already final (`acked`: the device applied it).
//!
//! Exit codes: 0 every copy is cancelled; 5 at least one copy had already ended (applied,
//! failed, expired or rejected) and was left as it was; 4 no such command; 1 error, or no
//! answer within `--wait-s`. An unknown `--tenant` is exit 4 too.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use tillsync_schemas::command::CANCEL_REFUSED;
use tillsync_schemas::{codec, streams, subject, CommandCancel, CommandState, CommandStatus, SCHEMA_VERSION};

use crate::global::Global;
use crate::output::{emit, table};

/// Exit code when a copy had already ended and could not be cancelled.
pub const TOO_LATE: u8 = 5;

#[derive(Serialize)]
struct Answer {
    device_id: Option<String>,
    /// The copy's state after the cancel.
    state: CommandState,
    cancelled: bool,
    detail: String,
}

#[derive(Serialize)]
struct Cancelled {
    command_id: String,
    copies: Vec<Answer>,
}

pub async fn run(
    global: &Global,
    command_id: &str,
    tenant: Option<String>,
    by: &str,
    wait_s: u64,
) -> anyhow::Result<ExitCode> {
    let pool = global.pool().await?;
    crate::known::filters(&pool, tenant.as_deref(), None, None).await?;
    let found: Vec<(String, String)> = sqlx::query_as(
        "SELECT tenant_id, store_id FROM commands WHERE command_id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
    )
    .bind(command_id)
    .bind(&tenant)
    .fetch_all(&pool)
    .await?;
    let (tenant_id, store_id) = match &found[..] {
        [] => return Err(super::no_command(command_id, tenant.as_deref()).into()),
        [one] => one.clone(),
        _ => {
            let many = format!("command {command_id} exists in {} tenants: pass --tenant", found.len());
            return Err(crate::failure::Usage(many).into());
        }
    };
    let copies: Vec<(String, String)> =
        sqlx::query_as("SELECT device_id, state FROM command_inbox WHERE tenant_id = $1 AND command_id = $2")
            .bind(&tenant_id)
            .bind(command_id)
            .fetch_all(&pool)
            .await?;
    let mut out = Cancelled { command_id: command_id.to_string(), copies: Vec::new() };
    // Copies cancelled before get no new answer from the broker: report them as they are.
    let mut awaited: Vec<Option<String>> = Vec::new();
    for (device, state) in copies {
        if state == CommandState::Cancelled.as_str() {
            let detail = "cancelled before".to_string();
            out.copies.push(Answer {
                device_id: Some(device),
                state: CommandState::Cancelled,
                cancelled: true,
                detail,
            });
        } else {
            awaited.push(Some(device));
        }
    }
    if out.copies.is_empty() && awaited.is_empty() {
        awaited.push(None); // rejected at intake: one answer for the command
    }
    if !awaited.is_empty() {
        let answers = request(&global.nats, &tenant_id, &store_id, command_id, by, awaited, wait_s).await?;
        out.copies.extend(answers);
    }
    out.copies.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    emit(global.json, &out, human)?;
    Ok(if out.copies.iter().all(|c| c.cancelled) { ExitCode::SUCCESS } else { ExitCode::from(TOO_LATE) })
}

/// Publishes the cancel and waits for the broker's answer about each awaited copy.
async fn request(
    nats: &crate::global::NatsArgs,
    tenant_id: &str,
    store_id: &str,
    command_id: &str,
    by: &str,
    mut awaited: Vec<Option<String>>,
    wait_s: u64,
) -> anyhow::Result<Vec<Answer>> {
    let client = nats.connect().await?;
    let mut sub = client.subscribe(subject::status(tenant_id, store_id, command_id)).await?;
    client.flush().await?;
    let req = CommandCancel {
        schema_version: SCHEMA_VERSION,
        command_id: command_id.to_string(),
        tenant_id: tenant_id.to_string(),
        store_id: store_id.to_string(),
        requested_by: by.to_string(),
        at_ms: tillsync_schemas::now_ms(),
    };
    req.validate().map_err(|e| anyhow::anyhow!("invalid cancel: {e}"))?;
    let js = async_nats::jetstream::new(client);
    let mut h = async_nats::HeaderMap::new();
    h.insert(streams::HEADER_MSG_ID, format!("cancel:{command_id}:{}", uuid::Uuid::now_v7()).as_str());
    h.insert(streams::HEADER_CONTENT_TYPE, streams::CONTENT_TYPE);
    js.publish_with_headers(subject::cancel(tenant_id, store_id), h, codec::encode(&req).into())
        .await
        .context("publishing the cancel on intake")?
        .await
        .context("intake stream did not confirm the cancel")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_s);
    let mut answers = Vec::new();
    while !awaited.is_empty() {
        let msg = match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => anyhow::bail!("status subscription ended"),
            Err(_) => return Err(unanswered(command_id, wait_s, &awaited).into()),
        };
        let Ok(st) = codec::decode::<CommandStatus>(&msg.payload) else { continue };
        let cancelled = st.state == CommandState::Cancelled;
        if !(cancelled || st.code.as_deref() == Some(CANCEL_REFUSED)) {
            continue;
        }
        let Some(i) = awaited.iter().position(|d| *d == st.device_id) else { continue };
        awaited.remove(i);
        answers.push(Answer { device_id: st.device_id, state: st.state, cancelled, detail: st.detail });
    }
    Ok(answers)
}

/// No answer in time about the copies in `awaited` (`None`: the command as a whole).
fn unanswered(command_id: &str, wait_s: u64, awaited: &[Option<String>]) -> crate::failure::Known {
    let copies: Vec<&str> = awaited.iter().map(|d| d.as_deref().unwrap_or("(command)")).collect();
    crate::failure::Known {
        code: "wait_timed_out",
        message: format!("no answer from the broker within {wait_s} s about {}", copies.join(", ")),
        hint: format!(
            "is the broker running (`tillsync status`)? `tillsync commands show {command_id}` shows what it recorded"
        ),
    }
}

fn human(c: &Cancelled) -> String {
    let rows: Vec<Vec<String>> = c
        .copies
        .iter()
        .map(|a| {
            let what = match (a.cancelled, a.state) {
                (true, _) => "cancelled: it will not be applied".to_string(),
                (false, CommandState::Acked) => "already applied (acked): not cancelled".to_string(),
                (false, s) => format!("already ended {}: not cancelled", s.as_str()),
            };
            vec![a.device_id.clone().unwrap_or_else(|| "(command)".into()), a.state.as_str().to_string(), what]
        })
        .collect();
    format!("command {}\n{}", c.command_id, table(&["DEVICE", "STATE", "RESULT"], &rows))
}
