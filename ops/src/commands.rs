//! `tillsync commands list|show|send|approve|reject|cancel`: the command inbox as the broker
//! recorded it, one command's whole history with its approvers' decisions, sending a command
//! the way the portal does (built, signed by the approvers given, published on intake; `--wait`
//! follows its status messages to a final state), an approver's decision about a command
//! waiting for approval ([`approve`]), and cancelling one ([`cancel`]).
//!
//! Exit codes: 0 ok (with `--wait`: every device acked; `cancel`: every copy cancelled;
//! `approve|reject`: the decision counted); 1 error, or wait timed out; 2 usage (an invalid id,
//! also `send --approver`: approvals are signed now); 3 with `--wait`, the command ended
//! rejected, failed, expired or cancelled, or the broker quarantined it; `approve|reject`
//! refused; 4 no such command, tenant, store, device or approver (`send` checks before
//! publishing); 5 `cancel` came too late for a copy (already applied, or otherwise ended),
//! `approve|reject` of a command that no longer waits for approval.

mod approve;
mod cancel;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde::Serialize;
use tillsync_schemas::approval::{self, Decision};
use tillsync_schemas::command::COMMAND_KINDS;
use tillsync_schemas::{
    codec, streams, subject, Approval, CommandBody, CommandEnvelope, CommandState, CommandStatus, SCHEMA_VERSION,
};

use crate::failure::{Known, Missing, Usage, PROBLEMS};
use crate::global::Global;
use crate::known;
use crate::output::{emit, table, ts};

#[derive(Debug, Args)]
pub struct CommandsArgs {
    #[command(subcommand)]
    cmd: CommandsCmd,
}

#[derive(Debug, Subcommand)]
enum CommandsCmd {
    /// Commands per device with their state, newest first (rejected ones too).
    List {
        /// Only this tenant's commands.
        #[arg(long, value_parser = known::id)]
        tenant: Option<String>,
        /// Only this store's commands.
        #[arg(long, value_parser = known::id)]
        store: Option<String>,
        /// Only this device's copies.
        #[arg(long, value_parser = known::id)]
        device: Option<String>,
        /// Only copies in this state.
        #[arg(long, value_parser = states())]
        state: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
    },
    /// One command: what was sent, its per-device inbox entries, every transition and every ack.
    Show {
        /// The command's id (as `send` printed it, or from `list`).
        #[arg(value_parser = known::command_id)]
        command_id: String,
        /// The tenant, when the id exists in more than one.
        #[arg(long, value_parser = known::id)]
        tenant: Option<String>,
    },
    /// Build, sign the approvals of and publish a command on intake, as the portal does; prints
    /// its id. With fewer approvals than its kind needs it waits in `pending_approval`.
    Send(Box<SendArgs>),
    /// Approve a command waiting in `pending_approval`, as a registered approver, signed with
    /// the approver's key; prints the command first, then what the broker answered.
    Approve(approve::DecideArgs),
    /// Reject a command waiting in `pending_approval` (it ends `rejected`, code
    /// `approval_rejected`), as a registered approver, signed with the approver's key.
    Reject(approve::DecideArgs),
    /// Cancel a command on every device that has not applied it, as the portal does.
    Cancel {
        /// The command's id.
        #[arg(value_parser = known::command_id)]
        command_id: String,
        /// The tenant, when the id exists in more than one.
        #[arg(long, value_parser = known::id)]
        tenant: Option<String>,
        /// Who asks for the cancel (recorded in the command's history).
        #[arg(long, default_value = "operator")]
        requested_by: String,
        /// Longest wait for the broker's answer, seconds.
        #[arg(long, default_value_t = 30)]
        wait_s: u64,
    },
}

