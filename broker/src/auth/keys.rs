//! Answers bridges asking which keys sign their commands (`tillsync.keys.<t>.<s>.<d>`, see
//! [`tillsync_schemas::command_keys`]): the keys bridges should trust now (the current key and,
//! during a rotation, the next), signed with the current key over the asking device's subject.
//! NATS permissions let a device ask only on its own subject, and only broker instances
//! subscribe to these subjects.

use std::sync::Arc;

use tillsync_schemas::codec;
use tillsync_schemas::command_keys::{CommandKeys, ALL};

use crate::{BrokerError, Ctx};

const QUEUE: &str = "tillsync-keys";

pub async fn subscribe(nats: &async_nats::Client) -> Result<async_nats::Subscriber, BrokerError> {
    crate::nats::responder(nats, ALL, QUEUE, "Command keys").await
}

pub async fn run(ctx: Arc<Ctx>, sub: async_nats::Subscriber) {
    crate::nats::serve(&ctx.cancel, sub, "Command keys", |msg| serve(&ctx, msg)).await
}

async fn serve(ctx: &Ctx, msg: async_nats::Message) {
    // tillsync.keys.<tenant>.<store>.<device>: NATS lets a device ask only on its own.
    let Some(addr) = device_of(msg.subject.as_str()) else { return };
    let who = crate::replies::Requester { device: Some(&addr), ..Default::default() };
    let inbox = tillsync_schemas::identity::device_inbox(&addr);
    let Some(reply) = crate::replies::checked(ctx, "command_keys", &msg, &inbox, who).await else { return };
    let keys = ctx.signer.trusted_public_keys();
    let answer = CommandKeys {
        signature: ctx.signer.sign(msg.subject.as_str(), &CommandKeys::signed(&keys)),
        signer: ctx.signer.public_key(),
        keys,
    };
    if let Err(error) = ctx.nats.publish(reply, codec::encode(&answer).into()).await {
        tracing::warn!(%error, "Command keys reply not sent; the bridge asks again.");
    }
}

fn device_of(subject: &str) -> Option<tillsync_schemas::DeviceAddr> {
    let mut t = subject.strip_prefix("tillsync.keys.")?.split('.');
    let (tenant, store, device) = (t.next()?, t.next()?, t.next()?);
    t.next().is_none().then(|| tillsync_schemas::DeviceAddr::new(tenant, store, device))
}
