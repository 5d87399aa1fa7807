//! Activation: a bridge that proved a fresh nkey at connect sends its one-time code to
//! `tillsync.activate.<key>`; the broker takes the code (once, before it expires), makes the
//! key the device's only live credential (an older one is revoked and disconnected: that is
//! how rotation replaces a key), records it, and answers with the device's identity and the
//! keys its commands are signed with.

use std::sync::Arc;
use tillsync_schemas::identity::{self, ActivateReply, ActivateRequest};
use tillsync_schemas::{codec, DeviceAddr};

use super::records::{self, Audit, Taken};
use crate::{metrics, BrokerError, Ctx};

const QUEUE: &str = "tillsync-activate";

/// Subscribes before the broker reports started (like the callout), so an activation right
/// after start is answered.
pub async fn subscribe(nats: &async_nats::Client) -> Result<async_nats::Subscriber, BrokerError> {
    crate::nats::responder(nats, identity::ACTIVATE_SUBJECTS, QUEUE, "Activation").await
}

pub async fn run(ctx: Arc<Ctx>, sub: async_nats::Subscriber) {
    crate::nats::serve(&ctx.cancel, sub, "Activation", |msg| serve(&ctx, msg)).await
}

async fn serve(ctx: &Ctx, msg: async_nats::Message) {
    let key = msg.subject.as_str().rsplit('.').next().unwrap_or_default().to_string();
    let who = crate::replies::Requester { public_key: Some(&key), ..Default::default() };
    let inbox = identity::activation_inbox(&key);
    let Some(reply) = crate::replies::checked(ctx, "activation", &msg, &inbox, who).await else { return };
    let mut answer = match codec::decode::<ActivateRequest>(&msg.payload) {
        Ok(request) => activate(ctx, &key, &request.code).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "Activation failed on Postgres.");
            refused("unavailable", "the broker could not reach its database; try again")
        }),
        Err(e) => refused("bad_request", &e.to_string()),
    };
    if let ActivateReply::Refused { key: status, .. } = &mut answer {
        *status = records::key_status(&ctx.pool, &key).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "Key status not read.");
            None
        });
    }
    let result = match &answer {
        ActivateReply::Activated { .. } => "activated",
        ActivateReply::Refused { code, .. } => code.as_str(),
    };
    metrics::activation(result);
    if let Err(error) = ctx.nats.publish(reply, codec::encode(&answer).into()).await {
        tracing::warn!(%error, "Activation reply not sent; the bridge retries with the same code and is told code_used.");
    }
}

fn refused(code: &str, detail: &str) -> ActivateReply {
    ActivateReply::Refused { code: code.into(), detail: detail.into(), key: None }
}

/// Takes the code and installs `key` as the device's credential, in one transaction.
pub async fn activate(ctx: &Ctx, key: &str, code: &str) -> Result<ActivateReply, sqlx::Error> {
    if nkeys::KeyPair::from_public_key(key).is_err() || !key.starts_with('U') {
        return Ok(refused("bad_request", "the subject's last token must be the bridge's user public key"));
    }
    let hash = super::code_hash(code);
    let host = records::activation_host(&ctx.pool, key).await?;
    let from = host.clone().unwrap_or_default();
    let mut tx = ctx.pool.begin().await?;
    let (device, purpose) = match records::take_code(&mut tx, &hash, &from).await? {
        Taken::Code { device, .. } if records::decommissioned(&mut *tx, &device).await? => {
            tx.rollback().await?;
            return refuse(ctx, &hash, key, host.as_deref(), "decommissioned").await;
        }
        Taken::Code { device, purpose } => (device, purpose),
        Taken::Refused(code) => {
            tx.rollback().await?;
            return refuse(ctx, &hash, key, host.as_deref(), code).await;
        }
    };
    let replaced = records::revoke_device(&mut *tx, &device, "activation", "replaced by a new activation").await?;
    records::insert_device_key(&mut tx, key, &device, "activation").await?;
    provision(&mut tx, &device).await?;
    let action = if purpose == "rotate" { "rotated" } else { "activated" };
    let detail = format!("{replaced} older credential(s) revoked");
    let audit = Audit {
        action,
        device: Some(&device),
        public_key: Some(key),
        actor: "bridge",
        remote: host.as_deref(),
        detail: &detail,
        ..Default::default()
    };
    records::audit(&mut *tx, &audit).await?;
    tx.commit().await?;
    tracing::info!(tenant = %device.tenant_id, store = %device.store_id, device = %device.device_id, action, "Device activated.");
    Ok(ActivateReply::Activated {
        tenant_id: device.tenant_id,
        store_id: device.store_id,
        device_id: device.device_id,
        command_keys: command_keys(ctx),
    })
}

/// Audits a refused activation under the code's device, and answers with the refusal.
async fn refuse(
    ctx: &Ctx,
    hash: &str,
    key: &str,
    host: Option<&str>,
    code: &'static str,
) -> Result<ActivateReply, sqlx::Error> {
    let device = records::code_device(&ctx.pool, hash).await?;
    if device.is_none() {
        // A code nobody issued: a guess, counted per address.
        records::audit_attempt(&ctx.pool, "activation_refused", Some(code), host.unwrap_or(""), "").await?;
        tracing::info!(code, key, "Activation refused.");
        return Ok(refused(code, refusal_detail(code)));
    }
    let audit = Audit {
        action: "activation_refused",
        reason: Some(code),
        device: device.as_ref(),
        public_key: Some(key),
        actor: "bridge",
        remote: host,
        ..Default::default()
    };
    records::audit(&ctx.pool, &audit).await?;
    tracing::info!(code, key, "Activation refused.");
    Ok(refused(code, refusal_detail(code)))
}

fn refusal_detail(code: &str) -> &'static str {
    match code {
        "decommissioned" => "this device (or its tenant) was decommissioned; it cannot be activated again",
        "code_used" => "this activation code was already used; issue a new one with `tillsync devices add`",
        "code_expired" => "this activation code has expired; issue a new one with `tillsync devices add`",
        _ => "no such activation code; check it, or issue one with `tillsync devices add`",
    }
}

async fn provision(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, d: &DeviceAddr) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO devices (tenant_id, store_id, device_id, provisioned) VALUES ($1, $2, $3, true)
         ON CONFLICT (tenant_id, store_id, device_id) DO UPDATE SET provisioned = true",
    )
    .bind(&d.tenant_id)
    .bind(&d.store_id)
    .bind(&d.device_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The public keys commands are signed with, current first.
fn command_keys(ctx: &Ctx) -> Vec<String> {
    ctx.signer.trusted_public_keys()
}
