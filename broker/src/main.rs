//! `tillsync-broker`: the cloud service. Configuration comes from the environment (see
//! `tillsync-broker --help`); SIGTERM or Ctrl-C shut it down gracefully.

use clap::Parser;
use tillsync_broker::config::Config;
use tillsync_broker::Broker;

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
