//! Command acks from devices. Each decodable ack goes to its device's actor, which records it
//! (matched or not) and applies its transition; only then is the JetStream message acked. An
//! ack that does not decode, or names an unknown tenant, is quarantined.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use tillsync_schemas::{codec, streams as names, subject, Reason, WireError};

use super::{pause, CommandError};
use crate::ingest::writer::BadRow;
use crate::{metrics, Ctx};

pub async fn run(ctx: Arc<Ctx>) {
    while !ctx.cancel.is_cancelled() {
        if let Err(error) = consume(&ctx).await {
            tracing::warn!(%error, "Command ack consumer stopped; restarting in 1 s.");
            if !pause(&ctx, Duration::from_secs(1)).await {
                return;
            }
        }
    }
}

async fn consume(ctx: &Ctx) -> Result<(), String> {
    let consumer = crate::streams::consumer(&ctx.js, names::COMMAND_ACKS, names::BROKER_ACKS_CONSUMER)
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    loop {
        let msg = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            m = messages.next() => match m {
                Some(Ok(m)) => m,
                Some(Err(e)) => { tracing::debug!(error = %e, "Ack stream hiccup."); continue; }
                None => return Err("ack stream ended".into()),
            }
        };
        let result = match handle(ctx, &msg).await {
            Ok(true) => msg.ack().await,
            Ok(false) => msg.ack_with(AckKind::Term).await,
            Err(error) => {
                tracing::warn!(%error, "Command ack not recorded; redelivering.");
                msg.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))).await
            }
        };
        if let Err(error) = result {
            // Recorded already: a redelivered ack is recorded again as a duplicate, harmlessly.
            tracing::warn!(%error, "Ack of a command ack failed.");
        }
    }
}

/// `Ok(true)`: recorded; `Ok(false)`: quarantined.
async fn handle(ctx: &Ctx, msg: &Message) -> Result<bool, CommandError> {
    let ack = match codec::decode_command_ack(&msg.subject, &msg.payload) {
        Ok(a) => a,
        Err(e) => return quarantine(ctx, msg, &e).await.map(|()| false),
    };
    if !ctx.tenants.exists(&ctx.pool, &ack.tenant_id).await? {
        let e = WireError::new(Reason::UnknownTenant, format!("tenant {:?} is not provisioned", ack.tenant_id));
        return quarantine(ctx, msg, &e).await.map(|()| false);
    }
    let effect = ctx.actors.inbox_ack(ack.clone()).await?.map_err(CommandError::Inbox)?;
    tracing::debug!(command_id = %ack.command_id, effect = effect.as_str(), "Command ack recorded.");
    Ok(true)
}

async fn quarantine(ctx: &Ctx, msg: &Message, e: &WireError) -> Result<(), CommandError> {
    let parsed = subject::parse(&msg.subject).ok();
    let row = BadRow {
        stream: names::COMMAND_ACKS.into(),
        stream_seq: msg.info().map(|i| i.stream_sequence).unwrap_or(0),
        subject: msg.subject.to_string(),
        reason: e.reason.as_str(),
        detail: e.detail.clone(),
        payload: msg.payload.to_vec(),
        tenant_id: parsed.as_ref().map(|p| p.tenant_id.clone()),
        store_id: parsed.as_ref().map(|p| p.store_id.clone()),
        device_id: parsed.map(|p| p.last),
    };
    crate::ingest::writer::commit(&ctx.pool, &[row], &[], &[]).await?;
    metrics::event_quarantined(e.reason.as_str());
    tracing::warn!(reason = %e.reason, detail = %e.detail, "Command ack quarantined.");
    Ok(())
}