#[derive(Debug, Args)]
struct SendArgs {
    /// The tenant; it must exist (`tillsync tenants add`), else the broker quarantines the command.
    #[arg(long, value_parser = known::id)]
    tenant: String,
    /// The store the command is for; it must have a device in service.
    #[arg(long, value_parser = known::id)]
    store: String,
    /// Target device (it must exist); without it the command goes to every device of the store.
    #[arg(long, value_parser = known::id)]
    device: Option<String>,
    /// What the command does.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(COMMAND_KINDS))]
    kind: String,
    /// The whole payload as JSON, instead of the per-kind flags.
    #[arg(long)]
    payload_json: Option<String>,
    /// The order (refund_order, void_order, set_order_status).
    #[arg(long)]
    order_id: Option<String>,
    /// The payment to refund (refund_order).
    #[arg(long)]
    payment_id: Option<String>,
    /// Amount to refund in minor units, e.g. cents (refund_order).
    #[arg(long)]
    amount_minor: Option<i64>,
    /// ISO 4217 currency of the amount (refund_order).
    #[arg(long)]
    currency: Option<String>,
    /// Why (refund_order, void_order).
    #[arg(long)]
    reason: Option<String>,
    /// New order status (set_order_status).
    #[arg(long)]
    status: Option<String>,
    /// The menu to apply (apply_menu_publish).
    #[arg(long)]
    menu_id: Option<String>,
    /// Menu version (apply_menu_publish).
    #[arg(long)]
    version: Option<u64>,
    /// Settings revision (settings_patch).
    #[arg(long)]
    revision: Option<u64>,
    /// A setting to patch, `key=value` (repeatable; settings_patch).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = key_value)]
    settings: Vec<String>,
    /// The user to create or update (user_upsert).
    #[arg(long)]
    user_id: Option<String>,
    /// The user's name as the till shows it (user_upsert).
    #[arg(long)]
    display_name: Option<String>,
    /// The user's role (user_upsert).
    #[arg(long)]
    user_role: Option<String>,
    /// Who asks for the command (recorded with it).
    #[arg(long)]
    requested_by: String,
    /// An approver and their seed file: the approval is signed with it (repeat for two;
    /// refunds, voids and status changes need two). Missing approvals can follow with
    /// `tillsync commands approve`; meanwhile the command waits in `pending_approval`.
    #[arg(long = "approve-as", value_name = "APPROVER=SEEDFILE", value_parser = approve_as)]
    approve_as: Vec<ApproveAs>,
    /// Names-only approvals are no longer accepted: refused with a pointer to --approve-as.
    #[arg(long = "approver", hide = true)]
    approvers: Vec<String>,
    /// Role recorded with each approval.
    #[arg(long, default_value = "manager")]
    approver_role: String,
    /// Time to live, seconds.
    #[arg(long, default_value_t = 3_600)]
    ttl_s: i64,
    /// Apply only if the device's current revision of the target equals this.
    #[arg(long)]
    if_match: Option<u64>,
    /// Follow the status messages until every device's entry is final: exit 0 when every
    /// device acked, 3 when the command ended otherwise (rejected, failed, expired, cancelled,
    /// or quarantined by the broker), 1 when no final state came within `--wait-s`.
    #[arg(long)]
    wait: bool,
    /// Longest wait with `--wait`, seconds.
    #[arg(long, default_value_t = 60)]
    wait_s: u64,
}

pub async fn run(args: CommandsArgs, global: &Global) -> anyhow::Result<ExitCode> {
    match args.cmd {
        CommandsCmd::List { tenant, store, device, state, limit } => {
            list(global, tenant, store, device, state, limit).await
        }
        CommandsCmd::Show { command_id, tenant } => show(global, &command_id, tenant).await,
        CommandsCmd::Send(a) => send(global, *a).await,
        CommandsCmd::Approve(a) => approve::run(global, &a, Decision::Approve).await,
        CommandsCmd::Reject(a) => approve::run(global, &a, Decision::Reject).await,
        CommandsCmd::Cancel { command_id, tenant, requested_by, wait_s } => {
            cancel::run(global, &command_id, tenant, &requested_by, wait_s).await
        }
    }
}

