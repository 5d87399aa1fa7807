//! The portal's publish: a request on `tillsync.cfgpub.<tenant>.<store|_store>` carrying a
//! MessagePack change set, answered with a [`PublishReply`] by any broker instance (one queue
//! group). The subject is what the portal's credential allows, so the body must name the same
//! tenant and store (`wrong_tenant`).

use std::sync::Arc;

use tillsync_schemas::config::{ChangeSet, PublishReply, Refusal, Refused};
use tillsync_schemas::subject::{Family, STORE_WIDE};
use tillsync_schemas::{codec, Reason};

use super::publish::{publish, record_refusal, PublishError};
use crate::{BrokerError, Ctx};

const QUEUE: &str = "tillsync-cfgpub";

/// Subscribes before the broker reports started, so a publish right after start is answered.
pub async fn subscribe(nats: &async_nats::Client) -> Result<async_nats::Subscriber, BrokerError> {
    crate::nats::responder(nats, Family::ConfigPublish.all_subjects(), QUEUE, "Config publish").await
}

pub async fn run(ctx: Arc<Ctx>, sub: async_nats::Subscriber) {
    crate::nats::serve(&ctx.cancel, sub, "Config publish", |msg| serve(&ctx, msg)).await
}

async fn serve(ctx: &Ctx, msg: async_nats::Message) {
    let tenant = subject_scope(msg.subject.as_str()).0.to_string();
    let who = crate::replies::Requester { tenant: Some(&tenant), ..Default::default() };
    let inbox = tillsync_schemas::identity::portal_inbox(&tenant);
    let Some(reply) = crate::replies::checked(ctx, "config_publish", &msg, &inbox, who).await else { return };
    let answer = answer(ctx, msg.subject.as_str(), &msg.payload).await;
    if let Err(error) = ctx.nats.publish(reply, codec::encode(&answer).into()).await {
        tracing::warn!(%error, "Config publish reply not sent; the portal sees a timeout and can check the versions.");
    }
}

/// The reply to one request: decoded, checked against its subject, published.
pub async fn answer(ctx: &Ctx, subject: &str, payload: &[u8]) -> PublishReply {
    let (tenant, store) = subject_scope(subject);
    let mut cs = match tillsync_schemas::config::decode::<ChangeSet>(payload) {
        Ok(cs) => cs,
        Err(e) => {
            let cs = ChangeSet {
                tenant_id: tenant.into(),
                store_id: store,
                if_match: None,
                published_by: "portal".into(),
                changes: vec![],
            };
            let code = if e.reason == Reason::Oversize { Refusal::Oversize } else { Refusal::Undecodable };
            return refuse(ctx, &cs, Refused::new(code, e.to_string())).await;
        }
    };
    if cs.published_by.trim().is_empty() {
        cs.published_by = "portal".into();
    }
    if let Err(r) = check_scope(&cs, tenant, store.as_deref()) {
        return refuse(ctx, &cs, r).await;
    }
    match publish(&ctx.pool, &cs).await {
        Ok(p) => PublishReply::Published { publish_id: p.publish_id, versions: p.versions },
        Err(PublishError::Refused(r)) => PublishReply::Refused { code: r.code.as_str().into(), detail: r.detail },
        Err(PublishError::Db(error)) => {
            tracing::warn!(%error, "Config publish failed on Postgres.");
            PublishReply::Refused {
                code: "unavailable".into(),
                detail: "the broker could not reach its database; try again".into(),
            }
        }
    }
}

async fn refuse(ctx: &Ctx, cs: &ChangeSet, r: Refused) -> PublishReply {
    if let Err(error) = record_refusal(&ctx.pool, cs, &r).await {
        tracing::warn!(%error, "Config publish refusal not recorded.");
    }
    PublishReply::Refused { code: r.code.as_str().into(), detail: r.detail }
}

/// `tillsync.cfgpub.<tenant>.<store|_store>` to (tenant, store).
fn subject_scope(subject: &str) -> (&str, Option<String>) {
    let mut tokens = subject.split('.').skip(2);
    let tenant = tokens.next().unwrap_or_default();
    let store = tokens.next().filter(|s| *s != STORE_WIDE).map(str::to_string);
    (tenant, store)
}

/// The body's tenant and store must be the subject's (what the portal's credential allows).
pub fn check_scope(cs: &ChangeSet, tenant: &str, store: Option<&str>) -> Result<(), Refused> {
    if cs.tenant_id != tenant {
        return Err(Refused::new(
            Refusal::WrongTenant,
            format!("the change set names tenant {:?}, the request is for {tenant:?}", cs.tenant_id),
        ));
    }
    if cs.store_id.as_deref() != store {
        return Err(Refused::new(
            Refusal::WrongTenant,
            format!("the change set names store {:?}, the request is for {store:?}", cs.store_id),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs(tenant: &str, store: Option<&str>) -> ChangeSet {
        ChangeSet {
            tenant_id: tenant.into(),
            store_id: store.map(Into::into),
            if_match: None,
            published_by: String::new(),
            changes: vec![],
        }
    }

    #[test]
    fn the_subject_decides_tenant_and_store() {
        assert_eq!(subject_scope("tillsync.cfgpub.acme._store"), ("acme", None));
        assert_eq!(subject_scope("tillsync.cfgpub.acme.s1"), ("acme", Some("s1".to_string())));
        assert!(check_scope(&cs("acme", None), "acme", None).is_ok());
        assert_eq!(check_scope(&cs("other", None), "acme", None).unwrap_err().code, Refusal::WrongTenant);
        assert_eq!(check_scope(&cs("acme", Some("s2")), "acme", Some("s1")).unwrap_err().code, Refusal::WrongTenant);
        assert_eq!(check_scope(&cs("acme", Some("s1")), "acme", None).unwrap_err().code, Refusal::WrongTenant);
    }
}
