//! `tillsync commands approve|reject ID`: a registered approver's decision about a command
//! waiting in `pending_approval`, signed with the approver's own key over the command as the
//! broker recorded it ([`tillsync_schemas::approval`]), published on
//! `tillsync.intake.<tenant>.<store>._approve`; then the broker's answer on the command's
//! status subject.
//!
//! Before signing it prints what is being decided (kind, store and device, the body's fields,
//! who asked, when it expires, the approvals so far) on stderr (`--json`: in the document), and
//! refuses, sending nothing, what the broker would refuse anyway: a command no longer waiting,
//! the requester deciding their own command, an approver not registered (or revoked) in the
//! tenant, a key that is not the one registered, a second approval by the same approver.
//!
//! Exit codes: 0 the decision counted (`approve`: the command still waits for another approver
//! or went on to its devices; `reject`: it ended `rejected`, code `approval_rejected`); 3 it was
//! refused (the broker's code, or the same check made here), or the command ended otherwise
//! while waiting (rejected by someone else, expired, cancelled); 5 the command no longer waits
//! for approval (its state is printed); 4 no such command, tenant, or approver (one the tenant
//! never had: a revoked one is refused, 3); 1 error, or no answer within `--wait-s`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use futures::StreamExt;
use serde::Serialize;
use tillsync_schemas::approval::{self, Decision};
use tillsync_schemas::{
    codec, streams, subject, CommandDecision, CommandEnvelope, CommandState, CommandStatus, Reason, SCHEMA_VERSION,
};

use crate::failure::{Known, Usage, PROBLEMS};
use crate::global::Global;
use crate::output::{emit, ts};

/// Exit code for a command that no longer waits for approval (as `cancel` too late).
pub const NOT_PENDING: u8 = super::cancel::TOO_LATE;

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The command's id (as `send` printed it, or from `list --state pending_approval`).
    #[arg(value_parser = crate::known::command_id)]
    command_id: String,
    /// Who decides: a registered approver of the command's tenant (`tillsync approvers add`).
    #[arg(long, value_parser = crate::known::id)]
    approver: String,
    /// The approver's nkey seed file (`tillsync keys generate FILE`), whose public key is the
    /// one registered for the approver.
    #[arg(long)]
    key_file: PathBuf,
    /// The tenant, when the id exists in more than one.
    #[arg(long, value_parser = crate::known::id)]
    tenant: Option<String>,
    /// Longest wait for the broker's answer, seconds.
    #[arg(long, default_value_t = 30)]
    wait_s: u64,
}

/// What is being decided, as recorded.
#[derive(Serialize)]
struct Reviewed {
    kind: String,
    tenant_id: String,
    store_id: String,
    /// `None`: every device of the store.
    device_id: Option<String>,
    /// The body's fields.
    payload: serde_json::Value,
    requested_by: String,
    issued_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    /// Approvers counted so far (with the command, and decided since).
    approved_by: Vec<String>,
    /// Distinct approvers its kind needs.
    needs: usize,
}

#[derive(Serialize)]
struct Decided {
    command_id: String,
    approver: String,
    decision: Decision,
    command: Reviewed,
    /// `counted`, `refused`, `ended` (it ended otherwise while waiting) or `not_pending`.
    outcome: &'static str,
    /// The state it was in, for `not_pending`; its state after the decision otherwise.
    state: String,
    /// Why it was refused (the broker's code), when refused.
    code: Option<String>,
    /// The broker's status answering the decision (none when refused here, or not pending).
    status: Option<CommandStatus>,
    detail: String,
}

/// What one status after the decision says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Counted,
    Refused,
    /// The command ended otherwise (or went on when this was a reject).
    Ended,
}

