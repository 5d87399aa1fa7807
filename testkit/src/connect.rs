use std::future::Future;
use std::sync::Arc;

use async_nats::ConnectOptions;
use futures::future::BoxFuture;

use crate::BoxError;

type Make = dyn Fn() -> BoxFuture<'static, Result<ConnectOptions, BoxError>> + Send + Sync;

/// How testkit's own connections (readiness probes, `client()`) reach a server: plain, or
/// with whatever TLS and credentials its config demands, as the caller builds them.
#[derive(Clone)]
pub struct Connect(Arc<Make>);

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connect(..)")
    }
}

impl Default for Connect {
    fn default() -> Connect {
        Connect::plain()
    }
}

impl Connect {
    /// No TLS, no credentials.
    pub fn plain() -> Connect {
        Connect::new(|| async { Ok(ConnectOptions::new()) })
    }

    /// Options made by `make` for every connection (it may read credential files).
    pub fn new<F, Fut>(make: F) -> Connect
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ConnectOptions, BoxError>> + Send + 'static,
    {
        Connect(Arc::new(move || Box::pin(make())))
    }

    /// Connects to `urls` (comma separated); `forever` keeps reconnecting through restarts.
    pub async fn connect(&self, urls: &str, forever: bool) -> crate::Result<async_nats::Client> {
        let failed = |source: BoxError| crate::Error::Connect { url: urls.to_string(), source };
        let mut options = (self.0)().await.map_err(failed)?;
        if forever {
            options = options.max_reconnects(None);
        }
        let addrs: Vec<String> = urls.split(',').map(str::to_string).collect();
        options.connect(addrs).await.map_err(|e| failed(e.into()))
    }
}
