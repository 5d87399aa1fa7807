//! `tillsync`: the operator CLI. Human-readable output by default, `--json` for scripts.
//!
//! Exit codes: 0 success; 1 failure (the error is printed, with a hint); 2 usage error (also an
//! invalid id or value, an unconfirmed decommission, a replay target schema already in use,
//! `bench` or `chaos` without tillsync-lab beside tillsync); 3 a check found differences or
//! problems (e.g. `replay --verify` mismatches, `status`, `commands send --wait` not acked,
//! `commands approve|reject` refused); 4 no such thing: what the command line names does not
//! exist ([`known`], with a hint); 5 `commands cancel` too late, `commands approve|reject` of a
//! command no longer waiting for approval; 6 a configuration publish was refused (`config
//! publish`); 130 interrupted by Ctrl-C (`replay` resumes with `--resume`). Failures are mapped
//! in [`failure`]; the table is in docs/operations.md. `bench` and `chaos` are tillsync-lab's
//! ([`lab`]), with its exit codes.

mod commands;
mod devices;
mod keys;
mod lab;
mod manuals;
mod migrate;
mod quarantine;
mod status;
mod store_config;
mod tenants;

// The modules tillsync-lab shares (src/lib.rs), named as this binary's own: `crate::db`.
use tillsync_ops::{approvers, db, failure, global, identity, known, output, partitions, replay};

use std::process::ExitCode;

/// mimalloc rather than the system allocator: the broker's ingest code (run in-process by
/// `tillsync replay`, and by the benchmarks, now in tillsync-lab, which uses mimalloc too)
/// allocates and frees many small buffers per event, and glibc's malloc spent ~9 % of the
/// process's CPU on it (perf, `bench latency`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory, Parser, Subcommand};

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
    /// Benchmarks against real NATS and Postgres; prints a table or one JSON object. Run by
    /// tillsync-lab, installed beside tillsync.
    #[command(disable_help_flag = true)]
    Bench(lab::LabArgs),
    /// Apply the schema migrations to DATABASE_URL (or to a shadow schema of it).
    Migrate(migrate::MigrateArgs),
    /// Rebuild read models from the events stream into a shadow schema, another database or live.
    Replay(replay::ReplayArgs),
    /// Streams, broker consumers, broker instances, partition owners and lag, resident actors,
    /// devices online, open gaps, stalled watermarks, store configuration (undistributed
    /// versions, devices behind); exit 3 when something needs a look.
    Status(status::StatusArgs),
    /// Quarantined messages: list, show one, redrive one or many once their cause is fixed,
    /// dismiss those that need no redrive (both audited).
    Quarantine(quarantine::QuarantineArgs),
    /// Devices: list with online state and lag; provision one and issue its activation code;
    /// rotate, revoke, or show its credentials and audit trail; decommission one for good.
    Devices(devices::DevicesArgs),
    /// Portal credentials: one tenant's command intake and status.
    Portals(identity::PortalsArgs),
    /// NATS authorization: generate the service keys and the nats-server config.
    Auth(identity::AuthArgs),
    /// Tenants: list, provision one, or decommission one with all its devices.
    Tenants(tenants::TenantsArgs),
    /// Approvers of a tenant, whose signed approvals count: register one with its key, list,
    /// revoke.
    Approvers(approvers::ApproversArgs),
    /// A chaos run against private real processes with a checker (docs/chaos.md). Run by
    /// tillsync-lab, installed beside tillsync.
    #[command(disable_help_flag = true)]
    Chaos(lab::LabArgs),
    /// The broker's command signing keys: generate a seed file, or print a seed's public key.
    Keys(keys::KeysArgs),
    /// Store configuration from head office: publish a change set, show or diff a store's
    /// versions, list devices behind (exit 6: publish refused).
    Config(store_config::ConfigArgs),
    /// Print a shell completion script for tillsync to stdout.
    Completions(manuals::CompletionsArgs),
    /// Write man pages for tillsync and every subcommand to a directory.
    Man(manuals::ManArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    sigpipe::reset();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match lab::help_asked(&e) {
            Some(command) => return end(Err(lab::exec(command)), std::env::args_os().any(|a| a == "--json"), ""),
            None => return tillsync_ops::usage::exit(e, Cli::command()),
        },
    };
    // async-nats logs a failed connect at ERROR; the CLI reports that failure itself, once.
    let filter = "warn,async_nats::connector=off";
    tillsync_broker::admin::logging::init(
        cli.global.log_format,
        filter,
        tillsync_broker::admin::logging::Output::Stderr,
    );
    let json = match &cli.command {
        Command::Bench(args) | Command::Chaos(args) => cli.global.json || args.json(),
        _ => cli.global.json,
    };
    let result = match cli.command {
        Command::Commands(args) => commands::run(args, &cli.global).await,
        Command::Bench(_) => Err(lab::exec("bench")),
        Command::Migrate(args) => migrate::run(args, &cli.global).await,
        Command::Replay(args) => replay::run(args, &cli.global).await,
        Command::Status(args) => status::run(args, &cli.global).await,
        Command::Quarantine(args) => quarantine::run(args, &cli.global).await,
        Command::Devices(args) => devices::run(args, &cli.global).await,
        Command::Portals(args) => identity::portals(args, &cli.global).await,
        Command::Auth(args) => identity::auth_cmd(args, &cli.global).await,
        Command::Tenants(args) => tenants::run(args, &cli.global).await,
        Command::Approvers(args) => approvers::run(args, &cli.global).await,
        Command::Chaos(_) => Err(lab::exec("chaos")),
        Command::Keys(args) => keys::run(args),
        Command::Config(args) => store_config::run(args, &cli.global).await,
        Command::Completions(args) => manuals::completions(args, Cli::command()),
        Command::Man(args) => manuals::man(args, Cli::command()),
    };
    end(result, json, &cli.global.database_url)
}