pub async fn run(global: &Global, a: &DecideArgs, decision: Decision) -> anyhow::Result<ExitCode> {
    let pool = global.pool().await?;
    crate::known::filters(&pool, a.tenant.as_deref(), None, None).await?;
    let found: Vec<(String, bool, Option<String>, Vec<u8>)> = sqlx::query_as(
        "SELECT tenant_id, pending_approval, rejected_code, envelope FROM commands
         WHERE command_id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
    )
    .bind(&a.command_id)
    .bind(&a.tenant)
    .fetch_all(&pool)
    .await?;
    let (tenant_id, pending, rejected_code, stored) = match &found[..] {
        [] => return Err(super::no_command(&a.command_id, a.tenant.as_deref()).into()),
        [one] => one.clone(),
        _ => {
            let many = format!("command {} exists in {} tenants: pass --tenant", a.command_id, found.len());
            return Err(Usage(many).into());
        }
    };
    // What does not exist first (exit 4), then what cannot be read (exit 1).
    crate::known::approver(&pool, &tenant_id, &a.approver).await?;
    let key = tillsync_broker::admin::keyfile::read_seed(&a.key_file)?;
    let cmd = codec::decode::<CommandEnvelope>(&stored)
        .map_err(|e| anyhow::anyhow!("the recorded envelope of command {} does not decode: {e}", a.command_id))?;
    let approved_by = approved_so_far(&pool, &cmd).await?;
    let mut out = Decided {
        command_id: a.command_id.clone(),
        approver: a.approver.clone(),
        decision,
        command: reviewed(&cmd, approved_by),
        outcome: "not_pending",
        state: String::new(),
        code: None,
        status: None,
        detail: String::new(),
    };
    if !global.json {
        eprint!("{}", human_reviewed(decision, &a.command_id, &out.command));
    }
    if !pending {
        out.state = state_now(&pool, &tenant_id, &a.command_id, rejected_code.as_deref()).await?;
        out.detail = format!("it is {}: it no longer waits for approval; nothing was sent", out.state);
        emit(global.json, &out, human)?;
        return Ok(ExitCode::from(NOT_PENDING));
    }
    if let Some((code, detail)) =
        refused_here(&pool, &cmd, &out.command.approved_by, &a.approver, &key, decision).await?
    {
        out.outcome = "refused";
        out.state = CommandState::PendingApproval.as_str().into();
        out.code = Some(code.as_str().into());
        out.detail = format!("{detail} (checked before sending; nothing was sent)");
        emit(global.json, &out, human)?;
        return Ok(ExitCode::from(PROBLEMS));
    }
    let req = CommandDecision {
        schema_version: SCHEMA_VERSION,
        command_id: cmd.command_id.clone(),
        tenant_id: cmd.tenant_id.clone(),
        store_id: cmd.store_id.clone(),
        approver: a.approver.clone(),
        decision,
        signature: approval::sign(&key, &cmd, &a.approver, decision),
        at_ms: tillsync_schemas::now_ms(),
    };
    req.validate().map_err(|e| anyhow::anyhow!("invalid decision: {e}"))?;
    let verdict = match publish_and_wait(&pool, &global.nats, &req, a.wait_s).await? {
        Answer::Status(st) => {
            let verdict = verdict(&st, &a.approver, decision).unwrap_or(Verdict::Ended);
            out.state = st.state.as_str().into();
            out.code = st.code.clone();
            out.detail = st.detail.clone();
            out.status = Some(st);
            verdict
        }
        // Ended between the check above and the broker's turn: recorded, no status.
        Answer::Recorded(Some(code)) if code == Reason::NotPendingApproval.as_str() => {
            out.state = current_state(&pool, &tenant_id, &a.command_id).await?;
            out.detail =
                format!("it is {}: it no longer waited for approval when the broker took the decision", out.state);
            emit(global.json, &out, human)?;
            return Ok(ExitCode::from(NOT_PENDING));
        }
        Answer::Recorded(code) => {
            out.state = current_state(&pool, &tenant_id, &a.command_id).await?;
            out.detail = "recorded by the broker (no status message arrived)".into();
            let refused = code.is_some();
            out.code = code;
            if refused {
                Verdict::Refused
            } else {
                Verdict::Counted
            }
        }
    };
    out.outcome = match verdict {
        Verdict::Counted => "counted",
        Verdict::Refused => "refused",
        Verdict::Ended => "ended",
    };
    emit(global.json, &out, human)?;
    pool.close().await;
    Ok(if verdict == Verdict::Counted { ExitCode::SUCCESS } else { ExitCode::from(PROBLEMS) })
}

/// How the broker answered a decision.
enum Answer {
    /// The status message about it.
    Status(CommandStatus),
    /// Its `command_decisions` row (`None`: counted; else the refusal's code), when no status
    /// came: the broker publishes none for a command that no longer waits.
    Recorded(Option<String>),
}

/// The command's state now, in words.
async fn current_state(pool: &sqlx::PgPool, tenant: &str, command_id: &str) -> sqlx::Result<String> {
    let (pending, rejected_code): (bool, Option<String>) =
        sqlx::query_as("SELECT pending_approval, rejected_code FROM commands WHERE tenant_id = $1 AND command_id = $2")
            .bind(tenant)
            .bind(command_id)
            .fetch_one(pool)
            .await?;
    if pending {
        return Ok(CommandState::PendingApproval.as_str().into());
    }
    state_now(pool, tenant, command_id, rejected_code.as_deref()).await
}