#[derive(Serialize, sqlx::FromRow)]
struct ListRow {
    tenant_id: String,
    store_id: String,
    command_id: String,
    kind: String,
    device_id: Option<String>,
    state: String,
    attempts: i32,
    code: Option<String>,
    received_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

async fn list(
    global: &Global,
    tenant: Option<String>,
    store: Option<String>,
    device: Option<String>,
    state: Option<String>,
    limit: i64,
) -> anyhow::Result<ExitCode> {
    let pool = global.pool().await?;
    known::filters(&pool, tenant.as_deref(), store.as_deref(), device.as_deref()).await?;
    let rows: Vec<ListRow> = sqlx::query_as(
        "SELECT * FROM (
           SELECT c.tenant_id, c.store_id, c.command_id, c.kind, coalesce(i.device_id, c.device_id) AS device_id,
                  -- Ended while waiting for approval: its log says how (rejected, expired as
                  -- rejected, or cancelled); 'rejected' only for a row older than the log.
                  coalesce(i.state, CASE WHEN c.rejected_code IS NOT NULL THEN coalesce(l.state, 'rejected')
                                         WHEN c.pending_approval THEN 'pending_approval'
                                         ELSE coalesce(l.state, 'queued') END) AS state,
                  coalesce(i.attempts, 0) AS attempts, coalesce(i.last_code, c.rejected_code, l.code) AS code,
                  c.received_at, c.expires_at, coalesce(i.inbox_seq, 0) AS seq
           FROM commands c
           LEFT JOIN command_inbox i ON i.tenant_id = c.tenant_id AND i.command_id = c.command_id
           -- A command without inbox entries (waiting for approval, or ended while waiting):
           -- its last command-wide transition.
           LEFT JOIN LATERAL (
             SELECT state, code FROM command_log l
             WHERE i.command_id IS NULL AND l.tenant_id = c.tenant_id AND l.command_id = c.command_id
               AND l.device_id IS NULL
             ORDER BY l.id DESC LIMIT 1
           ) l ON true
         ) r
         WHERE ($1::text IS NULL OR r.tenant_id = $1) AND ($2::text IS NULL OR r.store_id = $2)
           AND ($3::text IS NULL OR r.device_id = $3) AND ($4::text IS NULL OR r.state = $4)
         ORDER BY r.received_at DESC, r.seq DESC
         LIMIT $5",
    )
    .bind(&tenant)
    .bind(&store)
    .bind(&device)
    .bind(&state)
    .bind(limit)
    .fetch_all(&pool)
    .await?;
    emit(global.json, &rows, |rows| {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.command_id.clone(),
                    format!("{}/{}", r.tenant_id, r.store_id),
                    r.device_id.clone().unwrap_or_else(|| "(store)".into()),
                    r.kind.clone(),
                    r.state.clone(),
                    r.attempts.to_string(),
                    r.code.clone().unwrap_or_else(|| "-".into()),
                    ts(Some(r.received_at)),
                    ts(Some(r.expires_at)),
                ]
            })
            .collect();
        table(
            &["COMMAND", "TENANT/STORE", "DEVICE", "KIND", "STATE", "ATTEMPTS", "CODE", "RECEIVED", "EXPIRES"],
            &cells,
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize, sqlx::FromRow)]
struct CommandRow {
    tenant_id: String,
    store_id: String,
    command_id: String,
    device_id: Option<String>,
    kind: String,
    requested_by: String,
    approvers: Vec<String>,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
    rejected_code: Option<String>,
    /// Waiting for the approvals its kind needs (`tillsync commands approve`).
    pending_approval: bool,
    #[serde(skip)]
    envelope: Vec<u8>,
}

/// An approver's decision about the command after it was recorded (`commands approve|reject`).
#[derive(Serialize, sqlx::FromRow)]
struct DecisionRow {
    at: DateTime<Utc>,
    approver_id: String,
    decision: String,
    /// `None`: counted; else why the broker refused it.
    code: Option<String>,
}

#[derive(Serialize, sqlx::FromRow)]
struct InboxRow {
    device_id: String,
    state: String,
    attempts: i32,
    next_attempt_at: Option<DateTime<Utc>>,
    last_code: Option<String>,
    updated_at: DateTime<Utc>,
    /// Stream sequence of the latest copy published to TILLSYNC_COMMANDS.
    stream_seq: Option<i64>,
    /// Copies still in the stream as far as the broker knows (none once the command ended).
    copies: Vec<i64>,
    /// The device applied the command after the portal was told it ended.
    applied_after_final_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, sqlx::FromRow)]
struct LogRow {
    at: DateTime<Utc>,
    device_id: Option<String>,
    state: String,
    attempt: i32,
    code: Option<String>,
    actor: String,
    detail: String,
    /// On an `acked` row correcting an earlier final state: that state.
    corrects: Option<String>,
}

#[derive(Serialize, sqlx::FromRow)]
struct AckRow {
    received_at: DateTime<Utc>,
    device_id: String,
    outcome: String,
    code: String,
    effect: String,
    detail: String,
}

#[derive(Serialize)]
struct Shown {
    command: CommandRow,
    /// The envelope as sent, when it decodes.
    envelope: Option<CommandEnvelope>,
    inbox: Vec<InboxRow>,
    log: Vec<LogRow>,
    acks: Vec<AckRow>,
    /// Decisions of approvers after the command was recorded, counted or refused.
    decisions: Vec<DecisionRow>,
}

