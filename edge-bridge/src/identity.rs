//! The device's identity: its nkey (generated here at activation; the seed never leaves the
//! store), who it is, and the keys its commands are signed with. Kept in one JSON file, mode
//! 0600, replaced atomically, and read again at every NATS connect, so an activation while the
//! bridge runs (a rotation) takes effect at the next reconnect without a restart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tillsync_schemas::identity::{self, ActivateReply, ActivateRequest};
use tillsync_schemas::{codec, DeviceAddr};

use crate::settings::SettingsError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub tenant_id: String,
    pub store_id: String,
    pub device_id: String,
    /// The nkey seed the bridge authenticates with.
    pub seed: String,
    pub command_keys: Vec<String>,
    pub activated_at_ms: i64,
}

impl Identity {
    pub fn addr(&self) -> DeviceAddr {
        DeviceAddr::new(&self.tenant_id, &self.store_id, &self.device_id)
    }

    pub fn load(path: &Path) -> Result<Option<Identity>, SettingsError> {
        let refused = |why: String| SettingsError::IdentityFile { path: path.to_path_buf(), why };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| refused(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(refused(e.to_string())),
        }
    }

    /// Writes a temp file (0600), fsyncs it and renames it over the old one: a crash leaves
    /// the old identity or the new one, never half of either.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Where the identity lives by default: next to the outbox file.
pub fn default_path(db: &Path) -> PathBuf {
    db.with_extension("identity.json")
}

/// Why an activation did not happen: the broker's code, or a local cause.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("activation refused ({code}): {detail}")]
    Refused { code: String, detail: String },
    #[error("cannot reach NATS at {url}: {detail}")]
    Connect { url: String, detail: String },
    /// NATS answered `Authorization Violation` to a code-shaped password: the broker turned the
    /// connection away before reading the code (this address made too many attempts, or the
    /// broker cannot reach its database). nats-server does not pass on which.
    #[error("NATS at {url} refused the activation connection before the code was read: too many attempts from this address (rate_limited) or the broker cannot reach its database (unavailable); try again in a minute")]
    ConnectRefused { url: String },
    #[error("no broker answered the activation request in {0:?}; is a broker running?")]
    NoAnswer(Duration),
    #[error("{0}")]
    Local(String),
}

impl ActivateError {
    /// A stable code for scripts (`--json`) and exit codes.
    pub fn code(&self) -> &str {
        match self {
            ActivateError::Refused { code, .. } => code,
            ActivateError::Connect { .. } => "nats_unreachable",
            ActivateError::ConnectRefused { .. } => "connect_refused",
            ActivateError::NoAnswer(_) => "no_answer",
            ActivateError::Local(_) => "local",
        }
    }
}

/// Exchanges a one-time code for credentials: a fresh nkey proves itself at connect (user
/// `activate`, the code as password), asks the broker, and on success is saved to `path`.
pub async fn activate(
    options: async_nats::ConnectOptions,
    servers: Vec<async_nats::ServerAddr>,
    url: &str,
    code: &str,
    path: &Path,
) -> Result<Identity, ActivateError> {
    writable(path).map_err(|e| ActivateError::Local(format!("cannot write {}: {e}", path.display())))?;
    let key = nkeys::KeyPair::new_user();
    let seed = key.seed().map_err(|e| ActivateError::Local(e.to_string()))?;
    let public = key.public_key();
    let client = options
        .nkey(seed.clone())
        .user_and_password(identity::ACTIVATION_USER.into(), code.trim().into())
        .custom_inbox_prefix(identity::activation_inbox(&public))
        .connection_timeout(Duration::from_secs(10))
        .connect(servers)
        .await
        .map_err(|e| connect_failed(&e, url, code))?;
    let wait = Duration::from_secs(10);
    let request = codec::encode(&ActivateRequest { code: code.trim().into() });
    let reply = tokio::time::timeout(wait, client.request(identity::activate_subject(&public), request.into()))
        .await
        .map_err(|_| ActivateError::NoAnswer(wait))?
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders | async_nats::RequestErrorKind::TimedOut => {
                ActivateError::NoAnswer(wait)
            }
            _ => ActivateError::Local(e.to_string()),
        })?;
    let _ = client.drain().await;
    match codec::decode::<ActivateReply>(&reply.payload).map_err(|e| ActivateError::Local(e.to_string()))? {
        ActivateReply::Refused { code, detail, .. } => Err(ActivateError::Refused { code, detail }),
        ActivateReply::Activated { tenant_id, store_id, device_id, command_keys } => {
            let identity =
                Identity { tenant_id, store_id, device_id, seed, command_keys, activated_at_ms: crate::now_ms() };
            identity.save(path).map_err(|e| ActivateError::Local(format!("writing {}: {e}", path.display())))?;
            Ok(identity)
        }
    }
}

/// Why the activation connection failed. nats-server answers every refusal of its auth callout
/// with the same `Authorization Violation` (the callout's reason stays in the server's log), so
/// the reason is inferred from what the broker's callout refuses before any lookup: a password
/// that is no code at all is `bad_code`; a code-shaped one was turned away for its address's
/// budget or an unavailable broker.
pub fn connect_failed(e: &async_nats::ConnectError, url: &str, code: &str) -> ActivateError {
    match e.kind() {
        async_nats::ConnectErrorKind::AuthorizationViolation if !looks_like_code(code) => ActivateError::Refused {
            code: "bad_code".into(),
            detail: "not an activation code (20 letters and digits 2-7, in groups of four); check it, or issue one with `tillsync devices add`".into(),
        },
        async_nats::ConnectErrorKind::AuthorizationViolation => ActivateError::ConnectRefused { url: url.into() },
        _ => ActivateError::Connect { url: url.into(), detail: e.to_string() },
    }
}

/// Whether `code` can be an activation code at all, as the broker's callout decides it before
/// any lookup (`tillsync_broker::auth::looks_like_code`: case, spaces and dashes do not matter,
/// then 20 base32 characters). Kept in step with it by `edge_truth::activate_exit_codes_*`.
pub fn looks_like_code(code: &str) -> bool {
    let n: String = code.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect();
    n.len() == 20 && n.chars().all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
}

/// Checked before the code is spent: a code taken by the broker and then not saved is lost.
fn writable(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let probe = path.with_extension("tmp");
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&probe)?;
    std::fs::remove_file(probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_shapes_are_judged_as_the_callout_judges_them() {
        assert!(looks_like_code("K7QX-2M4P-ABCD-EFGH-2345"));
        assert!(looks_like_code(" k7qx 2m4p abcd efgh 2345 "));
        for not_a_code in
            ["hello", "", "K7QX-2M4P-ABCD-EFGH-234", "K7QX-2M4P-ABCD-EFGH-2341", "K7QX-2M4P-ABCD-EFGH-23450"]
        {
            assert!(!looks_like_code(not_a_code), "{not_a_code}");
        }
    }

    #[test]
    fn an_identity_is_saved_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = default_path(&dir.path().join("edge.db"));
        assert_eq!(path.file_name().unwrap(), "edge.identity.json");
        assert_eq!(Identity::load(&path).unwrap(), None);
        let id = Identity {
            tenant_id: "acme".into(),
            store_id: "s1".into(),
            device_id: "till-1".into(),
            seed: nkeys::KeyPair::new_user().seed().unwrap(),
            command_keys: vec!["UKEY".into()],
            activated_at_ms: 1,
        };
        id.save(&path).unwrap();
        id.save(&path).unwrap();
        assert_eq!(Identity::load(&path).unwrap(), Some(id));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