/// Approvers counted so far: those the command arrived with and those decided since.
async fn approved_so_far(pool: &sqlx::PgPool, cmd: &CommandEnvelope) -> sqlx::Result<Vec<String>> {
    let mut names: Vec<String> = cmd.approvals.iter().map(|a| a.approver.clone()).collect();
    let since: Vec<String> = sqlx::query_scalar(
        "SELECT approver_id FROM command_decisions
         WHERE tenant_id = $1 AND command_id = $2 AND decision = 'approve' AND code IS NULL ORDER BY id",
    )
    .bind(&cmd.tenant_id)
    .bind(&cmd.command_id)
    .fetch_all(pool)
    .await?;
    for n in since {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    Ok(names)
}

fn reviewed(cmd: &CommandEnvelope, approved_by: Vec<String>) -> Reviewed {
    let body = serde_json::to_value(&cmd.body).unwrap_or_default();
    Reviewed {
        kind: cmd.body.kind().into(),
        tenant_id: cmd.tenant_id.clone(),
        store_id: cmd.store_id.clone(),
        device_id: cmd.device_id.clone(),
        payload: body.get("payload").cloned().unwrap_or_default(),
        requested_by: cmd.requested_by.clone(),
        issued_at: DateTime::from_timestamp_millis(cmd.issued_at_ms),
        expires_at: DateTime::from_timestamp_millis(cmd.expires_at_ms),
        approved_by,
        needs: cmd.body.required_approvals(),
    }
}

/// The command's state when it no longer waits for approval, in words (`acked`, `rejected
/// (expired)`, `delivered on 1 device, acked on 2 devices`, ...).
async fn state_now(
    pool: &sqlx::PgPool,
    tenant: &str,
    command_id: &str,
    rejected_code: Option<&str>,
) -> sqlx::Result<String> {
    if let Some(code) = rejected_code {
        return Ok(format!("rejected ({code})"));
    }
    let per_state: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM command_inbox WHERE tenant_id = $1 AND command_id = $2
         GROUP BY state ORDER BY state",
    )
    .bind(tenant)
    .bind(command_id)
    .fetch_all(pool)
    .await?;
    if per_state.is_empty() {
        // No copy: its last command-wide transition says what happened to it.
        let last: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT state, code FROM command_log WHERE tenant_id = $1 AND command_id = $2 AND device_id IS NULL
             ORDER BY id DESC LIMIT 1",
        )
        .bind(tenant)
        .bind(command_id)
        .fetch_optional(pool)
        .await?;
        return Ok(match last {
            Some((state, Some(code))) => format!("{state} ({code})"),
            Some((state, None)) => state,
            None => CommandState::Queued.as_str().into(),
        });
    }
    if let [(state, 1)] = &per_state[..] {
        return Ok(state.clone());
    }
    let each: Vec<String> =
        per_state.iter().map(|(s, n)| format!("{s} on {n} device{}", if *n == 1 { "" } else { "s" })).collect();
    Ok(each.join(", "))
}

/// What the broker would refuse, checked before anything is sent: `(code, why)`.
async fn refused_here(
    pool: &sqlx::PgPool,
    cmd: &CommandEnvelope,
    approved_by: &[String],
    approver: &str,
    key: &nkeys::KeyPair,
    decision: Decision,
) -> sqlx::Result<Option<(Reason, String)>> {
    if approver == cmd.requested_by {
        return Ok(Some((Reason::SelfApproval, format!("{approver} requested the command and cannot decide it"))));
    }
    let registered: Option<String> = sqlx::query_scalar(
        "SELECT public_key FROM approvers WHERE tenant_id = $1 AND approver_id = $2 AND revoked_at IS NULL",
    )
    .bind(&cmd.tenant_id)
    .bind(approver)
    .fetch_optional(pool)
    .await?;
    let Some(registered) = registered else {
        let why = format!(
            "{approver} is not a registered approver of tenant {} (or was revoked): `tillsync approvers list --tenant {}`",
            cmd.tenant_id, cmd.tenant_id
        );
        return Ok(Some((Reason::UnknownApprover, why)));
    };
    if registered != key.public_key() {
        let why = format!(
            "the key file's public key {} is not the one registered for {approver} ({registered})",
            key.public_key()
        );
        return Ok(Some((Reason::BadApprovalSignature, why)));
    }
    if decision == Decision::Approve && approved_by.iter().any(|a| a == approver) {
        return Ok(Some((Reason::DuplicateApprover, format!("{approver} approved this command already"))));
    }
    Ok(None)
}

