//! Device identity: nats-server asks the broker about every connection that is not one of the
//! fixed service users (auth callout, `docs/security.md`), and the broker answers from
//! Postgres with exactly the permissions the caller's credential allows.
//!
//! - [`callout`] answers `$SYS.REQ.USER.AUTH` on the callout connection (every instance, one
//!   queue group, so any live instance admits devices);
//! - [`activate`] exchanges one-time activation codes for device credentials;
//! - [`keys`] tells bridges which keys sign their commands (key rotation);
//! - [`kick`] disconnects revoked credentials' live connections (the partition-0 owner);
//! - [`records`] is the SQL behind them; [`setup`] generates the keys and the server config;
//!   [`routes`] and [`client_tls`] the certificates and config of cluster routes and of client
//!   connections, with [`pki`] under both.

pub mod activate;
pub mod callout;
pub mod client_tls;
pub mod keys;
pub mod kick;
pub mod pki;
pub mod records;
pub mod routes;
pub mod setup;

use std::sync::Arc;

use crate::tasks::{Job, Scope, Tasks};
use crate::{BrokerError, Ctx};

/// Registers whatever identity tasks this instance's configuration asks for, subscribed
/// before it returns.
pub async fn start(ctx: &Arc<Ctx>, tasks: &mut Tasks) -> Result<(), BrokerError> {
    let activations = activate::subscribe(&ctx.nats).await?;
    let activate = Job::on("activation", Scope::Instance, tillsync_schemas::identity::ACTIVATE_SUBJECTS);
    tasks.spawn(activate, |_| activate::run(ctx.clone(), activations));
    let keys = keys::subscribe(&ctx.nats).await?;
    let keys_job = Job::on("command_keys", Scope::Instance, tillsync_schemas::command_keys::ALL);
    tasks.spawn(keys_job, |_| keys::run(ctx.clone(), keys));
    if let Some(responder) = callout::start(&ctx.config).await? {
        let upkeep = responder.upkeep();
        let gauge = Job::every("auth_callout_upkeep", Scope::Instance, callout::UPKEEP_EVERY);
        tasks.spawn(gauge, |job| callout::keep_up(ctx.clone(), job, upkeep));
        let callout = Job::on("auth_callout", Scope::Instance, callout::AUTH_SUBJECT);
        tasks.spawn(callout, |_| callout::run(ctx.clone(), responder));
    }
    tasks.spawn(Job::every("revocation_kick", Scope::Lead, kick::EVERY), |job| kick::run(ctx.clone(), job));
    Ok(())
}

/// SHA-256 of an activation code, hex: what Postgres keeps instead of the code.
pub fn code_hash(code: &str) -> String {
    use sha2::{Digest, Sha256};
    data_encoding::HEXLOWER.encode(&Sha256::digest(normalize_code(code).as_bytes()))
}

/// Codes are read aloud and typed at a till: case, spaces and dashes do not matter.
pub fn normalize_code(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect()
}

/// A new activation code: 20 base32 characters (100 random bits) in groups of four.
pub fn new_code() -> String {
    let bytes: [u8; 13] = rand::random();
    let raw = data_encoding::BASE32_NOPAD.encode(&bytes);
    raw.as_bytes()[..20].chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-")
}

/// Whether a string can be an activation code at all (checked before any lookup).
pub fn looks_like_code(code: &str) -> bool {
    let n = normalize_code(code);
    n.len() == 20 && n.chars().all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_typed_forgivingly_and_hashed() {
        let code = new_code();
        assert_eq!(code.len(), 24);
        assert!(looks_like_code(&code));
        assert_eq!(code_hash(&code), code_hash(&code.to_lowercase().replace('-', " ")));
        assert_ne!(code_hash(&code), code_hash(&new_code()));
        assert!(!looks_like_code("hello"));
    }
}
