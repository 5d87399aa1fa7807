//! Keeps the bridge's trusted command keys current: once connected and every
//! `--command-keys-refresh-s`, it asks the broker (`tillsync.keys.<t>.<s>.<d>`) and takes the
//! answer only when a key it already trusts signed it ([`CommandKeys::accept`]). New keys go
//! to the identity file too, so a restart keeps them: after a rotation the bridge may no longer
//! trust the key it was activated with.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tillsync_schemas::command_keys::{self, CommandKeys};
use tillsync_schemas::{codec, DeviceAddr, WireError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::settings::SettingsError;

/// The public keys whose command signatures the bridge accepts, shared with the executor.
pub type TrustedKeys = Arc<RwLock<Vec<String>>>;

/// How long the broker has to answer a refresh.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Why the keys were not refreshed; the ones trusted now are kept until the next refresh.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("the broker did not answer within {} s", ANSWER_WITHIN.as_secs())]
    NoAnswer,
    #[error(transparent)]
    Request(async_nats::RequestError),
    #[error(transparent)]
    Undecodable(WireError),
    /// The answer is not signed by a key trusted now, or names a malformed key.
    #[error(transparent)]
    Refused(#[from] tillsync_schemas::command_keys::KeysRefused),
    /// The identity file to keep in step was not read.
    #[error(transparent)]
    Identity(SettingsError),
    #[error("identity file {}: {source}", path.display())]
    Save {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct Refresher {
    pub addr: DeviceAddr,
    pub client: async_nats::Client,
    pub trusted: TrustedKeys,
    /// The identity file to keep in step, when the bridge was activated.
    pub identity: Option<PathBuf>,
    pub every: Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub connected: watch::Receiver<bool>,
    pub cancel: CancellationToken,
}

impl Refresher {
    pub async fn run(mut self) {
        loop {
            if !crate::nats::wait_connected(&mut self.connected, &self.cancel).await {
                return;
            }
            if let Err(error) = self.refresh().await {
                self.metrics.command_keys_refresh_failures.increment(1);
                tracing::warn!(%error, "Command keys not refreshed; keeping the ones trusted now.");
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }

    async fn refresh(&self) -> Result<(), RefreshError> {
        let subject = command_keys::subject(&self.addr);
        let reply = tokio::time::timeout(ANSWER_WITHIN, self.client.request(subject.clone(), Vec::new().into()))
            .await
            .map_err(|_| RefreshError::NoAnswer)?
            .map_err(RefreshError::Request)?;
        let answer: CommandKeys = codec::decode(&reply.payload).map_err(RefreshError::Undecodable)?;
        let now = self.trusted.read().expect("trusted keys lock").clone();
        let keys = answer.accept(&now, &subject).map_err(RefreshError::Refused)?;
        if keys == now {
            return Ok(());
        }
        *self.trusted.write().expect("trusted keys lock") = keys.clone();
        tracing::info!(?keys, signer = %answer.signer, "Command keys updated by the broker.");
        if let Some(path) = &self.identity {
            if let Some(mut id) = crate::identity::Identity::load(path).map_err(RefreshError::Identity)? {
                id.command_keys = keys;
                id.save(path).map_err(|source| RefreshError::Save { path: path.clone(), source })?;
            }
        }
        Ok(())
    }
}
