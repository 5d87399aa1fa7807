//! Consumes this device's commands from TILLSYNC_COMMANDS with a durable pull consumer (so
//! commands queued while offline arrive on reconnect), decides each one against the ledger,
//! runs the handler, records the outcome, publishes the CommandAck and only then acks the
//! JetStream message. One command at a time, in stream order.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::AckKind;
use async_nats::HeaderMap;
use futures::StreamExt;
use sqlx::sqlite::SqlitePool;
use tillsync_schemas::ack::codes;
use tillsync_schemas::ids::check_uuid_or_ulid;
use tillsync_schemas::signature::{self, SignatureError};
use tillsync_schemas::{codec, streams, subject, CommandAck, CommandEnvelope, DeviceAddr, Outcome};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::handler::{self, HandlerResult, HandlerSpec};
use crate::ledger::{self, Entry};
use crate::metrics::Metrics;
use crate::now_ms;

/// What to do with a delivered command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Seen before and finished: publish the stored outcome again.
    Reack { outcome: Outcome, code: String, detail: String },
    /// Refuse without running the handler.
    Reject { code: &'static str, detail: String },
    /// The bridge stopped while the handler ran: its effect is unknown, so it is not run again.
    Interrupted,
    /// Run the handler.
    Run,
}

pub const INTERRUPTED: &str = "interrupted";

/// How long the device's command consumer outlives its last pull: 30 days (docs/edge-bridge.md).
pub const INACTIVE_THRESHOLD: Duration = Duration::from_secs(30 * 24 * 3600);

/// The pure part: ledger entry, expiry, if-match.
pub fn decide(entry: Option<&Entry>, cmd: &CommandEnvelope, now_ms: i64, config_revision: u64) -> Decision {
    match entry {
        Some(Entry::Done { outcome, code, detail }) => {
            return Decision::Reack { outcome: *outcome, code: code.clone(), detail: detail.clone() }
        }
        Some(Entry::Applying) => return Decision::Interrupted,
        None => {}
    }
    if cmd.expires_at_ms <= now_ms {
        return Decision::Reject {
            code: codes::EXPIRED,
            detail: format!("expired {} ms before it arrived", now_ms - cmd.expires_at_ms),
        };
    }
    if let Some(rev) = cmd.if_match {
        if rev != config_revision {
            return Decision::Reject {
                code: codes::PRECONDITION_FAILED,
                detail: format!("if_match {rev} but the applied revision is {config_revision}"),
            };
        }
    }
    Decision::Run
}

pub struct Executor {
    pub addr: DeviceAddr,
    /// The start of this device's `Nats-Msg-Id`s ([`streams::msg_id_prefix`]).
    pub msg_id_prefix: String,
    pub js: async_nats::jetstream::Context,
    pub pool: SqlitePool,
    pub handler: HandlerSpec,
    /// Public keys whose command signatures are accepted ([`crate::Config::trusted_command_keys`]).
    pub trusted_keys: crate::command_keys::TrustedKeys,
    pub handler_timeout: Duration,
    pub ack_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub connected: watch::Receiver<bool>,
    pub cancel: CancellationToken,
    pub backoff: Backoff,
}