async fn show(global: &Global, command_id: &str, tenant: Option<String>) -> anyhow::Result<ExitCode> {
    let pool = global.pool().await?;
    known::filters(&pool, tenant.as_deref(), None, None).await?;
    let mut found: Vec<CommandRow> = sqlx::query_as(
        "SELECT tenant_id, store_id, command_id, device_id, kind, requested_by, approvers, issued_at, expires_at,
                received_at, rejected_code, pending_approval, envelope
         FROM commands WHERE command_id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
    )
    .bind(command_id)
    .bind(&tenant)
    .fetch_all(&pool)
    .await?;
    if found.is_empty() {
        return Err(no_command(command_id, tenant.as_deref()).into());
    }
    if found.len() > 1 {
        return Err(Usage(format!("command {command_id} exists in {} tenants: pass --tenant", found.len())).into());
    }
    let command = found.remove(0);
    let t = command.tenant_id.clone();
    let inbox: Vec<InboxRow> = of_command(
        &pool,
        "SELECT device_id, state, attempts, next_attempt_at, last_code, updated_at, stream_seq, copies,
                applied_after_final_at FROM command_inbox
         WHERE tenant_id = $1 AND command_id = $2 ORDER BY device_id",
        &t,
        command_id,
    )
    .await?;
    let log: Vec<LogRow> = of_command(
        &pool,
        "SELECT at, device_id, state, attempt, code, actor, detail, corrects FROM command_log
         WHERE tenant_id = $1 AND command_id = $2 ORDER BY id",
        &t,
        command_id,
    )
    .await?;
    let acks: Vec<AckRow> = of_command(
        &pool,
        "SELECT received_at, device_id, outcome, code, effect, detail FROM command_acks
         WHERE tenant_id = $1 AND command_id = $2 ORDER BY id",
        &t,
        command_id,
    )
    .await?;
    let decisions: Vec<DecisionRow> = of_command(
        &pool,
        "SELECT at, approver_id, decision, code FROM command_decisions
         WHERE tenant_id = $1 AND command_id = $2 ORDER BY id",
        &t,
        command_id,
    )
    .await?;
    let envelope = codec::decode::<CommandEnvelope>(&command.envelope).ok();
    let shown = Shown { command, envelope, inbox, log, acks, decisions };
    emit(global.json, &shown, human_show)?;
    Ok(ExitCode::SUCCESS)
}

/// No command `id` (in `tenant`): exit 4.
pub(crate) fn no_command(id: &str, tenant: Option<&str>) -> Missing {
    let list = tenant.map(|t| format!(" --tenant {t}")).unwrap_or_default();
    Missing {
        code: "not_found",
        message: format!("no command {id}{}", tenant.map(|t| format!(" in tenant {t}")).unwrap_or_default()),
        hint: format!("`tillsync commands list{list}` shows the newest commands and their ids"),
    }
}

/// The rows of one command in a per-command table (`$1` tenant, `$2` command id).
async fn of_command<T>(pool: &sqlx::PgPool, sql: &str, tenant: &str, command_id: &str) -> sqlx::Result<Vec<T>>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(sql).bind(tenant).bind(command_id).fetch_all(pool).await
}