/// The exit code of `result`, a failure printed first (with `json`, its error object too).
fn end(result: anyhow::Result<ExitCode>, json: bool, database_url: &str) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(error) => {
            let failure = failure::Failure::of(&error, database_url);
            failure.print(json);
            ExitCode::from(failure.exit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillsync_ops::usage::plain_usage;

    #[test]
    fn usage_lines_show_the_subcommand_not_the_options_given() {
        let usage = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            plain_usage(Cli::command(), &args).to_string()
        };
        assert_eq!(
            usage(&["--database-url", "x", "devices", "revoke", "--tenant", "a"]).lines().next().unwrap(),
            "Usage: tillsync devices revoke [OPTIONS] --tenant <TENANT> --store <STORE> --device <DEVICE>"
        );
        assert!(usage(&["--json"]).starts_with("Usage: tillsync [OPTIONS] <COMMAND>"), "{}", usage(&["--json"]));
        assert!(usage(&["status", "--bogus"]).starts_with("Usage: tillsync status [OPTIONS]"));
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        for args in [
            &["tillsync", "--nats-url", "nats://n:1", "--database-url", "postgres://d/x", "--json", "status"][..],
            &["tillsync", "status", "--nats-url", "nats://n:1", "--database-url", "postgres://d/x", "--json"],
            &[
                "tillsync",
                "--json",
                "quarantine",
                "--nats-url",
                "nats://n:1",
                "--database-url",
                "postgres://d/x",
                "list",
            ],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let g = &cli.global;
            assert_eq!(
                (g.nats.nats_url.as_str(), g.database_url.as_str(), g.json),
                ("nats://n:1", "postgres://d/x", true)
            );
        }
        // A subcommand with its own copy of the NATS options gets the value given before it.
        let m =
            Cli::command().try_get_matches_from(["tillsync", "--nats-url", "nats://n:1", "quarantine", "redrive", "7"]);
        let m = m.unwrap();
        let redrive = m.subcommand_matches("quarantine").and_then(|q| q.subcommand_matches("redrive")).unwrap();
        assert_eq!(redrive.get_one::<String>("nats_url").map(String::as_str), Some("nats://n:1"));
        let creds = ["tillsync", "--nats-creds", "op.nk", "--nats-ca-file", "ca.pem", "devices", "list"];
        let cli = Cli::try_parse_from(creds).unwrap();
        assert_eq!(cli.global.nats.nats_creds.as_deref(), Some(std::path::Path::new("op.nk")));
        assert!(cli.global.nats.nats_tls.ca.is_some());
    }

    /// Every flag and positional of every subcommand says what it is for in `--help` (and so
    /// in the man pages and completions).
    #[test]
    fn every_argument_has_help() {
        let mut cli = Cli::command();
        cli.build();
        let missing = tillsync_ops::usage::arguments_without_help(&cli, "tillsync");
        assert!(missing.is_empty(), "arguments without help:\n{}", missing.join("\n"));
    }

    #[test]
    fn clap_finds_wrong_values_and_combinations() {
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| Cli::try_parse_from(args).err().map(|e| e.kind());
        assert_eq!(kind(&["tillsync", "commands", "list", "--state", "bogus"]), Some(ErrorKind::InvalidValue));
        let send = ["tillsync", "commands", "send", "--tenant", "t", "--store", "s", "--requested-by", "r"];
        assert_eq!(kind(&[&send[..], &["--kind", "bogus"]].concat()), Some(ErrorKind::InvalidValue));
        assert_eq!(kind(&[&send[..], &["--kind", "void_order"]].concat()), None);
        let set = [&send[..], &["--kind", "settings_patch", "--set", "novalue"]].concat();
        assert_eq!(kind(&set), Some(ErrorKind::ValueValidation));
        let signed = [&send[..], &["--kind", "void_order", "--approve-as"]].concat();
        assert_eq!(kind(&[&signed[..], &["bob"]].concat()), Some(ErrorKind::ValueValidation));
        assert_eq!(kind(&[&signed[..], &["bob=bob.nk"]].concat()), None);
        let add = ["tillsync", "approvers", "add", "--tenant", "t", "bob"];
        assert_eq!(kind(&add), Some(ErrorKind::MissingRequiredArgument));
        let both = [&add[..], &["--key-file", "k", "--public-key", "U"]].concat();
        assert_eq!(kind(&both), Some(ErrorKind::ArgumentConflict));
        let approve = ["tillsync", "commands", "approve", "01890a5d-ac96-774b-bcce-b302099a8057", "--approver", "bob"];
        assert_eq!(kind(&["tillsync", "commands", "approve", "c1"]), Some(ErrorKind::ValueValidation));
        assert_eq!(kind(&approve), Some(ErrorKind::MissingRequiredArgument));
        assert_eq!(kind(&[&approve[..], &["--key-file", "k"]].concat()), None);
        let replay = ["tillsync", "replay", "--into-live"];
        assert_eq!(kind(&[&replay[..], &["--store", "s"]].concat()), Some(ErrorKind::MissingRequiredArgument));
        let device = [&replay[..], &["--tenant", "t", "--device", "d"]].concat();
        assert_eq!(kind(&device), Some(ErrorKind::MissingRequiredArgument));
        assert_eq!(kind(&[&replay[..], &["--verify"]].concat()), Some(ErrorKind::ArgumentConflict));
        assert_eq!(kind(&[&replay[..], &["--tenant", "t", "--store", "s"]].concat()), None);
    }

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
