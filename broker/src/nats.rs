//! Connecting to NATS with the broker's options.

use async_nats::{Client, ConnectOptions, Event};
use tokio_util::task::TaskTracker;

use crate::error::{BrokerError, CredentialsError};
use crate::metrics;
pub use crate::tls::TlsFiles;

pub async fn connect(
    url: &str,
    creds: Option<&std::path::Path>,
    tls_files: &TlsFiles,
    name: &str,
) -> Result<Client, BrokerError> {
    connect_with(ConnectOptions::new(), url, creds, tls_files, name).await
}

/// The broker's own connection: its state is `tillsync_nats_connected`, set by the client's
/// connection events as they happen (a dropped TCP connection is seen at once), and logged.
/// The last acks are sent again on each connection, as work of `spawned` (the task registry's).
pub async fn connect_watched(
    url: &str,
    creds: Option<&std::path::Path>,
    tls_files: &TlsFiles,
    name: &str,
    spawned: TaskTracker,
) -> Result<Client, BrokerError> {
    let opts = ConnectOptions::new().event_callback(move |event| {
        let spawned = spawned.clone();
        async move { on_event(event, &spawned) }
    });
    let client = connect_with(opts, url, creds, tls_files, name).await?;
    metrics::nats_connected(true);
    Ok(client)
}

fn on_event(event: Event, spawned: &TaskTracker) {
    match event {
        Event::Connected => {
            tracing::info!("Connected to NATS.");
            metrics::nats_connected(true);
            // Not awaited here: the reconnected client must be free to send them. Not once the
            // broker's tasks have stopped (the tracker closed): nothing would join the work.
            if !spawned.is_closed() {
                spawned.spawn(crate::settled::send_again());
            }
        }
        Event::Disconnected => {
            tracing::warn!("Disconnected from NATS; reconnecting. Nothing is consumed meanwhile.");
            metrics::nats_connected(false);
        }
        Event::Closed => metrics::nats_connected(false),
        other => tracing::debug!(event = %other, "NATS event."),
    }
}

async fn connect_with(
    opts: ConnectOptions,
    url: &str,
    creds: Option<&std::path::Path>,
    tls_files: &TlsFiles,
    name: &str,
) -> Result<Client, BrokerError> {
    let mut opts = crate::tls::apply(opts.name(name).max_reconnects(None), tls_files)?;
    if let Some(path) = creds {
        opts = credentials(opts, path).await?;
    }
    opts.connect(servers(url)?).await.map_err(|source| BrokerError::NatsConnect { url: url.to_string(), source })
}

/// Returns once the server has processed everything this client sent before, subscriptions
/// included: `Client::flush` only writes the socket, so a request from another connection
/// right after it can still find no subscriber ("no responders"). The server handles one
/// connection's operations in order, so a message to itself coming back proves it.
pub async fn round_trip(client: &Client) -> Result<(), RoundTripError> {
    use futures::StreamExt;
    let subject = client.new_inbox();
    let mut probe = client.subscribe(subject.clone()).await.map_err(RoundTripError::Subscribe)?;
    client.publish(subject, bytes::Bytes::new()).await.map_err(RoundTripError::Publish)?;
    let back = tokio::time::timeout(ROUND_TRIP_WITHIN, probe.next()).await;
    let _ = probe.unsubscribe().await;
    match back {
        Ok(Some(_)) => Ok(()),
        _ => Err(RoundTripError::NoAnswer),
    }
}

const ROUND_TRIP_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// A subscription the server did not confirm ([`round_trip`], [`responder`]).
#[derive(Debug, thiserror::Error)]
pub enum RoundTripError {
    #[error("subscribing")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("publishing to its own inbox")]
    Publish(#[source] async_nats::PublishError),
    #[error("no round trip through the NATS server within {ROUND_TRIP_WITHIN:?}")]
    NoAnswer,
}

/// A queue subscription the server holds before this returns ([`round_trip`]): a responder the
/// broker promises when it reports started. `what` names it in errors.
pub async fn responder(
    client: &Client,
    subject: impl async_nats::subject::ToSubject,
    queue: &str,
    what: &str,
) -> Result<async_nats::Subscriber, BrokerError> {
    let failed = |source| BrokerError::Subscription { what: what.into(), source };
    let sub =
        client.queue_subscribe(subject, queue.to_string()).await.map_err(|e| failed(RoundTripError::Subscribe(e)))?;
    round_trip(client).await.map_err(failed)?;
    Ok(sub)
}

/// Answers the requests of a [`responder`] eight at a time until cancelled; an ended
/// subscription is logged, since this instance then answers none.
pub async fn serve<F, Fut>(
    cancel: &tokio_util::sync::CancellationToken,
    sub: async_nats::Subscriber,
    what: &str,
    answer: F,
) where
    F: FnMut(async_nats::Message) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = sub.for_each_concurrent(8, answer) => tracing::error!("{what} subscription ended: this instance answers none."),
    }
}

/// A `.creds` file (user JWT and seed) or a bare nkey seed file (`tillsync auth init`), read as
/// the CLI and the bridge read them ([`tillsync_schemas::creds`]).
pub async fn credentials(opts: ConnectOptions, path: &std::path::Path) -> Result<ConnectOptions, BrokerError> {
    use tillsync_schemas::creds::{self, Creds};
    let failed = |e: CredentialsError| BrokerError::Credentials { path: path.into(), source: e };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.into()))?;
    match creds::kind(&text).map_err(|e| failed(e.into()))? {
        Creds::Jwt => opts.credentials_file(path).await.map_err(|e| failed(e.into())),
        Creds::Seed(seed) => Ok(opts.nkey(seed.to_string())),
    }
}

/// The servers of a comma-separated `NATS_URL`: the client connects to any and fails over.
pub fn servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, BrokerError> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<async_nats::ServerAddr>().map_err(|source| BrokerError::NatsUrl { url: u.into(), source }))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_list_of_servers_parses() {
        let s = super::servers("nats://127.0.0.1:4222, nats://127.0.0.1:4223").unwrap();
        assert_eq!(s.len(), 2);
        assert!(super::servers("nats://127.0.0.1:x").is_err());
    }

    #[test]
    fn a_bad_url_and_a_bad_credentials_file_name_their_cause_once() {
        use crate::error::Chain;
        let url = super::servers("nats://127.0.0.1:x").unwrap_err();
        let line = Chain(&url).to_string();
        assert!(line.starts_with("invalid configuration: NATS_URL: \"nats://127.0.0.1:x\": "), "{line}");

        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "hello").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let creds = rt.block_on(super::credentials(async_nats::ConnectOptions::new(), file.path())).unwrap_err();
        let line = Chain(&creds).to_string();
        let want = format!("invalid configuration: credentials file {}: neither", file.path().display());
        assert!(line.starts_with(&want), "{line}");
        assert!(matches!(creds, super::BrokerError::Credentials { .. }));
    }
}
