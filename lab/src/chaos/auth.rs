//! NATS authorization in the run, as production has it (docs/security.md): nats-server runs the
//! config `tillsync auth init` writes (accounts, service users, the auth callout), every broker
//! connects with its own keys and answers the callout, every bridge is activated with a
//! one-time code before its first start and connects with the key it was activated with, and
//! the run's own clients (portal, status reader, nemesis) connect as the operator.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tillsync_broker::admin::auth::setup;
use tillsync_schemas::DeviceAddr;
use tokio::time::Instant;

use super::Device;

/// Lifetime of the user JWT the callout grants (`TILLSYNC_AUTH_TTL_S`, the broker's minimum):
/// an hour in production; here every bridge's connection expires a few times a minute and is
/// decided again by the callout, whatever the nemesis is doing to the broker, Postgres or
/// nats-server at that moment.
pub const TTL_S: &str = "10";

/// Longest wait for the activation of a bridge (while no broker answers yet).
const ACTIVATE_WITHIN: Duration = Duration::from_secs(30);

/// `tillsync-edge activate`'s exit code when NATS or the broker did not answer (retried).
const NO_ANSWER: i32 = 4;

/// The run's keys and server config, as `tillsync auth init` writes them.
#[derive(Debug, Clone)]
pub struct Auth {
    files: setup::Files,
}

impl Auth {
    pub fn generate(dir: &Path) -> anyhow::Result<Auth> {
        let files =
            setup::generate(dir).with_context(|| format!("generating the NATS auth keys in {}", dir.display()))?;
        Ok(Auth { files })
    }

    /// The server config for these keys; testkit writes it into the run's nats-server config.
    pub fn server_conf(&self) -> PathBuf {
        self.files.path(setup::SERVER_CONF)
    }

    /// A broker's keys: its own user, the callout user and the issuer it signs answers with,
    /// and the system account's user (to disconnect revoked devices). As scripts/run-local.sh.
    pub fn broker_env(&self) -> Vec<(String, String)> {
        [
            ("NATS_CREDS", setup::BROKER),
            ("TILLSYNC_AUTH_CALLOUT_CREDS", setup::CALLOUT),
            ("TILLSYNC_AUTH_ISSUER_SEED", setup::ISSUER),
            ("TILLSYNC_NATS_SYSTEM_CREDS", setup::SYSTEM),
        ]
        .map(|(var, file)| (var.to_string(), self.files.path(file).display().to_string()))
        .into_iter()
        .chain([("TILLSYNC_AUTH_TTL_S".to_string(), TTL_S.to_string())])
        .collect()
    }

    /// A client as the operator (a service user of the `TILLSYNC` account: every permission,
    /// no callout), reconnecting for as long as it lives.
    pub async fn operator_client(&self, url: &str) -> anyhow::Result<async_nats::Client> {
        let options =
            async_nats::ConnectOptions::new().retry_on_initial_connect().connection_timeout(Duration::from_secs(2));
        let options = tillsync_broker::admin::nats::credentials(options, &self.files.path(setup::OPERATOR)).await?;
        options.connect(url).await.context("connecting to the private nats-server as the operator")
    }
}

/// Whether the broker on `addr` answers auth callouts (its /metrics says so).
pub async fn answers_callouts(http: &reqwest::Client, addr: &str) -> bool {
    let Ok(resp) = http.get(format!("http://{addr}/metrics")).send().await else { return false };
    let name = tillsync_broker::admin::metrics::AUTH_RESPONDER_UP;
    resp.text().await.is_ok_and(|text| text.lines().any(|l| l.starts_with(name) && l.trim_end().ends_with(" 1")))
}

/// Whether nats-server turns away a client without credentials (the callout refuses it):
/// authorization is on, not merely configured.
pub async fn refuses_anonymous(url: &str) -> bool {
    let connect = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5)).connect(url).await;
    matches!(connect, Err(e) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation)
}

/// Activates every bridge as an installer would: a code issued as `tillsync devices add`
/// issues it, then `tillsync-edge activate` with it, which writes the identity file next to
/// the bridge's database that `tillsync-edge run` connects with. Each activation's output goes
/// to its bridge's log (`logs`/<device>.log).
pub async fn activate_bridges(
    edge: &Path,
    nats_url: &str,
    pg_url: &str,
    bridges: &[(Device, PathBuf)],
    logs: &Path,
) -> anyhow::Result<()> {
    let pool = tillsync_ops::db::pool(pg_url, None, 2).await?;
    let mut activations = tokio::task::JoinSet::new();
    for (d, db) in bridges {
        let addr = DeviceAddr::new(&d.tenant_id, &d.store_id, &d.device_id);
        let issued = tillsync_ops::identity::issue_code(&pool, &addr, "activate", 1).await?;
        let log = logs.join(format!("{}.log", d.device_id));
        activations.spawn(activate(edge.to_path_buf(), nats_url.to_string(), issued.code, db.clone(), log));
    }
    pool.close().await;
    while let Some(done) = activations.join_next().await {
        done??;
    }
    Ok(())
}

/// One `tillsync-edge activate`, again while no broker answers (a code no broker took is
/// not spent).
async fn activate(edge: PathBuf, nats_url: String, code: String, db: PathBuf, log: PathBuf) -> anyhow::Result<()> {
    let deadline = Instant::now() + ACTIVATE_WITHIN;
    loop {
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        let status = tokio::process::Command::new(&edge)
            .args(["activate", "--code", &code, "--nats-url", &nats_url, "--db"])
            .arg(&db)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .status()
            .await
            .with_context(|| format!("cannot start {}", edge.display()))?;
        match status.code() {
            Some(0) => return Ok(()),
            Some(NO_ANSWER) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
            _ => anyhow::bail!("tillsync-edge activate --db {} failed ({status}; see {})", db.display(), log.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn brokers_get_every_key_of_the_generated_setup() {
        let dir = tempfile::tempdir().unwrap();
        let auth = super::Auth::generate(&dir.path().join("auth")).unwrap();
        assert!(std::fs::read_to_string(auth.server_conf()).unwrap().contains("auth_callout"));
        let env = auth.broker_env();
        for var in
            ["NATS_CREDS", "TILLSYNC_AUTH_CALLOUT_CREDS", "TILLSYNC_AUTH_ISSUER_SEED", "TILLSYNC_NATS_SYSTEM_CREDS"]
        {
            let (_, file) = env.iter().find(|(k, _)| k == var).unwrap_or_else(|| panic!("{var} missing"));
            assert!(std::path::Path::new(file).is_file(), "{var}={file}");
        }
        assert!(env.iter().any(|(k, v)| k == "TILLSYNC_AUTH_TTL_S" && v == super::TTL_S));
    }
}
