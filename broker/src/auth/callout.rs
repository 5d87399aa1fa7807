//! The auth callout responder. nats-server sends each connecting client's CONNECT options in
//! a JWT signed by the server; the answer is a JWT signed by the issuer key the server trusts,
//! carrying either a user JWT (the account, the permissions, an expiry) or a refusal.
//!
//! Every client proves an nkey by signing the server's nonce. A key with a live credential
//! gets its device's or portal's permissions; the `activate` user with a code-shaped password
//! gets only its activation request; anything else is refused, counted and audited.
//!
//! Refused attempts and activation connects spend their source address's budget ([`limit`]);
//! an address that has spent it is refused as `rate_limited` except for live credentials.

pub mod limit;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use nats_jwt_rs::authorization::AuthResponse;
use nats_jwt_rs::types::Permission;
use nats_jwt_rs::user::User;
use nats_jwt_rs::Claims;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use tillsync_schemas::identity::{self, Allowed};

use self::limit::{AddressBudget, Attempt, RATE_LIMITED};
use super::records::{self, Audit, Holder, Lookup, Origin};
use crate::config::Config;
use crate::error::Chain;
use crate::{metrics, BrokerError, Ctx};

/// The subject nats-server sends auth requests to.
pub const AUTH_SUBJECT: &str = "$SYS.REQ.USER.AUTH";
const QUEUE: &str = "tillsync-auth";
/// Requests answered at once: a NATS restart reconnects the whole fleet together.
const CONCURRENCY: usize = 32;
/// A decision (Postgres reads and the audit row) must be made well inside nats-server's
/// callout timeout (2 s by default): past it the server has refused the client as an
/// authorization violation, and the `unavailable` answer reaches nobody.
const DECIDE_WITHIN: Duration = Duration::from_secs(1);
/// How often the responder's gauge and address budgets are kept up ([`keep_up`]).
pub const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The parts of the server's authorization request tillsync reads. Defaults everywhere: the
/// server leaves out empty fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthRequest {
    pub server_id: ServerId,
    pub user_nkey: String,
    pub client_info: ClientInfo,
    pub connect_opts: ConnectOpts,
}

