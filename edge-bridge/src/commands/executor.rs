//! Receives this device's commands and runs them, one at a time. The bridge holds no
//! JetStream consumer (docs/architecture.md, "The downlink without consumers"): it reads its
//! commands live on a plain subscription to its own commands subject, and whenever it
//! (re)connects it asks the broker ([`Executor::ask`]) to hand it every command published to it
//! and not yet finished again, on its copies subject, until the broker's end marker says it
//! was heard (the loop is `crate::downlink`'s). Each command is decided against the ledger,
//! run by the handler, recorded, and acked on the command-ack stream; a copy seen before gets
//! its stored ack again.

use std::ops::ControlFlow::{self, Continue};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::{HeaderMap, Message, Subscriber};
use sqlx::sqlite::SqlitePool;
use tillsync_schemas::ack::codes;
use tillsync_schemas::ids::check_uuid_or_ulid;
use tillsync_schemas::signature::{self, SignatureError};
use tillsync_schemas::{codec, streams, subject, CommandAck, CommandEnvelope, DeviceAddr, Outcome};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::commands::error::CommandsError;
use crate::commands::ledger::{self, Entry};
use crate::downlink::{self, Ended, Flow, Link, Next};
use crate::handler::{self, HandlerResult, HandlerSpec};
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

/// How long a catch-up request waits for the broker's end marker before it is asked again
/// (then with the bridge's backoff, up to its maximum).
pub const ASK_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// How long, and how often, a command ack the stream did not store is tried again in place
/// before the subscriptions are dropped and the bridge starts over.
const ACK_RETRY_FOR: Duration = Duration::from_secs(30);
const ACK_RETRY_MIN: Duration = Duration::from_millis(100);
const ACK_RETRY_MAX: Duration = Duration::from_secs(2);

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
    pub client: async_nats::Client,
    /// The start of this device's `Nats-Msg-Id`s ([`streams::msg_id_prefix`]).
    pub msg_id_prefix: String,
    pub js: async_nats::jetstream::Context,
    pub pool: SqlitePool,
    pub handler: HandlerSpec,
    /// Public keys whose command signatures are accepted ([`crate::Config::trusted_command_keys`]).
    pub trusted_keys: crate::commands::keys::TrustedKeys,
    pub handler_timeout: Duration,
    pub ack_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub connected: watch::Receiver<bool>,
    pub cancel: CancellationToken,
    pub backoff: Backoff,
    /// Set once the consumer an earlier bridge version left was deleted (or found absent).
    pub old_consumer_dropped: bool,
}

/// A catch-up request waiting for its answer: due again after [`ASK_AGAIN_AFTER`], then after
/// the backoff's growing delays, until the end marker comes.
pub(crate) struct Asking {
    backoff: Backoff,
    next: Option<tokio::time::Instant>,
}

impl Asking {
    fn new(mut backoff: Backoff) -> Asking {
        backoff.reset();
        Asking { backoff, next: Some(tokio::time::Instant::now() + ASK_AGAIN_AFTER) }
    }

    /// It was due and is made again: the next is due later.
    fn asked_again(&mut self) {
        self.next = Some(tokio::time::Instant::now() + ASK_AGAIN_AFTER.max(self.backoff.next_delay()));
    }

    /// The end marker came; true the first time.
    fn answered(&mut self) -> bool {
        self.next.take().is_some()
    }
}

impl Executor {
    pub async fn run(self) {
        downlink::run(self).await
    }
}

impl Flow for Executor {
    type Live = futures::stream::Select<Subscriber, Subscriber>;
    type Round = Asking;
    type Error = CommandsError;
    const LIVE_ENDED: CommandsError = CommandsError::LiveEnded;

