//! Command acks from devices. Each decodable ack goes to its device's actor, which records it
//! (matched or not) and applies its transition; only then is the JetStream message acked. An
//! ack that does not decode, or names an unknown tenant, is quarantined.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use tillsync_schemas::{codec, streams as names, Reason, WireError};

use super::CommandError;
use crate::Ctx;

pub async fn run(ctx: Arc<Ctx>) {
    let ctx = &ctx;
    crate::consumer::each_message(
        ctx,
        names::COMMAND_ACKS,
        names::BROKER_ACKS_CONSUMER,
        ctx.config.message_lanes,
        move |msg| async move {
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
        },
    )
    .await;
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
    Ok(crate::consumer::quarantine(ctx, names::COMMAND_ACKS, msg, e).await?)
}
