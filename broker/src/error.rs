//! The broker's error type, which library callers match on, and [`Chain`], which prints an
//! error with its causes.
//!
//! An error's message says what failed; its cause is its `#[source]`, never repeated in the
//! message, so a chain (`Chain`, anyhow's `{:#}`) names each cause once. Print the chain, not
//! the message alone, wherever the cause matters (a log line, an exit). A configuration error
//! has no cause: its text is the message of the variant that carries it.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::keyfile::SeedError;
use crate::nats::RoundTripError;
use crate::tls::TlsFilesError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A setting out of range or inconsistent with another ([`crate::config::Config::validate`]).
    /// Its message is this one's (no `#[source]`): a configuration error has no cause of its own.
    #[error("invalid configuration: {0}")]
    Settings(ConfigError),
    /// `NATS_CA_FILE`, `NATS_CERT_FILE` or `NATS_KEY_FILE` missing, unreadable or half given.
    #[error("invalid configuration: {0}")]
    TlsFiles(TlsFilesError),
    /// `NATS_URL` holds a server address that does not parse.
    #[error("invalid configuration: NATS_URL: {url:?}")]
    NatsUrl {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// The NATS credentials file (`.creds` or a bare seed) cannot be read or used.
    #[error("invalid configuration: credentials file {}", path.display())]
    Credentials {
        path: PathBuf,
        #[source]
        source: CredentialsError,
    },
    /// No `TILLSYNC_SIGNING_KEY_FILE`: a broker that cannot sign would see every command refused.
    #[error(
        "command signing key: no signing key configured: set --signing-key-file or TILLSYNC_SIGNING_KEY_FILE \
         to a file holding an nkey seed (`tillsync keys generate FILE` writes one)"
    )]
    NoSigningKey,
    #[error("command signing key")]
    SigningKey(#[source] SeedError),
    /// The account seed the auth callout signs with (`TILLSYNC_AUTH_ISSUER_SEED`).
    #[error("auth callout issuer seed (TILLSYNC_AUTH_ISSUER_SEED)")]
    IssuerSeed(#[source] SeedError),
    /// The database was set up with another `TILLSYNC_PARTITIONS`.
    #[error(
        "this database runs with {stored} partitions but TILLSYNC_PARTITIONS is {configured}; \
         every broker instance must use {stored} (see docs/operations.md, \"Partitions\")"
    )]
    PartitionCount { stored: i32, configured: u16 },
    #[error("reading partition_settings")]
    PartitionSettings(#[source] sqlx::Error),
    /// A stream partitioned into another number of partitions than `TILLSYNC_PARTITIONS` says.
    #[error(
        "stream {stream} is partitioned as {stored:?}, not {wanted:?}: \
         TILLSYNC_PARTITIONS must stay what the deployment started with"
    )]
    StreamPartitions { stream: String, stored: String, wanted: String },
    /// The consumer of a broker from before partitions still holds messages.
    #[error(
        "{consumer} (a broker from before partitions) still has {pending} messages to deliver: \
         drain it with that version first"
    )]
    UndrainedConsumer { consumer: String, pending: u64 },
    /// A responder's queue subscription (`what` names it) the server did not confirm.
    #[error("{what} subscription")]
    Subscription {
        what: String,
        #[source]
        source: RoundTripError,
    },
    #[error(transparent)]
    Actors(#[from] tillsync_actors::ActorError),
    #[error("cannot connect to NATS at {url}")]
    NatsConnect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// A JetStream API request about a stream or a consumer (`name`: `STREAM` or `STREAM/consumer`).
    #[error("JetStream stream or consumer {name}")]
    Stream {
        name: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("Postgres")]
    Db(#[from] sqlx::Error),
    #[error("migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("HTTP listener on {addr}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl BrokerError {
    /// A failed JetStream request about `name` (`STREAM` or `STREAM/consumer`).
    pub(crate) fn stream(name: impl Into<String>, source: impl Into<async_nats::Error>) -> BrokerError {
        BrokerError::Stream { name: name.into(), source: source.into() }
    }
}

/// Why a NATS credentials file was not used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Kind(#[from] tillsync_schemas::creds::CredsError),
}

/// An error and its causes on one line (`outer: cause: root cause`), for a log field or a
/// message. This crate's errors name their cause as their `source`, not in their own message,
/// so their message alone leaves the cause out: `tracing::warn!(error = %Chain(&error), ..)`.
/// A cause whose text the line already holds (async-nats and sqlx errors quote their source)
/// is left out, so each cause is said once.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut line = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !line.contains(&text) {
                line = format!("{line}: {text}");
            }
            cause = c.source();
        }
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_says_each_cause_once() {
        let io = std::io::Error::other("connection refused");
        let e = BrokerError::Http { addr: "127.0.0.1:1".parse().unwrap(), source: io };
        assert_eq!(Chain(&e).to_string(), "HTTP listener on 127.0.0.1:1: connection refused");
        let e = BrokerError::PartitionSettings(sqlx::Error::PoolTimedOut);
        assert_eq!(Chain(&e).to_string(), format!("reading partition_settings: {}", sqlx::Error::PoolTimedOut));
    }
}
