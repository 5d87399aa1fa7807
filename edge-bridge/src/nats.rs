//! The NATS connection: outbound only, retried forever, its state mirrored in a watch channel
//! so the publisher, command consumer and heartbeats wait for "connected" instead of piling
//! messages into the client's buffer while the WAN is down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use async_nats::{Auth, AuthError, ConnectOptions, Event};
use rand::Rng;
use tokio::sync::{mpsc, watch};

use tillsync_schemas::creds::Creds;
use tillsync_schemas::identity;

use crate::error::BridgeError;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::settings::Config;

/// Connects in the background (the bridge starts and takes events with the WAN down). Every
/// connect, refusal and failed attempt goes to `observed` ([`crate::cutoff`]), stamped; while
/// `slow_retries` is set (a revoked device) reconnects wait [`crate::cutoff::REVOKED_RETRY`].
pub async fn connect(
    config: &Config,
    metrics: Arc<Metrics>,
    observed: mpsc::UnboundedSender<(crate::cutoff::Observed, i64)>,
    slow_retries: Arc<AtomicBool>,
) -> Result<(async_nats::Client, watch::Receiver<bool>), BridgeError> {
    let (tx, rx) = watch::channel(false);
    let device = config.device.clone();
    let max_ms = config.backoff_max_ms.min(4_000);
    let mut options = identity_auth(config.identity_path())
        .custom_inbox_prefix(identity::device_inbox(&config.addr()))
        .name(format!("tillsync-edge/{}/{}/{}", config.tenant, config.store, config.device))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(move |attempts| {
            if slow_retries.load(Ordering::Relaxed) {
                return crate::cutoff::REVOKED_RETRY;
            }
            let ceiling = 100u64.saturating_mul(1 << attempts.min(10)).min(max_ms);
            Duration::from_millis(rand::rng().random_range(ceiling / 2..=ceiling))
        })
        .event_callback(move |event| {
            let tx = tx.clone();
            let metrics = metrics.clone();
            let device = device.clone();
            if let Some(o) = crate::cutoff::classify(&event) {
                let _ = observed.send((o, crate::now_ms()));
            }
            async move {
                match event {
                    Event::Connected => {
                        tracing::info!(device_id = %device, "Connected to NATS.");
                        metrics.connected.set(1.0);
                        tx.send_replace(true);
                    }
                    Event::Closed => {
                        tracing::info!(device_id = %device, "NATS connection closed.");
                        metrics.connected.set(0.0);
                        tx.send_replace(false);
                    }
                    Event::Disconnected => {
                        tracing::warn!(device_id = %device, "Disconnected from NATS; reconnecting.");
                        metrics.connected.set(0.0);
                        tx.send_replace(false);
                    }
                    other => tracing::debug!(event = %other, "NATS event."),
                }
            }
        });
    options = crate::tls::apply(options, &config.nats_tls);
    let identity = config.identity_path();
    match &config.nats_creds {
        // An activated bridge is its own device: a credentials file meant for the CLI or the
        // broker (run-local exports one) must not make it connect as someone else.
        Some(creds) if identity.exists() => tracing::warn!(
            creds = %creds.display(),
            identity = %identity.display(),
            "NATS_CREDS ignored: the bridge is activated and connects with its identity file's key."
        ),
        Some(creds) => options = credentials(options, creds).await?,
        None => {}
    }
    let client = options.connect(servers(&config.nats_url)?).await.map_err(|e| BridgeError::Nats(e.to_string()))?;
    Ok((client, rx))
}

/// A `.creds` file or a bare nkey seed file, as the broker and the CLI take them.
async fn credentials(options: ConnectOptions, path: &std::path::Path) -> Result<ConnectOptions, BridgeError> {
    let failed = |e: &dyn std::fmt::Display| BridgeError::Nats(format!("NATS_CREDS {}: {e}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| failed(&e))?;
    match tillsync_schemas::creds::kind(&text).map_err(|e| failed(&e))? {
        Creds::Jwt => options.credentials_file(path).await.map_err(|e| failed(&e)),
        Creds::Seed(seed) => Ok(options.nkey(seed.to_string())),
    }
}

/// Authenticates with the identity file's nkey when the bridge is activated, reading the file
/// at every connect: after a rotation the next reconnect uses the new key, no restart.
fn identity_auth(path: PathBuf) -> ConnectOptions {
    if !path.exists() {
        return ConnectOptions::new();
    }
    ConnectOptions::with_auth_callback(move |nonce| {
        let path = path.clone();
        async move {
            let identity = Identity::load(&path)
                .map_err(AuthError::new)?
                .ok_or_else(|| AuthError::new(format!("identity file {} is gone", path.display())))?;
            let key = nkeys::KeyPair::from_seed(&identity.seed).map_err(AuthError::new)?;
            let mut auth = Auth::new();
            auth.signature = Some(key.sign(&nonce).map_err(AuthError::new)?);
            auth.nkey = Some(key.public_key());
            Ok(auth)
        }
    })
}

/// The servers of a comma-separated NATS URL (a cluster's nodes): the client uses any.
pub fn servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, BridgeError> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse().map_err(|e| BridgeError::Nats(format!("NATS URL {u:?}: {e}"))))
        .collect()
}

/// Waits until connected; false if cancelled first.
pub async fn wait_connected(state: &mut watch::Receiver<bool>, cancel: &tokio_util::sync::CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        r = state.wait_for(|c| *c) => r.is_ok(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cluster_url_list_parses() {
        assert_eq!(super::servers("nats://a:4222,nats://b:4222").unwrap().len(), 2);
        assert!(super::servers("nats://a:x").is_err());
    }
}
