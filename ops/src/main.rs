//! `tillsync`: the operator CLI. Human-readable output by default, `--json` for scripts.
//!
//! Exit codes: 0 success; 1 failure (the error is printed); 2 usage error (clap); 3 a check
//! found differences or problems (e.g. `replay --verify` mismatches); 6 a configuration publish
//! was refused (`config publish`); 130 interrupted by Ctrl-C
//! (`replay` resumes with `--resume`). See docs/operations.md.

mod bench;
mod chaos;
mod commands;
mod db;
mod devices;
mod global;
mod identity;
mod keys;
mod migrate;
mod output;
mod partitions;
mod quarantine;
mod replay;
mod status;
mod store_config;
mod tenants;

use std::process::ExitCode;

/// mimalloc rather than the system allocator: the broker (run in-process by `tillsync bench`)
/// allocates and frees many small buffers per event, and glibc's malloc spent ~9 % of the
/// process's CPU on it (perf, `bench latency`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

use crate::global::Global;

#[derive(Parser)]
#[command(name = "tillsync", version, about = "tillsync operator CLI")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Command inbox: list, show one command's history, or send one (acts as the portal).
    Commands(commands::CommandsArgs),
    /// Benchmarks against real NATS and Postgres; prints a table or one JSON object.
    Bench(bench::BenchArgs),
    /// Apply the schema migrations to DATABASE_URL (or to a shadow schema of it).
    Migrate(migrate::MigrateArgs),
    /// Rebuild read models from the events stream into a shadow schema, another database or live.
    Replay(replay::ReplayArgs),
    /// Streams, broker consumers, broker instances, partition owners and lag, resident actors,
    /// devices online, open gaps, stalled watermarks; exit 3 when something needs a look.
    Status(status::StatusArgs),
    /// Quarantined messages: list, show one, redrive one once its cause is fixed.
    Quarantine(quarantine::QuarantineArgs),
    /// Devices: list with online state and lag; provision one and issue its activation code;
    /// rotate, revoke, or show its credentials and audit trail.
    Devices(devices::DevicesArgs),
    /// Portal credentials: one tenant's command intake and status.
    Portals(identity::PortalsArgs),
    /// NATS authorization: generate the service keys and the nats-server config.
    Auth(identity::AuthArgs),
    /// Tenants: list, or provision one.
    Tenants(tenants::TenantsArgs),
    /// A chaos run against private real processes with a checker (docs/chaos.md).
    Chaos(chaos::ChaosArgs),
    /// The broker's command signing keys: generate a seed file, or print a seed's public key.
    Keys(keys::KeysArgs),
    /// Store configuration from head office: publish a change set, show or diff a store's
    /// versions, list devices behind (exit 6: publish refused).
    Config(store_config::ConfigArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    sigpipe::reset();
    let cli = Cli::parse();
    tillsync_broker::logging::init(cli.global.log_format, "warn", tillsync_broker::logging::Output::Stderr);
    let result = match cli.command {
        Command::Commands(args) => commands::run(args, &cli.global).await,
        Command::Bench(args) => bench::run(args, &cli.global).await,
        Command::Migrate(args) => migrate::run(args, &cli.global).await,
        Command::Replay(args) => replay::run(args, &cli.global).await,
        Command::Status(args) => status::run(args, &cli.global).await,
        Command::Quarantine(args) => quarantine::run(args, &cli.global).await,
        Command::Devices(args) => devices::run(args, &cli.global).await,
        Command::Portals(args) => identity::portals(args, &cli.global).await,
        Command::Auth(args) => identity::auth_cmd(args, &cli.global).await,
        Command::Tenants(args) => tenants::run(args, &cli.global).await,
        Command::Chaos(args) => chaos::run(args, &cli.global).await,
        Command::Keys(args) => keys::run(args),
        Command::Config(args) => store_config::run(args, &cli.global).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
