//! Where the broker's responders may answer. nats-server does not check a request's reply
//! subject, and the broker's connection may publish to JetStream's API and to every tillsync
//! stream, so a requester could have an answer land as a purge or as another tenant's
//! configuration. Each responder names the requester's own inbox prefix (derived from the
//! request subject, which NATS permissions tie to the requester); an answer goes only under it
//! or the standard `_INBOX.` prefix ([`tillsync_schemas::identity::may_reply`]). A request
//! pointing elsewhere is not acted on: it is counted (`tillsync_replies_refused_total`),
//! logged and recorded in `identity_audit`, at most once a minute per responder and requester.

use async_nats::{Message, Subject};
use tillsync_schemas::identity::may_reply;
use tillsync_schemas::DeviceAddr;

use crate::auth::records::{self, Audit};
use crate::{metrics, Ctx};

/// Who asked, as far as the request subject says.
#[derive(Default)]
pub struct Requester<'a> {
    pub device: Option<&'a DeviceAddr>,
    pub tenant: Option<&'a str>,
    pub public_key: Option<&'a str>,
}

/// The reply subject of `msg` when `responder` may answer there; `None` (after recording the
/// refusal) when the request has no reply or points outside `own_inbox`.
pub async fn checked(
    ctx: &Ctx,
    responder: &'static str,
    msg: &Message,
    own_inbox: &str,
    who: Requester<'_>,
) -> Option<Subject> {
    let reply = msg.reply.clone()?;
    if may_reply(reply.as_str(), own_inbox) {
        return Some(reply);
    }
    metrics::reply_refused(responder);
    let detail = format!("reply subject {:?} is outside the requester's inbox {own_inbox}.>", reply.as_str());
    tracing::warn!(responder, subject = %msg.subject, %detail, "Request refused: its reply points elsewhere.");
    let audit = Audit {
        action: "reply_refused",
        reason: Some(responder),
        device: who.device,
        tenant: who.tenant,
        public_key: who.public_key,
        actor: "nats",
        remote: None,
        detail: &detail,
    };
    if let Err(error) = records::audit_reply_refused(&ctx.pool, &audit).await {
        tracing::warn!(%error, "Refused reply not recorded in identity_audit (the metric counts it).");
    }
    None
}