/// Publishes the decision on intake and returns the first status that answers it, or the
/// broker's record of it when no status comes.
async fn publish_and_wait(
    pool: &sqlx::PgPool,
    nats: &crate::global::NatsArgs,
    req: &CommandDecision,
    wait_s: u64,
) -> anyhow::Result<Answer> {
    // Decisions recorded before this one are not its answer.
    let before: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(id), 0) FROM command_decisions WHERE tenant_id = $1 AND command_id = $2",
    )
    .bind(&req.tenant_id)
    .bind(&req.command_id)
    .fetch_one(pool)
    .await?;
    let recorded = || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT code FROM command_decisions
             WHERE tenant_id = $1 AND command_id = $2 AND approver_id = $3 AND decision = $4 AND id > $5
             ORDER BY id LIMIT 1",
        )
        .bind(&req.tenant_id)
        .bind(&req.command_id)
        .bind(&req.approver)
        .bind(req.decision.as_str())
        .bind(before)
        .fetch_optional(pool)
        .await
    };
    let client = nats.connect().await?;
    let mut sub = client.subscribe(subject::status(&req.tenant_id, &req.store_id, &req.command_id)).await?;
    client.flush().await?;
    let js = async_nats::jetstream::new(client);
    let mut h = async_nats::HeaderMap::new();
    let msg_id = format!("{}:{}:{}:{}", req.decision.as_str(), req.command_id, req.approver, uuid::Uuid::now_v7());
    h.insert(streams::HEADER_MSG_ID, msg_id.as_str());
    h.insert(streams::HEADER_CONTENT_TYPE, streams::CONTENT_TYPE);
    js.publish_with_headers(subject::approve(&req.tenant_id, &req.store_id), h, codec::encode(req).into())
        .await
        .context("publishing the decision on intake")?
        .await
        .context("intake stream did not confirm the decision (is the broker's TILLSYNC_INTAKE stream there?)")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_s);
    let mut look = tokio::time::interval(Duration::from_millis(500));
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout_at(deadline, sub.next()) => match m {
                Ok(Some(m)) => m,
                Ok(None) => anyhow::bail!("the status subscription ended (NATS connection lost)"),
                Err(_) => match recorded().await? {
                    Some(code) => return Ok(Answer::Recorded(code)),
                    None => return Err(unanswered(req, wait_s).into()),
                },
            },
            _ = look.tick() => {
                if let Some(Some(code)) = recorded().await? {
                    if code == Reason::NotPendingApproval.as_str() {
                        return Ok(Answer::Recorded(Some(code)));
                    }
                }
                continue;
            }
        };
        let Ok(st) = codec::decode::<CommandStatus>(&msg.payload) else { continue };
        if verdict(&st, &req.approver, req.decision).is_some() {
            return Ok(Answer::Status(st));
        }
    }
}

/// What `st`, a status after `approver`'s `decision` was published, says about it; `None`:
/// nothing (another approver's decision counted meanwhile).
fn verdict(st: &CommandStatus, approver: &str, decision: Decision) -> Option<Verdict> {
    let refusal = |code: &str| {
        matches!(
            Reason::parse(code),
            Some(
                Reason::BadApprovalSignature
                    | Reason::UnknownApprover
                    | Reason::SelfApproval
                    | Reason::DuplicateApprover
                    | Reason::NotPendingApproval
                    | Reason::UnsignedApproval
            )
        )
    };
    match (st.state, st.code.as_deref(), decision) {
        // The broker repeats `pending_approval` with the reason when it refuses a decision.
        (CommandState::PendingApproval, Some(_), _) => Some(Verdict::Refused),
        (CommandState::PendingApproval, None, Decision::Approve) => {
            names(&st.detail, approver).then_some(Verdict::Counted)
        }
        (CommandState::PendingApproval, None, Decision::Reject) => None,
        (_, Some(code), _) if refusal(code) => Some(Verdict::Refused),
        (CommandState::Queued | CommandState::Delivered | CommandState::Acked, _, Decision::Approve) => {
            Some(Verdict::Counted)
        }
        (CommandState::Rejected, Some(code), Decision::Reject) if code == Reason::ApprovalRejected.as_str() => {
            Some(Verdict::Counted)
        }
        _ => Some(Verdict::Ended),
    }
}

/// Whether `detail` names `approver` as a whole word (ids are letters, digits, `_`, `-`).
fn names(detail: &str, approver: &str) -> bool {
    detail.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).any(|w| w == approver)
}