impl nats_jwt_rs::Claim for AuthRequest {
    fn validate() {}
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerId {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientInfo {
    pub host: String,
    pub id: u64,
    pub nonce: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectOpts {
    pub nkey: Option<String>,
    pub sig: Option<String>,
    pub user: Option<String>,
    pub pass: Option<String>,
}

/// Who the caller is, once its key is proven and looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow { name: String, allowed: Allowed, holder: Option<Holder> },
    Refuse { reason: &'static str, detail: String, device: Option<tillsync_schemas::DeviceAddr> },
}

/// The signing key and the account callers are placed in.
pub struct Issuer {
    pub key: KeyPair,
    pub account: String,
    pub ttl: Duration,
}

/// The callout connection, subscribed: made before the broker reports started, so a client
/// connecting right after start is answered.
pub struct Responder {
    client: async_nats::Client,
    sub: async_nats::Subscriber,
    issuer: Arc<Issuer>,
    budget: Arc<AddressBudget>,
    /// Until the subscription ends or the broker stops.
    serving: Arc<AtomicBool>,
}

/// What [`keep_up`] looks after: the responder's connection and budgets, and whether it serves.
pub struct Upkeep {
    client: async_nats::Client,
    budget: Arc<AddressBudget>,
    serving: Arc<AtomicBool>,
}

impl Responder {
    pub fn upkeep(&self) -> Upkeep {
        Upkeep { client: self.client.clone(), budget: self.budget.clone(), serving: self.serving.clone() }
    }
}

/// Connects and subscribes when the configuration asks for a responder (`Ok(None)` when not).
pub async fn start(config: &Config) -> Result<Option<Responder>, BrokerError> {
    let (Some(creds), Some(seed)) = (&config.auth_callout_creds, &config.auth_issuer_seed) else { return Ok(None) };
    let issuer = Issuer {
        key: crate::keyfile::read_seed(seed).map_err(BrokerError::IssuerSeed)?,
        account: config.auth_account.clone(),
        ttl: Duration::from_secs(config.auth_ttl_s),
    };
    let name = format!("{}/auth", config.instance_id());
    let client = crate::nats::connect(&config.nats_url, Some(creds), &config.nats_tls, &name).await?;
    let sub = crate::nats::responder(&client, AUTH_SUBJECT, QUEUE, "Auth callout").await?;
    tracing::info!(account = %issuer.account, "Answering NATS auth callouts.");
    let budget = Arc::new(AddressBudget::new(config.auth_max_refusals_per_address_per_min));
    let serving = Arc::new(AtomicBool::new(true));
    Ok(Some(Responder { client, sub, issuer: Arc::new(issuer), budget, serving }))
}

/// Answers callouts until cancelled, then drains the callout connection.
pub async fn run(ctx: Arc<Ctx>, responder: Responder) {
    let Responder { client, sub, issuer, budget, serving } = responder;
    metrics::auth_responder_up(true);
    let serve = sub.for_each_concurrent(CONCURRENCY, |msg| {
        let (ctx, client, issuer, budget) = (ctx.clone(), client.clone(), issuer.clone(), budget.clone());
        async move { answer(&ctx, &client, &issuer, &budget, msg).await }
    });
    tokio::select! {
        _ = ctx.cancel.cancelled() => {}
        _ = serve => tracing::error!("Auth callout subscription ended: this instance answers no callouts."),
    }
    serving.store(false, Ordering::Relaxed);
    metrics::auth_responder_up(false);
    let _ = client.drain().await;
}

/// Every [`UPKEEP_EVERY`]: `tillsync_auth_responder_up` follows the callout connection while
/// the responder serves, and the address budgets that are full again are forgotten.
pub async fn keep_up(ctx: Arc<Ctx>, job: crate::tasks::Job, upkeep: Upkeep) {
    job.run(&ctx, || async {
        let connected = upkeep.client.connection_state() == async_nats::connection::State::Connected;
        metrics::auth_responder_up(upkeep.serving.load(Ordering::Relaxed) && connected);
        upkeep.budget.forget_refilled();
    })
    .await;
    metrics::auth_responder_up(false);
}

async fn answer(
    ctx: &Ctx,
    client: &async_nats::Client,
    issuer: &Issuer,
    budget: &AddressBudget,
    msg: async_nats::Message,
) {
    let Some(reply) = msg.reply.clone() else { return };
    let token = String::from_utf8_lossy(&msg.payload);
    let request = match Claims::<AuthRequest>::decode(&token) {
        Ok(c) => c.payload().clone(),
        Err(error) => {
            return tracing::warn!(%error, "Undecodable auth request ignored (the server times the client out).")
        }
    };
    let verdict = match tokio::time::timeout(DECIDE_WITHIN, decide_with_db(ctx, budget, &request)).await {
        Ok(Ok(v)) => v,
        failed => {
            // Refuse rather than guess, and in time: an answer after nats-server's callout
            // timeout reaches nobody. The client retries and Postgres is back by then.
            let detail = match failed {
                Ok(Err(error)) => format!("try again: Postgres unavailable ({error})"),
                _ => format!("try again: no decision within {DECIDE_WITHIN:?}"),
            };
            metrics::auth_decision("refused", "unavailable");
            tracing::warn!(%detail, "Cannot decide a NATS connection; refusing it as unavailable.");
            Verdict::Refuse { reason: "unavailable", detail, device: None }
        }
    };
    let response = match respond(issuer, &request, &verdict) {
        Ok(r) => r,
        Err(error) => return tracing::error!(error = %Chain(&error), "Cannot sign the auth response."),
    };
    if let Err(error) = client.publish(reply, response.into()).await {
        tracing::warn!(%error, "Auth response not sent.");
    }
}

/// Decides a connection. An attempt's address pays ([`limit::refusal`]) only once the attempt
/// is known to cost: before any Postgres work for a connect without a proven key and for the
/// activation user, after the one lookup that tells a live key from any other for the rest.
async fn decide_with_db(ctx: &Ctx, budget: &AddressBudget, request: &AuthRequest) -> Result<Verdict, sqlx::Error> {
    let host = request.client_info.host.clone();
    let spend = || budget.spend(&host);
    let paid = |reason| limit::refusal(Attempt::Refused(reason), spend).unwrap_or(reason);
    let key = match proven_key(request) {
        Ok(k) => k,
        Err(reason) => return refuse(ctx, paid(reason), "no nkey proven at connect", None, None, &host).await,
    };
    let opts = &request.connect_opts;
    if opts.user.as_deref() == Some(identity::ACTIVATION_USER) {
        if !opts.pass.as_deref().is_some_and(super::looks_like_code) {
            let detail = "activation needs a code as the password";
            return refuse(ctx, paid("bad_code"), detail, None, Some(&key), &host).await;
        }
        if let Some(reason) = limit::refusal(Attempt::Activation, spend) {
            return refuse(ctx, reason, "", None, Some(&key), &host).await;
        }
        records::audit_attempt(&ctx.pool, "activation_connect", None, &host, "").await?;
        metrics::auth_decision("allowed", "activation");
        let name = format!("activate:{key}");
        return Ok(Verdict::Allow { name, allowed: identity::activation_allowed(&key), holder: None });
    }
    let origin =
        Origin { server_id: request.server_id.id.clone(), client_id: request.client_info.id, host: host.clone() };
    match records::admit(&ctx.pool, &key, &origin).await? {
        Lookup::Live(holder) => {
            let (name, allowed, kind) = match &holder {
                Holder::Device(addr) => (
                    format!("device:{}/{}/{}", addr.tenant_id, addr.store_id, addr.device_id),
                    identity::device_allowed(addr),
                    "device",
                ),
                Holder::Portal(tenant) => (format!("portal:{tenant}"), identity::portal_allowed(tenant), "portal"),
            };
            metrics::auth_decision("allowed", kind);
            Ok(Verdict::Allow { name, allowed, holder: Some(holder) })
        }
        Lookup::Revoked(device, why) => {
            let reason = limit::refusal(Attempt::Revoked, spend).unwrap_or("revoked");
            let detail = format!("credential revoked ({why})");
            refuse(ctx, reason, &detail, device.as_ref(), Some(&key), &host).await
        }
        Lookup::Unknown => {
            refuse(ctx, paid("unknown_key"), "no credential has this key", None, Some(&key), &host).await
        }
    }
}

/// The detail of every `rate_limited` refusal, whatever it would have been refused for (kept in
/// the address's audit row).
const OVER_BUDGET: &str =
    "too many refused attempts and activation connects from this address (TILLSYNC_AUTH_MAX_REFUSALS_PER_ADDRESS_PER_MIN); \
     live credentials from it still connect";

async fn refuse(
    ctx: &Ctx,
    reason: &'static str,
    detail: &str,
    device: Option<&tillsync_schemas::DeviceAddr>,
    key: Option<&str>,
    host: &str,
) -> Result<Verdict, sqlx::Error> {
    metrics::auth_decision("refused", reason);
    let detail = if reason == RATE_LIMITED {
        // Counted and audited per address; a log line per try would be the flood's next target.
        metrics::auth_rate_limited();
        tracing::debug!(key, host, "NATS connection refused: its address is over its budget.");
        OVER_BUDGET
    } else {
        tracing::info!(reason, key, host, "NATS connection refused.");
        detail
    };
    if device.is_none() && reason != "revoked" {
        // Nobody's credential: counted per address, since fresh keys are free.
        records::audit_attempt(&ctx.pool, "connection_refused", Some(reason), host, detail).await?;
        return Ok(Verdict::Refuse { reason, detail: detail.to_string(), device: None });
    }
    let audit = Audit {
        action: "connection_refused",
        reason: Some(reason),
        device,
        public_key: key,
        actor: "nats",
        remote: Some(host),
        detail,
        ..Default::default()
    };
    records::audit_refusal(&ctx.pool, &audit).await?;
    Ok(Verdict::Refuse { reason, detail: detail.to_string(), device: device.cloned() })
}

/// The public key the client proved by signing the server's nonce.
pub fn proven_key(request: &AuthRequest) -> Result<String, &'static str> {
    let opts = &request.connect_opts;
    let (Some(key), Some(sig)) = (&opts.nkey, &opts.sig) else { return Err("credentials_required") };
    // nats-server accepts the signature in URL-safe or standard base64, padded or not (nats.py
    // sends standard base64), so the callout does too.
    let unpadded = sig.trim_end_matches('=').as_bytes();
    let sig = data_encoding::BASE64URL_NOPAD
        .decode(unpadded)
        .or_else(|_| data_encoding::BASE64_NOPAD.decode(unpadded))
        .map_err(|_| "bad_signature")?;
    let pair = KeyPair::from_public_key(key).map_err(|_| "bad_signature")?;
    if !key.starts_with('U') || request.client_info.nonce.is_empty() {
        return Err("bad_signature");
    }
    pair.verify(request.client_info.nonce.as_bytes(), &sig).map_err(|_| "bad_signature")?;
    Ok(key.clone())
}

/// A JWT of the answer that could not be signed. The JWT library's errors have no type of
/// their own (they are `anyhow` errors), so the cause is kept boxed.
#[derive(Debug, thiserror::Error)]
#[error("signing the {jwt} JWT")]
pub struct SignError {
    /// `user` (the permissions granted) or `authorization response`.
    jwt: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// The signed authorization response for a verdict.
pub fn respond(issuer: &Issuer, request: &AuthRequest, verdict: &Verdict) -> Result<Vec<u8>, SignError> {
    let mut response = AuthResponse::generic_claim(request.user_nkey.clone());
    response.aud = Some(request.server_id.id.clone());
    match verdict {
        Verdict::Allow { name, allowed, .. } => {
            let mut user = User::new_claims(name.clone(), request.user_nkey.clone());
            user.aud = Some(issuer.account.clone());
            user.exp = Some(crate::now_ms() / 1000 + issuer.ttl.as_secs() as i64);
            let perms = &mut user.payload_mut().permissions.permissions;
            perms.publish = Permission { allow: allowed.publish.clone(), deny: vec![] };
            perms.subscribe = Permission { allow: allowed.subscribe.clone(), deny: vec![] };
            response.payload_mut().jwt = user.encode(&issuer.key).map_err(SignError::of("user"))?;
        }
        Verdict::Refuse { reason, .. } => response.payload_mut().error = (*reason).to_string(),
    }
    Ok(response.encode(&issuer.key).map_err(SignError::of("authorization response"))?.into_bytes())
}

impl SignError {
    fn of<E: Into<Box<dyn std::error::Error + Send + Sync>>>(jwt: &'static str) -> impl FnOnce(E) -> SignError {
        move |e| SignError { jwt, source: e.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The response as the server reads it (the crate's own type requires `error` present).
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Response {
        jwt: String,
        error: String,
    }

    impl nats_jwt_rs::Claim for Response {
        fn validate() {}
    }

    fn request_signed_by(key: &KeyPair, nonce: &str) -> AuthRequest {
        let sig = data_encoding::BASE64URL_NOPAD.encode(&key.sign(nonce.as_bytes()).unwrap());
        AuthRequest {
            server_id: ServerId { id: "NSERVER".into(), name: "n1".into() },
            user_nkey: KeyPair::new_user().public_key(),
            client_info: ClientInfo { host: "127.0.0.1".into(), id: 7, nonce: nonce.into() },
            connect_opts: ConnectOpts { nkey: Some(key.public_key()), sig: Some(sig), user: None, pass: None },
        }
    }

    #[test]
    fn a_key_is_proven_only_by_a_signature_over_this_nonce() {
        let key = KeyPair::new_user();
        let req = request_signed_by(&key, "nonce-1");
        assert_eq!(proven_key(&req), Ok(key.public_key()));
        for standard in [data_encoding::BASE64, data_encoding::BASE64_NOPAD] {
            let mut std_sig = req.clone();
            std_sig.connect_opts.sig = Some(standard.encode(&key.sign(b"nonce-1").unwrap()));
            assert_eq!(proven_key(&std_sig), Ok(key.public_key()), "standard base64, as nats.py sends it");
        }
        let mut replayed = req.clone();
        replayed.client_info.nonce = "nonce-2".into();
        assert_eq!(proven_key(&replayed), Err("bad_signature"));
        let mut stolen_name = req.clone();
        stolen_name.connect_opts.nkey = Some(KeyPair::new_user().public_key());
        assert_eq!(proven_key(&stolen_name), Err("bad_signature"));
        let mut keyless = req;
        keyless.connect_opts.nkey = None;
        assert_eq!(proven_key(&keyless), Err("credentials_required"));
    }

    #[test]
    fn an_allowed_caller_gets_a_user_jwt_for_the_account() {
        let issuer = Issuer { key: KeyPair::new_account(), account: "TILLSYNC".into(), ttl: Duration::from_secs(60) };
        let req = request_signed_by(&KeyPair::new_user(), "n");
        let addr = tillsync_schemas::DeviceAddr::new("acme", "s1", "till-1");
        let verdict =
            Verdict::Allow { name: "device:x".into(), allowed: identity::device_allowed(&addr), holder: None };
        let bytes = respond(&issuer, &req, &verdict).unwrap();
        let response = Claims::<Response>::decode(std::str::from_utf8(&bytes).unwrap()).unwrap();
        assert_eq!(response.aud.as_deref(), Some("NSERVER"));
        assert_eq!(response.iss, issuer.key.public_key());
        let user = Claims::<User>::decode(&response.payload().jwt).unwrap();
        assert_eq!(user.aud.as_deref(), Some("TILLSYNC"));
        assert_eq!(user.sub, req.user_nkey);
        assert!(user
            .payload()
            .permissions
            .permissions
            .publish
            .allow
            .contains(&"tillsync.ev.acme.s1.till-1".to_string()));
    }

    #[test]
    fn a_refusal_carries_its_reason_and_no_jwt() {
        let issuer = Issuer { key: KeyPair::new_account(), account: "TILLSYNC".into(), ttl: Duration::from_secs(60) };
        let req = request_signed_by(&KeyPair::new_user(), "n");
        let verdict = Verdict::Refuse { reason: "revoked", detail: String::new(), device: None };
        let bytes = respond(&issuer, &req, &verdict).unwrap();
        let response = Claims::<Response>::decode(std::str::from_utf8(&bytes).unwrap()).unwrap();
        assert_eq!(response.payload().error, "revoked");
        assert!(response.payload().jwt.is_empty());
    }
}
