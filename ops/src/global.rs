//! Options every subcommand shares. All are global (`global = true`): accepted before or after
//! the subcommand, `tillsync --nats-url U status` as `tillsync status --nats-url U`; those a
//! subcommand does not use it ignores.

use clap::Args;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Postgres URL of the read-model database.
    #[arg(long, global = true, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/tillsync")]
    pub database_url: String,
    /// Print one JSON document instead of human-readable text (on failure: a JSON error object).
    #[arg(long, global = true)]
    pub json: bool,
    /// Log lines (stderr) as `text` (colour only on a terminal) or `json` (one object per line).
    #[arg(long, global = true, env = "TILLSYNC_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: tillsync_broker::admin::logging::LogFormat,
    #[command(flatten)]
    pub nats: NatsArgs,
}

impl Global {
    pub async fn pool(&self) -> anyhow::Result<sqlx::PgPool> {
        crate::db::pool(&self.database_url, None, 4).await
    }
}

/// Where NATS is and how to log in, for the subcommands that talk to NATS. Part of [`Global`];
/// a subcommand that flattens its own copy (`bench`, `quarantine redrive`) gets the value given
/// before the subcommand too (clap propagates global values to an argument of the same id).
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL.
    #[arg(long, global = true, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS credentials: a .creds file, or an nkey seed file (`operator.nk` from `tillsync auth init`).
    #[arg(long, global = true, env = "NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub nats_tls: tillsync_broker::admin::nats::TlsFiles,
    /// Accept a `nats://` URL to another host without TLS (logged at warn).
    #[arg(long, global = true, env = "TILLSYNC_ALLOW_PLAINTEXT", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_plaintext: bool,
}

impl NatsArgs {
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let tls_forced = self.nats_tls.ca.is_some() || self.nats_tls.cert.is_some();
        let warnings = tillsync_schemas::transport::check(&self.nats_url, tls_forced, None, self.allow_plaintext)?;
        for warning in warnings {
            tracing::warn!(%warning, "Plain text allowed by --allow-plaintext.");
        }
        // The broker's error already names the URL.
        Ok(tillsync_broker::admin::nats::connect(
            &self.nats_url,
            self.nats_creds.as_deref(),
            &self.nats_tls,
            "tillsync-cli",
        )
        .await?)
    }
}