fn unanswered(req: &CommandDecision, wait_s: u64) -> Known {
    Known {
        code: "wait_timed_out",
        message: format!(
            "no answer from the broker within {wait_s} s about {}'s {} of command {}",
            req.approver,
            req.decision.as_str(),
            req.command_id
        ),
        hint: format!(
            "is the broker running (`tillsync status`)? `tillsync commands show {}` shows the decisions it recorded",
            req.command_id
        ),
    }
}

fn human_reviewed(decision: Decision, id: &str, r: &Reviewed) -> String {
    let device = r.device_id.as_deref().map_or("every device of the store".to_string(), |d| format!("device {d}"));
    let fields: Vec<String> = match &r.payload {
        serde_json::Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        other => vec![other.to_string()],
    };
    let so_far = if r.approved_by.is_empty() { "none".to_string() } else { r.approved_by.join(", ") };
    format!(
        "{} command {id}\n  {} for {}/{} {device}\n  {}\n  requested by {}, issued {}, expires {}\n  approvals {} of {} ({so_far})\n",
        decision.as_str(),
        r.kind,
        r.tenant_id,
        r.store_id,
        fields.join(" "),
        r.requested_by,
        ts(r.issued_at),
        ts(r.expires_at),
        r.approved_by.len(),
        r.needs,
    )
}

fn human(d: &Decided) -> String {
    let what = match (d.outcome, d.decision) {
        ("counted", Decision::Approve) if d.state == CommandState::PendingApproval.as_str() => {
            let have = d.command.approved_by.len() + 1;
            if have >= d.command.needs {
                format!("approval counted, {have} of {}: the command goes on to its devices", d.command.needs)
            } else {
                format!("approval counted, {have} of {}: it waits for another approver", d.command.needs)
            }
        }
        ("counted", Decision::Approve) => format!("approval counted; the command is {}", d.state),
        ("counted", Decision::Reject) => "rejection counted; the command is rejected".to_string(),
        ("refused", _) => format!("refused: {}", d.code.as_deref().unwrap_or("-")),
        ("not_pending", _) => "not sent: the command no longer waits for approval".to_string(),
        _ => format!("the command ended {} {}", d.state, d.code.as_deref().unwrap_or("")),
    };
    let detail = if d.detail.is_empty() { String::new() } else { format!("\n  {}", d.detail) };
    format!("{} {}: {}{detail}", d.approver, d.command_id, what.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: CommandState, code: Option<&str>, detail: &str) -> CommandStatus {
        CommandStatus {
            command_id: "c".into(),
            tenant_id: "t".into(),
            store_id: "s".into(),
            device_id: None,
            state,
            attempt: 0,
            code: code.map(String::from),
            detail: detail.into(),
            at_ms: 0,
            corrects: None,
        }
    }

    #[test]
    fn statuses_after_a_decision_say_whether_it_counted() {
        use CommandState::*;
        use Decision::*;
        let v = |st: CommandState, code: Option<&str>, detail: &str, d: Decision| {
            verdict(&status(st, code, detail), "bob", d)
        };
        assert_eq!(v(PendingApproval, None, "approved by bob (1 of 2)", Approve), Some(Verdict::Counted));
        assert_eq!(v(PendingApproval, None, "approved by bobby (1 of 2)", Approve), None, "another approver");
        assert_eq!(
            v(PendingApproval, Some("unknown_approver"), "bob is not registered", Approve),
            Some(Verdict::Refused)
        );
        assert_eq!(v(PendingApproval, Some("bad_approval_signature"), "", Reject), Some(Verdict::Refused));
        assert_eq!(v(Queued, None, "", Approve), Some(Verdict::Counted));
        assert_eq!(v(Acked, None, "", Approve), Some(Verdict::Counted));
        assert_eq!(v(Rejected, Some("approval_rejected"), "rejected by bob", Reject), Some(Verdict::Counted));
        assert_eq!(v(Rejected, Some("approval_rejected"), "rejected by carol", Approve), Some(Verdict::Ended));
        assert_eq!(v(Rejected, Some("expired"), "", Approve), Some(Verdict::Ended));
        assert_eq!(v(Rejected, Some("not_pending_approval"), "", Approve), Some(Verdict::Refused));
        assert_eq!(v(Queued, None, "", Reject), Some(Verdict::Ended), "approved by others first");
    }

    #[test]
    fn an_approver_is_named_as_a_whole_word() {
        assert!(names("approved by bob (1 of 2)", "bob"));
        assert!(names("bob", "bob"));
        assert!(names("approver-a, approver-b", "approver-b"));
        assert!(!names("approved by bobby", "bob"));
        assert!(!names("approver-ab", "approver-a"));
    }
}