impl Executor {
    pub async fn run(mut self) {
        loop {
            if !crate::nats::wait_connected(&mut self.connected, &self.cancel).await {
                return;
            }
            match self.consume().await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, device_id = %self.addr.device_id, "Command consumer stopped; retrying.");
                    let delay = self.backoff.next_delay();
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn consumer_config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(streams::device_commands_consumer(&self.addr)),
            filter_subject: subject::commands(&self.addr),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            // Longer than any handler run, so JetStream never redelivers a command mid-apply.
            ack_wait: self.handler_timeout + Duration::from_secs(30),
            max_ack_pending: 16,
            // A till gone for good (or decommissioned while offline) must not leave its consumer
            // on the server forever. One back after longer than this gets a new consumer that
            // starts at the beginning of its subject: commands still in the stream come again
            // and the ledger answers those it applied with their stored outcome.
            inactive_threshold: INACTIVE_THRESHOLD,
            ..Default::default()
        }
    }

    /// Ok(()) only when cancelled.
    async fn consume(&mut self) -> Result<(), String> {
        let stream =
            self.js.get_stream_no_info(streams::COMMANDS).await.map_err(|e| format!("commands stream: {e}"))?;
        let name = streams::device_commands_consumer(&self.addr);
        // A consumer of this name that reads another device's subject (left by a bridge from
        // before names carried id lengths) must not be taken over: updating its filter would
        // keep its place in the stream and skip this device's older commands. The broker
        // deletes such consumers; until then, refuse it.
        if let Ok(info) = stream.consumer_info(&name).await {
            let reads = &info.config.filter_subject;
            if *reads != subject::commands(&self.addr) {
                return Err(format!(
                    "consumer {name} reads {reads}, not this device's commands; waiting for it to be replaced"
                ));
            }
        }
        // Create-or-update (not get-or-create): a consumer made by an older bridge picks up the
        // current config's updatable fields (the inactivity threshold) on the next connect.
        let consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.create_consumer(self.consumer_config()).await.map_err(|e| format!("consumer {name}: {e}"))?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        self.backoff.reset();
        loop {
            let msg = tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                m = messages.next() => match m {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return Err(format!("command stream: {e}")),
                    None => return Err("command stream ended".into()),
                },
            };
            if let Err(error) = self.handle(&msg).await {
                // Not acked: JetStream redelivers and the ledger answers with the stored outcome.
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))).await;
                return Err(error);
            }
            if let Err(error) = msg.ack().await {
                tracing::warn!(%error, "Command message ack failed; redelivery re-acks the stored outcome.");
            }
        }
    }

    async fn handle(&self, msg: &async_nats::jetstream::Message) -> Result<(), String> {
        let db = |e: sqlx::Error| format!("SQLite: {e}");
        // Before anything else: nothing unverified reaches the ledger's dedupe or the handler.
        if let Err(error) = self.verify(msg) {
            return self.refuse_signature(msg, &error).await;
        }
        let cmd = match codec::decode_command(&msg.subject, &msg.payload) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.commands_undecodable.increment(1);
                tracing::warn!(error = %e, subject = %msg.subject, "Undecodable command refused.");
                ledger::refuse(&self.pool, &msg.subject, e.reason.as_str(), &e.detail, &msg.payload)
                    .await
                    .map_err(db)?;
                return Ok(());
            }
        };
        let entry = ledger::get(&self.pool, &cmd.command_id).await.map_err(db)?;
        let revision = crate::db::config_revision(&self.pool).await.map_err(db)?;
        let (outcome, code, detail) = match decide(entry.as_ref(), &cmd, now_ms(), revision) {
            Decision::Reack { outcome, code, detail } => {
                self.metrics.command_duplicates.increment(1);
                tracing::info!(command_id = %cmd.command_id, "Redelivered command: re-acking its stored outcome.");
                return self.publish_ack(&cmd, outcome, &code, &detail).await;
            }
            Decision::Reject { code, detail } => {
                tracing::warn!(command_id = %cmd.command_id, code, %detail, "Command refused.");
                (Outcome::Rejected, code.to_string(), detail)
            }
            Decision::Interrupted => {
                tracing::error!(command_id = %cmd.command_id, "Command was being applied when the bridge stopped; not re-running it.");
                let detail = "the bridge stopped while the handler ran; check the POS before re-issuing".to_string();
                (Outcome::Failed, INTERRUPTED.to_string(), detail)
            }
            Decision::Run => {
                ledger::start(&self.pool, &cmd).await.map_err(db)?;
                let started = std::time::Instant::now();
                let result = handler::apply(&self.handler, &cmd, self.handler_timeout).await;
                self.metrics.handler_latency.record(started.elapsed().as_secs_f64());
                match result {
                    HandlerResult::Applied => (Outcome::Applied, codes::OK.to_string(), String::new()),
                    HandlerResult::Failed { code, detail } => {
                        tracing::warn!(command_id = %cmd.command_id, %code, %detail, "Command handler failed.");
                        (Outcome::Failed, code, detail)
                    }
                }
            }
        };
        ledger::finish(&self.pool, &cmd, outcome, &code, &detail).await.map_err(db)?;
        self.metrics.command(outcome.as_str()).increment(1);
        self.publish_ack(&cmd, outcome, &code, &detail).await
    }

    fn verify(&self, msg: &async_nats::jetstream::Message) -> Result<(), SignatureError> {
        let header = |name: &str| msg.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str());
        let (key, sig) = (header(signature::HEADER_KEY), header(signature::HEADER_SIGNATURE));
        signature::verify(&self.trusted_keys.read().expect("trusted keys lock"), key, sig, &msg.subject, &msg.payload)
    }

    /// Keeps the message in `refused_commands` and, when a command id can be read from it, acks
    /// it `rejected` / `bad_signature`. The command ledger is left alone: it is keyed by
    /// command_id, and a forged copy must not decide what the genuine command gets.
    async fn refuse_signature(
        &self,
        msg: &async_nats::jetstream::Message,
        error: &SignatureError,
    ) -> Result<(), String> {
        self.metrics.commands_bad_signature.increment(1);
        let command_id = readable_command_id(&msg.payload);
        tracing::warn!(%error, subject = %msg.subject, ?command_id, "Command refused: bad signature.");
        let detail = error.to_string();
        ledger::refuse(&self.pool, &msg.subject, codes::BAD_SIGNATURE, &detail, &msg.payload)
            .await
            .map_err(|e| format!("SQLite: {e}"))?;
        let Some(command_id) = command_id else { return Ok(()) };
        self.metrics.command(Outcome::Rejected.as_str()).increment(1);
        // Its own Nats-Msg-Id: the genuine command's ack must not be dropped as its duplicate.
        let msg_id = format!("{}:{}", streams::ack_msg_id(&self.msg_id_prefix, &command_id), codes::BAD_SIGNATURE);
        self.publish_ack_as(&msg_id, &command_id, Outcome::Rejected, codes::BAD_SIGNATURE, &detail).await
    }

    async fn publish_ack(
        &self,
        cmd: &CommandEnvelope,
        outcome: Outcome,
        code: &str,
        detail: &str,
    ) -> Result<(), String> {
        self.publish_ack_as(
            &streams::ack_msg_id(&self.msg_id_prefix, &cmd.command_id),
            &cmd.command_id,
            outcome,
            code,
            detail,
        )
        .await
    }

    async fn publish_ack_as(
        &self,
        msg_id: &str,
        command_id: &str,
        outcome: Outcome,
        code: &str,
        detail: &str,
    ) -> Result<(), String> {
        let ack = CommandAck {
            schema_version: tillsync_schemas::SCHEMA_VERSION,
            command_id: command_id.to_string(),
            tenant_id: self.addr.tenant_id.clone(),
            store_id: self.addr.store_id.clone(),
            device_id: self.addr.device_id.clone(),
            outcome,
            code: code.to_string(),
            detail: detail.to_string(),
            at_ms: now_ms(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(streams::HEADER_MSG_ID, msg_id);
        headers.insert(streams::HEADER_CONTENT_TYPE, streams::CONTENT_TYPE);
        headers.insert(streams::HEADER_SCHEMA_VERSION, tillsync_schemas::SCHEMA_VERSION.to_string().as_str());
        let fut = self
            .js
            .publish_with_headers(subject::command_acks(&self.addr), headers, codec::encode(&ack).into())
            .await
            .map_err(|e| format!("publishing command ack: {e}"))?;
        match tokio::time::timeout(self.ack_timeout, fut).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("command ack not stored: {e}")),
            Err(_) => Err("command ack: no publish ack in time".into()),
        }
    }
}