fn human_show(s: &Shown) -> String {
    let c = &s.command;
    let mut out = format!(
        "command   {}\ntenant    {} / store {} / device {}\nkind      {}\nrequested {} approved by {}\nissued    {}\nexpires   {}\nreceived  {}\n",
        c.command_id,
        c.tenant_id,
        c.store_id,
        c.device_id.as_deref().unwrap_or("(every device of the store)"),
        c.kind,
        c.requested_by,
        match approved_by(s) {
            names if names.is_empty() => "nobody".to_string(),
            names => names.join(", "),
        },
        ts(Some(c.issued_at)),
        ts(Some(c.expires_at)),
        ts(Some(c.received_at)),
    );
    if let Some(code) = &c.rejected_code {
        out.push_str(&format!("REJECTED  {code}\n"));
    }
    if c.pending_approval {
        let need = s.envelope.as_ref().map_or(0, |e| e.body.required_approvals());
        let have = approved_by(s).len();
        out.push_str(&format!(
            "PENDING   approval: {have} of {need} approver(s); `tillsync commands approve {} --approver A --key-file FILE`\n",
            c.command_id
        ));
    }
    if let Some(body) = s.envelope.as_ref().and_then(|e| serde_json::to_string(&e.body).ok()) {
        out.push_str(&format!("body      {body}\n"));
    }
    if !s.inbox.is_empty() {
        out.push_str("\nInbox\n");
        let rows: Vec<Vec<String>> = s
            .inbox
            .iter()
            .map(|i| {
                vec![
                    i.device_id.clone(),
                    i.state.clone(),
                    i.attempts.to_string(),
                    i.last_code.clone().unwrap_or_else(|| "-".into()),
                    ts(i.next_attempt_at),
                    ts(Some(i.updated_at)),
                    i.stream_seq.map_or_else(|| "-".into(), |s| s.to_string()),
                    ts(i.applied_after_final_at),
                ]
            })
            .collect();
        let header =
            ["DEVICE", "STATE", "ATTEMPTS", "CODE", "NEXT CHECK", "UPDATED", "STREAM SEQ", "APPLIED AFTER FINAL"];
        out.push_str(&table(&header, &rows));
        for i in s.inbox.iter().filter(|i| i.applied_after_final_at.is_some()) {
            out.push_str(&format!(
                "NOTE      {} applied it at {} after the portal was told {}\n",
                i.device_id,
                ts(i.applied_after_final_at),
                i.state
            ));
        }
    }
    out.push_str("\nHistory\n");
    let rows: Vec<Vec<String>> = s
        .log
        .iter()
        .map(|l| {
            vec![
                ts(Some(l.at)),
                l.device_id.clone().unwrap_or_else(|| "-".into()),
                l.state.clone(),
                l.attempt.to_string(),
                l.code.clone().unwrap_or_else(|| "-".into()),
                l.actor.clone(),
                match &l.corrects {
                    Some(c) => format!("[corrects {c}] {}", l.detail),
                    None => l.detail.clone(),
                },
            ]
        })
        .collect();
    out.push_str(&table(&["AT", "DEVICE", "STATE", "ATTEMPT", "CODE", "BY", "DETAIL"], &rows));
    if !s.acks.is_empty() {
        out.push_str("\nAcks\n");
        let rows: Vec<Vec<String>> = s
            .acks
            .iter()
            .map(|a| {
                vec![
                    ts(Some(a.received_at)),
                    a.device_id.clone(),
                    a.outcome.clone(),
                    a.code.clone(),
                    a.effect.clone(),
                    a.detail.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["RECEIVED", "DEVICE", "OUTCOME", "CODE", "EFFECT", "DETAIL"], &rows));
    }
    if !s.decisions.is_empty() {
        out.push_str("\nDecisions\n");
        let rows: Vec<Vec<String>> = s
            .decisions
            .iter()
            .map(|d| {
                vec![
                    ts(Some(d.at)),
                    d.approver_id.clone(),
                    d.decision.clone(),
                    d.code.as_deref().map_or_else(|| "counted".to_string(), |c| format!("refused: {c}")),
                ]
            })
            .collect();
        out.push_str(&table(&["AT", "APPROVER", "DECISION", "RESULT"], &rows));
    }
    out
}

/// Approvers counted: those the command arrived with, then those whose approval counted since.
fn approved_by(s: &Shown) -> Vec<&str> {
    let mut names: Vec<&str> = s.command.approvers.iter().map(String::as_str).collect();
    for d in &s.decisions {
        if d.decision == Decision::Approve.as_str() && d.code.is_none() && !names.contains(&d.approver_id.as_str()) {
            names.push(&d.approver_id);
        }
    }
    names
}

/// The command body from `--payload-json` or the per-kind flags.
fn body(a: &SendArgs) -> anyhow::Result<CommandBody> {
    let payload = match &a.payload_json {
        Some(j) => serde_json::from_str(j).map_err(|e| Usage(format!("--payload-json is not JSON: {e}")))?,
        None => {
            let mut p = serde_json::Map::new();
            let mut put = |k: &str, v: Option<serde_json::Value>| {
                if let Some(v) = v {
                    p.insert(k.into(), v);
                }
            };
            put("order_id", a.order_id.clone().map(Into::into));
            put("payment_id", a.payment_id.clone().map(Into::into));
            put("amount_minor", a.amount_minor.map(Into::into));
            put("currency", a.currency.clone().map(Into::into));
            put("reason", a.reason.clone().map(Into::into));
            put("status", a.status.clone().map(Into::into));
            put("menu_id", a.menu_id.clone().map(Into::into));
            put("version", a.version.map(Into::into));
            put("revision", a.revision.map(Into::into));
            put("user_id", a.user_id.clone().map(Into::into));
            put("display_name", a.display_name.clone().map(Into::into));
            put("role", a.user_role.clone().map(Into::into));
            if a.kind == "settings_patch" {
                let mut settings = BTreeMap::new();
                for kv in &a.settings {
                    // `key_value` let only KEY=VALUE through.
                    if let Some((k, v)) = kv.split_once('=') {
                        settings.insert(k.to_string(), v.to_string());
                    }
                }
                p.insert("settings".into(), serde_json::to_value(settings)?);
            }
            serde_json::Value::Object(p)
        }
    };
    serde_json::from_value(serde_json::json!({ "kind": a.kind, "payload": payload }))
        .map_err(|e| Usage(format!("cannot build a {} command from the given flags: {e}", a.kind)).into())
}

#[derive(Serialize)]
struct Sent {
    command_id: String,
    subject: String,
    /// With `--wait`: every status message received, in order.
    statuses: Vec<CommandStatus>,
    /// With `--wait`: the final state per device (or `rejected` or `quarantined` for the
    /// whole command, keyed `(command)`).
    outcome: BTreeMap<String, String>,
    /// With `--wait`, when the broker quarantined the command: the quarantine row.
    quarantine: Option<Quarantined>,
}

#[derive(Serialize, sqlx::FromRow)]
struct Quarantined {
    id: i64,
    reason: String,
    detail: String,
}

async fn send(global: &Global, a: SendArgs) -> anyhow::Result<ExitCode> {
    if let Some(name) = a.approvers.first() {
        return Err(Usage(format!(
            "--approver {name}: approvals are signed now, a name alone is refused (unsigned_approval); \
             sign with the approver's key: --approve-as {name}=SEEDFILE, or send without and let the approver \
             run `tillsync commands approve ID --approver {name} --key-file SEEDFILE`"
        ))
        .into());
    }
    check_approve_as(&a.approve_as, &a.requested_by)?;
    let keys = a
        .approve_as
        .iter()
        .map(|ap| {
            tillsync_broker::admin::keyfile::read_seed(&ap.key_file)
                .map_err(|e| anyhow::Error::new(e).context(format!("--approve-as {}", ap.approver)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let now = tillsync_schemas::now_ms();
    let mut cmd = CommandEnvelope {
        schema_version: SCHEMA_VERSION,
        command_id: uuid::Uuid::now_v7().to_string(),
        tenant_id: a.tenant.clone(),
        store_id: a.store.clone(),
        device_id: a.device.clone(),
        body: body(&a)?,
        issued_at_ms: now,
        expires_at_ms: now + a.ttl_s.saturating_mul(1000),
        requested_by: a.requested_by.clone(),
        approvals: Vec::new(),
        if_match: a.if_match,
    };
    // Each signs the command as built, approvals empty (what `approval::sign` covers anyway).
    cmd.approvals = a
        .approve_as
        .iter()
        .zip(&keys)
        .map(|(ap, key)| Approval {
            approver: ap.approver.clone(),
            role: a.approver_role.clone(),
            approved_at_ms: now,
            signature: Some(approval::sign(key, &cmd, &ap.approver, Decision::Approve)),
        })
        .collect();
    // Structure only: the approval policy is the broker's to enforce (and to report).
    cmd.validate().map_err(|e| Usage(format!("invalid command: {e}")))?;
    let pool = global.pool().await?;
    targets(&pool, &cmd).await?;
    let client = global.nats.connect().await?;
    let mut statuses_sub = if a.wait {
        let sub = client.subscribe(subject::status(&cmd.tenant_id, &cmd.store_id, &cmd.command_id)).await?;
        client.flush().await?;
        Some(sub)
    } else {
        None
    };
    let js = async_nats::jetstream::new(client);
    let subj = subject::intake(&cmd.tenant_id, &cmd.store_id, cmd.device_id.as_deref());
    let mut h = async_nats::HeaderMap::new();
    h.insert(streams::HEADER_MSG_ID, cmd.command_id.as_str());
    h.insert(streams::HEADER_CONTENT_TYPE, streams::CONTENT_TYPE);
    let ack = js
        .publish_with_headers(subj.clone(), h, codec::encode(&cmd).into())
        .await
        .context("publishing on intake")?
        .await
        .context("intake stream did not confirm (is the broker's TILLSYNC_INTAKE stream there?)")?;
    let mut sent = Sent {
        command_id: cmd.command_id.clone(),
        subject: subj,
        statuses: Vec::new(),
        outcome: BTreeMap::new(),
        quarantine: None,
    };
    if !global.json {
        println!("{}", cmd.command_id);
    }
    let need = cmd.body.required_approvals();
    if cmd.approvals.len() < need {
        eprintln!(
            "note: {} needs {need} approver(s) and carries {}: it waits in pending_approval until \
             `tillsync commands approve {} --approver A --key-file SEEDFILE`",
            cmd.body.kind(),
            cmd.approvals.len(),
            cmd.command_id
        );
    }
    let Some(sub) = statuses_sub.as_mut() else {
        if global.json {
            emit(true, &sent, |_| String::new())?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let code = wait(global, &pool, sub, ack.sequence, a.wait_s, &mut sent).await?;
    pool.close().await;
    if global.json {
        emit(true, &sent, |_| String::new())?;
    }
    Ok(code)
}

/// Refuses, before anything is published, a command the broker would quarantine (unknown
/// tenant) or reject as `unknown_device` (no such store or device, or none in service).
async fn targets(pool: &sqlx::PgPool, cmd: &CommandEnvelope) -> anyhow::Result<()> {
    let nothing_sent = |e: anyhow::Error| match e.downcast::<Missing>() {
        Ok(mut m) => {
            m.message.push_str(": nothing was sent");
            m.into()
        }
        Err(e) => e,
    };
    let (tenant, store, device) = (&cmd.tenant_id, &cmd.store_id, cmd.device_id.as_deref());
    known::filters(pool, Some(tenant), Some(store), device).await.map_err(nothing_sent)?;
    let in_service: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM devices WHERE tenant_id = $1 AND store_id = $2
                          AND ($3::text IS NULL OR device_id = $3) AND decommissioned_at IS NULL)",
    )
    .bind(tenant)
    .bind(store)
    .bind(device)
    .fetch_one(pool)
    .await?;
    if in_service {
        return Ok(());
    }
    let what = match device {
        Some(d) => format!("device {tenant}/{store}/{d} is decommissioned"),
        None => format!("store {tenant}/{store} has no device in service (all decommissioned)"),
    };
    Err(Known {
        code: "decommissioned",
        message: format!("{what}: the broker would reject the command (unknown_device), nothing was sent"),
        hint: format!("`tillsync devices list --tenant {tenant} --store {store}` shows the devices in service"),
    }
    .into())
}

/// Follows the command's status messages until every device's copy is final, or the broker
/// quarantines it at intake (found in `quarantine` by its intake stream sequence, as no
/// status is published for a command the broker could not attribute to a known tenant).
async fn wait(
    global: &Global,
    pool: &sqlx::PgPool,
    sub: &mut async_nats::Subscriber,
    intake_seq: u64,
    wait_s: u64,
    sent: &mut Sent,
) -> anyhow::Result<ExitCode> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_s);
    let mut latest: BTreeMap<String, CommandState> = BTreeMap::new();
    let mut look = tokio::time::interval(Duration::from_millis(500));
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout_at(deadline, sub.next()) => match m {
                Ok(Some(m)) => m,
                Ok(None) => anyhow::bail!("the status subscription ended (NATS connection lost)"),
                Err(_) => return Err(timed_out(&sent.command_id, wait_s, &latest).into()),
            },
            _ = look.tick() => {
                if let Some(q) = quarantined(pool, intake_seq).await? {
                    if !global.json {
                        println!("(command)  quarantined  {}  {}", q.reason, q.detail);
                    }
                    eprintln!(
                        "hint: the broker quarantined the command ({}): `tillsync quarantine show {}`, fix the \
                         cause, then `tillsync quarantine redrive {}`",
                        q.reason, q.id, q.id
                    );
                    sent.outcome = BTreeMap::from([("(command)".to_string(), "quarantined".to_string())]);
                    sent.quarantine = Some(q);
                    return Ok(ExitCode::from(PROBLEMS));
                }
                continue;
            }
        };
        let Ok(st) = codec::decode::<CommandStatus>(&msg.payload) else { continue };
        if st.state == CommandState::PendingApproval && st.code.is_none() && !latest.contains_key(COMMAND) {
            eprintln!(
                "pending approval: approve with `tillsync commands approve {} --approver A --key-file SEEDFILE`; \
                 waiting up to --wait-s for a final state",
                sent.command_id
            );
        }
        if !global.json {
            println!(
                "{}  {:<9} attempt {}  {}{}",
                st.device_id.as_deref().unwrap_or("(store)"),
                st.state.as_str(),
                st.attempt,
                st.code.as_deref().unwrap_or("-"),
                if st.detail.is_empty() { String::new() } else { format!("  {}", st.detail) },
            );
        }
        match (st.state, &st.device_id) {
            // Waiting for approval is the whole command's state, until a copy is queued.
            (CommandState::PendingApproval, _) => {
                latest.insert(COMMAND.into(), st.state);
            }
            (_, device) => {
                latest.remove(COMMAND);
                latest.insert(device.clone().unwrap_or_else(|| "(store)".into()), st.state);
            }
        }
        let rejected = st.state == CommandState::Rejected;
        sent.statuses.push(st);
        // Queued statuses of every device are published before any delivery, so once all
        // devices seen are final, the command is.
        if rejected || latest.values().all(|s| s.is_final()) {
            break;
        }
    }
    sent.outcome = latest.iter().map(|(d, s)| (d.clone(), s.as_str().to_string())).collect();
    let all_acked = latest.values().all(|s| *s == CommandState::Acked);
    Ok(if all_acked { ExitCode::SUCCESS } else { ExitCode::from(PROBLEMS) })
}

/// Key of `wait`'s state of the whole command while it waits for approval.
const COMMAND: &str = "(command)";

/// The quarantine row of the intake message at `seq`, once the broker wrote it.
async fn quarantined(pool: &sqlx::PgPool, seq: u64) -> sqlx::Result<Option<Quarantined>> {
    sqlx::query_as("SELECT id, reason, detail FROM quarantine WHERE stream = $1 AND stream_seq = $2")
        .bind(streams::INTAKE)
        .bind(seq as i64)
        .fetch_optional(pool)
        .await
}

/// No final state in time: what was last heard of each copy, in words.
fn timed_out(command_id: &str, wait_s: u64, latest: &BTreeMap<String, CommandState>) -> Known {
    let heard = if latest.is_empty() {
        "no status message arrived".to_string()
    } else {
        let each: Vec<String> = latest.iter().map(|(d, s)| format!("{d} {}", s.as_str())).collect();
        format!("last heard: {}", each.join(", "))
    };
    Known {
        code: "wait_timed_out",
        message: format!("no final state for command {command_id} within {wait_s} s ({heard})"),
        hint: format!(
            "is the broker running (`tillsync status`)? `tillsync commands show {command_id}` shows what it recorded"
        ),
    }
}

/// `--state`: one of the command states.
fn states() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(CommandState::ALL.iter().map(|s| s.as_str()))
}

