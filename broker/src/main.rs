//! `tillsync-broker`: the cloud service. Configuration comes from the environment (see
//! `tillsync-broker --help`); SIGTERM or Ctrl-C shut it down gracefully.

use clap::Parser;
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
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    if cli.print_config {
        println!("{:#?}", cli.config);
        return Ok(());
    }
    cli.config.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    Broker::run(cli.config, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
