//! `tillsync auth init`: the keys and the nats-server configuration for running NATS with
//! authorization. Three accounts: `TILLSYNC` (JetStream; the broker and operator users, and
//! every device and portal admitted by the callout), `AUTH` (the callout user) and `SYS` (the
//! system account, for disconnecting revoked devices). Service users are nkeys named in the
//! config and skip the callout; everyone else is decided by the broker.

use std::path::{Path, PathBuf};

use nkeys::KeyPair;

/// The account callout-admitted clients are placed in.
pub const ACCOUNT: &str = "TILLSYNC";

/// File names inside the directory `tillsync auth init` writes.
pub const SERVER_CONF: &str = "nats-auth.conf";
pub const BROKER: &str = "broker.nk";
pub const OPERATOR: &str = "operator.nk";
pub const CALLOUT: &str = "auth-callout.nk";
pub const SYSTEM: &str = "system.nk";
pub const ISSUER: &str = "issuer.nk";
/// The command-signing key (`TILLSYNC_SIGNING_KEY_FILE`), generated with the others.
pub const SIGNING: &str = "signing.nk";

/// The files written, by role.
#[derive(Debug, Clone)]
pub struct Files {
    pub dir: PathBuf,
}

impl Files {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The server configuration for these keys (to `include` in nats-server.conf).
/// Subscriptions one connection may hold (nats-server's per-client `max_subscriptions`).
pub const MAX_SUBSCRIPTIONS: u32 = 10_000;
// A broker holds about four subscriptions per partition it could own, plus its responders.
const _: () = assert!(MAX_SUBSCRIPTIONS > 4 * tillsync_schemas::partition::MAX_PARTITIONS as u32 + 1_000);

pub fn server_conf(broker: &str, operator: &str, callout: &str, system: &str, issuer: &str) -> String {
    let max_partitions = tillsync_schemas::partition::MAX_PARTITIONS;
    format!(
        "# tillsync: NATS authorization (written by `tillsync auth init`; docs/security.md).
# Devices and portals are admitted by the broker's auth callout; the users below skip it.
accounts {{
  {ACCOUNT}: {{
    jetstream: enabled
    users: [ {{ nkey: {broker} }}, {{ nkey: {operator} }} ]
  }}
  AUTH: {{ users: [ {{ nkey: {callout} }} ] }}
  SYS: {{ users: [ {{ nkey: {system} }} ] }}
}}
system_account: SYS
# Per connection, for every client: a device needs a handful, a broker about four per partition
# (at most {max_partitions}). Bounds what one stolen key can make a server hold.
max_subscriptions: {MAX_SUBSCRIPTIONS}
authorization {{
  auth_callout {{
    issuer: {issuer}
    account: AUTH
    auth_users: [ {callout}, {broker}, {operator}, {system} ]
  }}
}}
"
    )
}

/// Generates every key into `dir` (mode 0600; the directory 0700) and the server config.
/// Refuses to overwrite existing keys: replacing them locks every service out. Errors:
/// `AlreadyExists` naming the first file that exists (nothing written), else the write that
/// failed.
pub fn generate(dir: &Path) -> std::io::Result<Files> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let names = [BROKER, OPERATOR, CALLOUT, SYSTEM, ISSUER, SIGNING, SERVER_CONF];
    crate::auth::pki::refuse_existing(dir, &names, "the keys and config of `tillsync auth init`")?;
    let keys = [
        (BROKER, KeyPair::new_user()),
        (OPERATOR, KeyPair::new_user()),
        (CALLOUT, KeyPair::new_user()),
        (SYSTEM, KeyPair::new_user()),
        (ISSUER, KeyPair::new_account()),
        (SIGNING, KeyPair::new_user()),
    ];
    for (name, key) in &keys {
        crate::keyfile::write_new(&dir.join(name), key)?;
    }
    let public = |i: usize| keys[i].1.public_key();
    let conf = server_conf(&public(0), &public(1), &public(2), &public(3), &public(4));
    std::fs::write(dir.join(SERVER_CONF), conf)?;
    Ok(Files { dir: dir.to_path_buf() })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_generated_config_names_every_service_user_once_per_account() {
        let dir = std::env::temp_dir().join(format!("tillsync-auth-{}", uuid::Uuid::new_v4()));
        let files = super::generate(&dir).unwrap();
        let conf = std::fs::read_to_string(files.path(super::SERVER_CONF)).unwrap();
        assert!(conf.contains("auth_callout"));
        assert_eq!(conf.matches("nkey: U").count(), 4);
        let issuer = crate::keyfile::read_seed(&files.path(super::ISSUER)).unwrap();
        assert!(conf.contains(&issuer.public_key()));
        let again = super::generate(&dir).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists, "keys are never overwritten");
        assert!(again.to_string().starts_with("broker.nk exists"), "{again}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_signing_key_made_before_is_named_and_nothing_is_written_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        crate::keyfile::write_new(&dir.path().join(super::SIGNING), &nkeys::KeyPair::new_user()).unwrap();
        let err = super::generate(dir.path()).unwrap_err();
        assert!(err.to_string().starts_with("signing.nk exists"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing written");
    }
}