    fn link(&mut self) -> Link<'_> {
        Link { connected: &mut self.connected, cancel: &self.cancel, backoff: &mut self.backoff }
    }

    async fn subscribe(&mut self) -> Result<Self::Live, CommandsError> {
        self.drop_old_consumer().await;
        let subscribe = |subject: String| {
            let client = self.client.clone();
            async move {
                client.subscribe(subject.clone()).await.map_err(|source| CommandsError::Subscribe { subject, source })
            }
        };
        // Live first, then the copies, then the request: nothing published after the request
        // is read can be missed, and whatever arrives twice the ledger answers.
        let live = subscribe(subject::commands(&self.addr)).await?;
        let copies = subscribe(subject::command_copies(&self.addr)).await?;
        Ok(futures::stream::select(live, copies))
    }

    async fn catch_up(&mut self) -> Result<ControlFlow<Ended, Asking>, CommandsError> {
        let asking = Asking::new(self.backoff.clone());
        self.ask().await?;
        Ok(Continue(asking))
    }

    fn due(&self, asking: &Asking) -> Option<tokio::time::Instant> {
        asking.next
    }

    async fn on_due(&mut self, asking: &mut Asking, _: &mut Self::Live) -> Next<CommandsError> {
        asking.asked_again();
        self.metrics.command_catchup("asked_again").increment(1);
        self.ask().await?;
        Ok(Continue(()))
    }

    async fn on_connection(&mut self, asking: &mut Asking, up: bool) -> Next<CommandsError> {
        // The subscriptions survive a reconnect; what was published while away did not reach
        // them, so ask again.
        if !up {
            self.metrics.commands_subscribed.set(0.0);
        } else {
            *asking = Asking::new(self.backoff.clone());
            self.ask().await?;
        }
        Ok(Continue(()))
    }

    async fn on_message(&mut self, asking: &mut Asking, msg: Message, _: &mut Self::Live) -> Next<CommandsError> {
        let headers = msg.headers.as_ref();
        if let Some(handed) = headers.and_then(|h| h.get(streams::HEADER_SYNC_DONE)) {
            if asking.answered() {
                // The answer came back through the server on the copies subscription, which
                // was made after the live one: the server holds both (a flush of the socket
                // would not say so), and whatever was published before the broker read the
                // unfinished commands was handed with it.
                self.metrics.commands_subscribed.set(1.0);
                self.metrics.command_catchup("answered").increment(1);
                tracing::debug!(handed = %handed, "Command catch-up answered.");
            }
            self.backoff.reset();
            return Ok(Continue(()));
        }
        if msg.subject.as_str() != subject::commands(&self.addr) {
            self.metrics.commands_handed_again.increment(1);
        }
        // Not recorded (SQLite, or the ack not stored): the round fails, the next asks for the
        // unfinished commands again and the ledger answers any it already ran.
        self.handle(&msg.subject, headers, &msg.payload).await?;
        Ok(Continue(()))
    }

    fn left(&mut self) {
        self.metrics.commands_subscribed.set(0.0);
    }

    fn failed(&self, error: &CommandsError) {
        tracing::warn!(%error, device_id = %self.addr.device_id, "Command downlink stopped; starting over.");
    }
}

impl Executor {
    /// Asks the broker for this device's unfinished commands.
    async fn ask(&self) -> Result<(), CommandsError> {
        self.client
            .publish(subject::command_sync(&self.addr), Default::default())
            .await
            .map_err(CommandsError::CatchUpRequest)
    }

