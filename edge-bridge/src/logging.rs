//! Log lines on stderr, as text (colour only on a terminal, never with `NO_COLOR`) or as one
//! JSON object per line for log shippers (`--log-format json`).
//!
//! The broker has the same few lines (`tillsync_broker::logging`): the bridge must not depend
//! on the broker crate (its Postgres driver has no place on a till), and the wire-contract
//! crate does no I/O.

use std::io::IsTerminal;

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; ANSI colour only when stderr is a terminal and NO_COLOR is unset.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, fields.
    Json,
}

/// `info`, but not the NATS client's own line for every failed reconnect (an `ERROR` every
/// few seconds while the WAN is down or the device is refused, and its `INFO` per event): the
/// bridge says once why it is cut off and how many attempts failed since (`crate::cutoff`).
/// `RUST_LOG=info,async_nats=debug` shows them.
pub const DEFAULT_FILTER: &str = "info,async_nats=warn,async_nats::connector=off";

/// Installs the global subscriber; `RUST_LOG` overrides `default_filter`.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(colour).init()
        }
    }
}
