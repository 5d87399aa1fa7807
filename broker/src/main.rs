//! `tillsync-broker`: the cloud service. Configuration comes from the environment (see
//! `tillsync-broker --help`); SIGTERM or Ctrl-C shut it down gracefully.

use std::io::Write as _;

use clap::Parser;
use tillsync_broker::admin::logging::{self, LogFormat};
use tillsync_broker::admin::Chain;
use tillsync_broker::config::Config;
use tillsync_broker::Broker;

/// mimalloc rather than the system allocator: the broker allocates and frees many small
/// buffers per event, and glibc's malloc took ~9 % of its CPU (perf); in one `bench latency`
/// run at 11,000 events/s p99 went from 368 ms to 93 ms (docs/performance.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tillsync-broker", version, about = "tillsync cloud broker")]
struct Cli {
    #[command(flatten)]
    config: Config,
    /// Check the configuration, print it as JSON (each setting under the variable that sets
    /// it, passwords masked) and exit: 0, or 2 when invalid.
    #[arg(long)]
    print_config: bool,
    /// Log lines as `text` (colour only on a terminal) or `json` (one object per line).
    #[arg(long, env = "TILLSYNC_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
}

/// Exit codes: 0 stopped by a signal, 2 an invalid configuration, 1 anything else. Each
/// failure is logged (in the chosen log format) with its cause chain, once.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, "info", logging::Output::Stdout);
    if cli.print_config {
        // Only a configuration the broker would start with is printed.
        if let Err(error) = startable(&cli.config) {
            eprintln!("error: invalid configuration: {}", Chain(&*error));
            return std::process::ExitCode::from(2);
        }
        let text = serde_json::to_string_pretty(&cli.config.printable()).expect("strings serialize");
        // A reader that went away (`| head`) is not an error worth a panic.
        let _ = writeln!(std::io::stdout(), "{text}");
        return std::process::ExitCode::SUCCESS;
    }
    if let Err(error) = startable(&cli.config) {
        tracing::error!(error = %Chain(&*error), "Invalid configuration; the broker did not start.");
        return std::process::ExitCode::from(2);
    }
    for warning in cli.config.plaintext().unwrap_or_default() {
        tracing::warn!(%warning, "Plain text allowed by TILLSYNC_ALLOW_PLAINTEXT.");
    }
    match Broker::run(cli.config, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %Chain(&error), "The broker stopped.");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The settings are valid and the signing key files read: a broker that could not sign would
/// see every command refused, so a missing key is a configuration error (exit 2) too.
fn startable(config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    config.validate()?;
    tillsync_broker::admin::signing::Signer::load(
        config.signing_key_file.as_deref(),
        config.signing_key_next_file.as_deref(),
    )?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