    /// Deletes the durable consumer a bridge before the consumer-less downlink left on the
    /// server (once per process; one that is not there is fine). One of this name that reads
    /// another subject is not this device's to delete: the broker's sweep of misnamed
    /// consumers removes it ([`tillsync_schemas::streams::is_misnamed_commands_consumer`]).
    async fn drop_old_consumer(&mut self) {
        if self.old_consumer_dropped {
            return;
        }
        let name = streams::device_commands_consumer(&self.addr);
        let Ok(stream) = self.js.get_stream_no_info(streams::COMMANDS).await else { return };
        let info = match stream.consumer_info(&name).await {
            Ok(info) => info,
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
                self.old_consumer_dropped = true;
                return;
            }
            // Asked again at the next connect.
            Err(_) => return,
        };
        self.old_consumer_dropped = true;
        if info.config.filter_subject != subject::commands(&self.addr) {
            tracing::warn!(consumer = %name, reads = %info.config.filter_subject, "A consumer of this device's name reads another subject; left for the broker.");
            return;
        }
        match stream.delete_consumer(&name).await {
            Ok(_) => tracing::info!(consumer = %name, "Deleted the command consumer of an earlier bridge version."),
            Err(error) => tracing::warn!(%error, consumer = %name, "The earlier command consumer was not deleted."),
        }
    }

    /// One command message, live or handed again. It is verified and decoded as if on this
    /// device's own commands subject (what the broker signs it for), whichever it came on.
    async fn handle(&self, subject: &str, headers: Option<&HeaderMap>, payload: &[u8]) -> Result<(), CommandsError> {
        let own = subject::commands(&self.addr);
        // Before anything else: nothing unverified reaches the ledger's dedupe or the handler.
        if let Err(error) = self.verify(&own, headers, payload) {
            return self.refuse_signature(subject, payload, &error).await;
        }
        let cmd = match codec::decode_command(&own, payload) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.commands_undecodable.increment(1);
                tracing::warn!(error = %e, subject, "Undecodable command refused.");
                ledger::refuse(&self.pool, subject, e.reason.as_str(), &e.detail, payload).await?;
                return Ok(());
            }
        };
        let entry = ledger::get(&self.pool, &cmd.command_id).await?;
        let revision = crate::db::config_revision(&self.pool).await?;
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
                ledger::start(&self.pool, &cmd).await?;
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
        ledger::finish(&self.pool, &cmd, outcome, &code, &detail).await?;
        self.metrics.command(outcome.as_str()).increment(1);
        self.publish_ack(&cmd, outcome, &code, &detail).await
    }

    fn verify(&self, own: &str, headers: Option<&HeaderMap>, payload: &[u8]) -> Result<(), SignatureError> {
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        let (key, sig) = (header(signature::HEADER_KEY), header(signature::HEADER_SIGNATURE));
        signature::verify(&self.trusted_keys.read().expect("trusted keys lock"), key, sig, own, payload)
    }

    /// Keeps the message in `refused_commands` and, when a command id can be read from it, acks
    /// it `rejected` / `bad_signature`. The command ledger is left alone: it is keyed by
    /// command_id, and a forged copy must not decide what the genuine command gets.
    async fn refuse_signature(
        &self,
        subject: &str,
        payload: &[u8],
        error: &SignatureError,
    ) -> Result<(), CommandsError> {
        self.metrics.commands_bad_signature.increment(1);
        let command_id = readable_command_id(payload);
        tracing::warn!(%error, subject, ?command_id, "Command refused: bad signature.");
        let detail = error.to_string();
        ledger::refuse(&self.pool, subject, codes::BAD_SIGNATURE, &detail, payload).await?;
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
    ) -> Result<(), CommandsError> {
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
    ) -> Result<(), CommandsError> {
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
        let payload: bytes::Bytes = codec::encode(&ack).into();
        // The outcome is recorded, and the same Nats-Msg-Id makes a repeat harmless: a stream
        // that cannot store right now (its leader lost with a node, a new one being elected)
        // is tried again in place, briefly, rather than dropping the subscriptions.
        let mut again = Backoff::new(ACK_RETRY_MIN, ACK_RETRY_MAX);
        let until = tokio::time::Instant::now() + ACK_RETRY_FOR;
        loop {
            let error = match self.try_ack(headers.clone(), payload.clone()).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if tokio::time::Instant::now() >= until || self.cancel.is_cancelled() || !*self.connected.borrow() {
                return Err(error);
            }
            tracing::debug!(%error, command_id, "Command ack not stored; trying again.");
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(error),
                _ = tokio::time::sleep(again.next_delay()) => {}
            }
        }
    }

    async fn try_ack(&self, headers: HeaderMap, payload: bytes::Bytes) -> Result<(), CommandsError> {
        let fut = self
            .js
            .publish_with_headers(subject::command_acks(&self.addr), headers, payload)
            .await
            .map_err(CommandsError::AckNotSent)?;
        match tokio::time::timeout(self.ack_timeout, fut).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(CommandsError::AckNotStored(e)),
            Err(_) => Err(CommandsError::AckTimedOut),
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
