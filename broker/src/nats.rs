//! Connecting to NATS with the broker's options.

use async_nats::{Client, ConnectOptions};

use crate::error::BrokerError;

pub async fn connect(url: &str, creds: Option<&std::path::Path>, name: &str) -> Result<Client, BrokerError> {
    let mut opts = ConnectOptions::new().name(name).max_reconnects(None);
    if let Some(path) = creds {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| BrokerError::Config(format!("credentials file {}: {e}", path.display())))?;
    }
    opts.connect(url).await.map_err(|source| BrokerError::NatsConnect { url: url.to_string(), source })
}
