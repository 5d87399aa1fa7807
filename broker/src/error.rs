//! The broker's error type. Binaries wrap it in anyhow; library callers match on it.

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("command signing key: {0}")]
    SigningKey(String),
    #[error("cannot connect to NATS at {url}: {source}")]
    NatsConnect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("JetStream stream or consumer {0}: {1}")]
    Stream(String, String),
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("HTTP listener on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