/// The command id of a refused message, if it has a valid one. Read without checking the rest
/// of the envelope: a copy signed for another device names that device and would not decode
/// for this subject, yet the portal should still hear why this device refused it.
fn readable_command_id(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        command_id: String,
    }
    let id = codec::decode::<IdOnly>(payload).ok()?.command_id;
    check_uuid_or_ulid("command_id", &id).ok().map(|_| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillsync_schemas::CommandBody;

    fn cmd(if_match: Option<u64>) -> CommandEnvelope {
        CommandEnvelope {
            schema_version: 1,
            command_id: uuid::Uuid::now_v7().to_string(),
            tenant_id: "acme".into(),
            store_id: "s1".into(),
            device_id: Some("till-1".into()),
            body: CommandBody::SettingsPatch { revision: 4, settings: Default::default() },
            issued_at_ms: 1_000,
            expires_at_ms: 2_000,
            requested_by: "alice".into(),
            approvals: vec![],
            if_match,
        }
    }

    #[test]
    fn a_refused_message_yields_its_command_id_when_it_has_a_valid_one() {
        let c = cmd(None);
        assert_eq!(readable_command_id(&codec::encode(&c)), Some(c.command_id.clone()));
        let mut bad = c.clone();
        bad.command_id = "not-an-id".into();
        assert_eq!(readable_command_id(&codec::encode(&bad)), None);
        assert_eq!(readable_command_id(b"\xc1 garbage"), None);
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, &cmd(None), 1_500, 0), Decision::Run);
        assert!(matches!(decide(None, &cmd(None), 2_000, 0), Decision::Reject { code: "expired", .. }));
        assert!(matches!(decide(None, &cmd(Some(3)), 1_500, 2), Decision::Reject { code: "precondition_failed", .. }));
        assert_eq!(decide(None, &cmd(Some(3)), 1_500, 3), Decision::Run);
        assert_eq!(decide(Some(&Entry::Applying), &cmd(None), 1_500, 0), Decision::Interrupted);
        let done = Entry::Done { outcome: Outcome::Applied, code: "ok".into(), detail: String::new() };
        // A stored outcome wins even after expiry: the ack is repeated, never re-decided.
        assert!(matches!(decide(Some(&done), &cmd(None), 9_000, 0), Decision::Reack { outcome: Outcome::Applied, .. }));
    }
}