/// `--approve-as APPROVER=SEEDFILE`.
#[derive(Debug, Clone, PartialEq)]
struct ApproveAs {
    approver: String,
    key_file: std::path::PathBuf,
}

/// `--approve-as APPROVER=SEEDFILE`, checked as clap parses it.
fn approve_as(s: &str) -> Result<ApproveAs, String> {
    let Some((approver, file)) = s.split_once('=') else {
        return Err("expected APPROVER=SEEDFILE".into());
    };
    tillsync_schemas::ids::check_id("approver", approver).map_err(|e| e.to_string())?;
    if file.is_empty() {
        return Err("expected APPROVER=SEEDFILE: the seed file is missing".into());
    }
    Ok(ApproveAs { approver: approver.to_string(), key_file: file.into() })
}

/// What the broker would refuse anyway among the `--approve-as`: the requester approving, an
/// approver twice.
fn check_approve_as(approve_as: &[ApproveAs], requested_by: &str) -> Result<(), Usage> {
    let mut seen = std::collections::HashSet::new();
    for ap in approve_as {
        if ap.approver == requested_by {
            return Err(Usage(format!(
                "--approve-as {}: {requested_by} requests the command and cannot approve it",
                ap.approver
            )));
        }
        if !seen.insert(ap.approver.as_str()) {
            return Err(Usage(format!("--approve-as {}: the same approver twice counts once", ap.approver)));
        }
    }
    Ok(())
}

/// `--set KEY=VALUE`, checked as clap parses it.
fn key_value(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_string()),
        _ => Err("expected KEY=VALUE".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approve_as_takes_an_approver_and_a_seed_file() {
        let bob = approve_as("bob=/keys/bob.nk").unwrap();
        assert_eq!(bob, ApproveAs { approver: "bob".into(), key_file: "/keys/bob.nk".into() });
        // Only the first `=` splits: a file name may hold one.
        assert_eq!(approve_as("a-1=k=v.nk").unwrap().key_file, std::path::PathBuf::from("k=v.nk"));
        for bad in ["bob", "bob=", "=file", "b b=file", "bob.x=file"] {
            assert!(approve_as(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_requester_and_a_repeated_approver_are_refused() {
        let ap = |n: &str| ApproveAs { approver: n.into(), key_file: "k".into() };
        assert!(check_approve_as(&[ap("bob"), ap("carol")], "alice").is_ok());
        assert!(check_approve_as(&[ap("alice")], "alice").is_err());
        assert!(check_approve_as(&[ap("bob"), ap("bob")], "alice").is_err());
    }
}
