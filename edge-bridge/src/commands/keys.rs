//! Keeps the bridge's trusted command keys current: once connected and every
//! `--command-keys-refresh-s`, it asks the broker (`tillsync.keys.<t>.<s>.<d>`) and takes the
//! answer only when a key it already trusts signed it ([`CommandKeys::accept`]). New keys go
//! to the identity file too, so a restart keeps them: after a rotation the bridge may no longer
//! trust the key it was activated with.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tillsync_schemas::command_keys::{self, CommandKeys};
use tillsync_schemas::{codec, DeviceAddr};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The public keys whose command signatures the bridge accepts, shared with the executor.
pub type TrustedKeys = Arc<RwLock<Vec<String>>>;

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

    async fn refresh(&self) -> Result<(), String> {
        let subject = command_keys::subject(&self.addr);
        let reply =
            tokio::time::timeout(Duration::from_secs(10), self.client.request(subject.clone(), Vec::new().into()))
                .await
                .map_err(|_| "the broker did not answer within 10 s".to_string())?
                .map_err(|e| e.to_string())?;
        let answer: CommandKeys = codec::decode(&reply.payload).map_err(|e| e.to_string())?;
        let now = self.trusted.read().expect("trusted keys lock").clone();
        let keys = answer.accept(&now, &subject).map_err(|e| e.to_string())?;
        if keys == now {
            return Ok(());
        }
        *self.trusted.write().expect("trusted keys lock") = keys.clone();
        tracing::info!(?keys, signer = %answer.signer, "Command keys updated by the broker.");
        if let Some(path) = &self.identity {
            if let Some(mut id) = crate::identity::Identity::load(path).map_err(|e| e.to_string())? {
                id.command_keys = keys;
                id.save(path).map_err(|e| format!("identity file {}: {e}", path.display()))?;
            }
        }
        Ok(())
    }
}
