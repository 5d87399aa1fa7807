//! `tillsync-edge`: `run` the bridge, show its `status`, or `simulate` a fleet of devices.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tillsync_edge::{http_client, simulate, Bridge, Config, Status};

#[derive(Debug, Parser)]
#[command(name = "tillsync-edge", version, about = "tillsync edge bridge: the store side of tillsync.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` (colour only on a terminal) or `json` (one object per line).
    #[arg(long, global = true, env = "TILLSYNC_LOG_FORMAT", value_enum, default_value_t)]
    log_format: tillsync_edge::logging::LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bridge until SIGINT/SIGTERM.
    Run(Box<Config>),
    /// Exchange a one-time activation code for this device's credentials (outbound only).
    Activate(ActivateArgs),
    /// Show outbox depth, last ack and connection state.
    Status(StatusArgs),
    /// Run N simulated devices, each a full bridge, generating realistic POS traffic.
    Simulate(simulate::SimArgs),
}

#[derive(Debug, clap::Args)]
struct ActivateArgs {
    /// The code `tillsync devices add` (or `devices rotate`) printed.
    #[arg(long, env = "TILLSYNC_EDGE_ACTIVATION_CODE")]
    code: String,
    /// NATS server URL(s), comma separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// SQLite file of the bridge; the identity is written next to it.
    #[arg(long, env = "TILLSYNC_EDGE_DB", default_value = "tillsync-edge.db")]
    db: PathBuf,
    /// Identity file to write (default: next to --db).
    #[arg(long, env = "TILLSYNC_EDGE_IDENTITY")]
    identity: Option<PathBuf>,
    #[command(flatten)]
    nats_tls: tillsync_edge::tls::TlsFiles,
    /// Send the code over a `nats://` URL to another host without TLS (logged at warn).
    #[arg(long, env = "TILLSYNC_ALLOW_PLAINTEXT", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    allow_plaintext: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Local API of the running bridge.
    #[arg(long, env = "TILLSYNC_EDGE_HTTP_ADDR", default_value = "127.0.0.1:8787")]
    http_addr: std::net::SocketAddr,
    /// SQLite file, read when the bridge is not running.
    #[arg(long, env = "TILLSYNC_EDGE_DB", default_value = "tillsync-edge.db")]
    db: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tillsync_edge::logging::init(cli.log_format, tillsync_edge::logging::DEFAULT_FILTER);
    // Two worker threads are plenty on a Pi and keep the footprint small.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Run(config) => run(*config).await,
            Command::Activate(args) => activate(args).await,
            Command::Status(args) => status(args).await,
            Command::Simulate(args) => simulate::run(args).await,
        }
    })
}

/// Exit codes: 0 stopped by a signal, 2 a configuration error (fix the settings: restarting
/// cannot help, and the systemd unit does not), 1 anything else (retried by systemd).
async fn run(config: Config) -> anyhow::Result<()> {
    let bridge = match Bridge::start(config).await {
        Ok(b) => b,
        Err(e @ (tillsync_edge::BridgeError::Config(_) | tillsync_edge::BridgeError::WrongDevice { .. })) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
        Err(e) => return Err(anyhow::Error::new(e).context("starting the edge bridge")),
    };
    shutdown_signal().await;
    tracing::info!("Stopping.");
    bridge.shutdown().await;
    Ok(())
}

pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Exit codes: 0 activated, 2 plain text to another host without --allow-plaintext, 3 the code
/// refused (the code says why: `bad_code` when it is not code-shaped, which NATS refuses at
/// connect, or the broker's `code_used`, `code_expired`, `code_unknown`, `decommissioned`), 4 NATS
/// or the broker unreachable (`nats_unreachable`, `no_answer`), 5 NATS refused the connection
/// before the code was read (`connect_refused`: this address's budget, or the broker cannot
/// reach its database; retry later), 1 anything else.
async fn activate(args: ActivateArgs) -> anyhow::Result<()> {
    let path = args.identity.clone().unwrap_or_else(|| tillsync_edge::identity::default_path(&args.db));
    let servers = tillsync_edge::nats::servers(&args.nats_url)?;
    args.nats_tls.validate()?;
    let tls_forced = args.nats_tls.ca.is_some() || args.nats_tls.cert.is_some();
    match tillsync_schemas::transport::check(&args.nats_url, tls_forced, None, args.allow_plaintext) {
        Ok(warnings) => {
            warnings.iter().for_each(|w| tracing::warn!(warning = %w, "Plain text allowed by --allow-plaintext."))
        }
        Err(refused) => {
            eprintln!("error: {refused}");
            std::process::exit(2);
        }
    }
    let options =
        tillsync_edge::tls::apply(async_nats::ConnectOptions::new().name("tillsync-edge/activate"), &args.nats_tls);
    let result = tillsync_edge::identity::activate(options, servers, &args.nats_url, &args.code, &path).await;
    let (exit, json) = match &result {
        Ok(id) => {
            let json = serde_json::json!({"result": "activated", "tenant_id": id.tenant_id, "store_id": id.store_id,
                "device_id": id.device_id, "identity_file": path, "command_keys": id.command_keys.len()});
            (0, json)
        }
        Err(e) => {
            let exit = match e {
                tillsync_edge::identity::ActivateError::Refused { .. } => 3,
                tillsync_edge::identity::ActivateError::Connect { .. }
                | tillsync_edge::identity::ActivateError::NoAnswer(_) => 4,
                tillsync_edge::identity::ActivateError::ConnectRefused { .. } => 5,
                tillsync_edge::identity::ActivateError::Local(_) => 1,
            };
            (exit, serde_json::json!({"result": "refused", "code": e.code(), "error": e.to_string()}))
        }
    };
    if args.json {
        println!("{json}");
    } else {
        match &result {
            Ok(id) => println!(
                "Activated as {}/{}/{}; identity written to {} (mode 0600).",
                id.tenant_id,
                id.store_id,
                id.device_id,
                path.display()
            ),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if exit != 0 {
        std::process::exit(exit);
    }
    Ok(())
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let url = http_client::Url::parse(&format!("http://{}/v1/status", args.http_addr))?;
    let live = tokio::time::timeout(Duration::from_secs(3), http_client::request("GET", &url, b"")).await;
    let status: Status = match live {
        Ok(Ok((200, body))) => serde_json::from_slice(&body).context("decoding /v1/status")?,
        _ => {
            eprintln!("bridge not reachable at {}; reading {}", args.http_addr, args.db.display());
            tillsync_edge::status::from_file(&args.db).await.context("reading the outbox file")?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("{}", status.render());
    }
    Ok(())
}
