//! `tillsync-lab`: benchmarks (`bench`, docs/performance.md) and the chaos run (`chaos`,
//! docs/chaos.md), for whoever measures or tests tillsync rather than runs it. Installed beside
//! `tillsync`, it is also `tillsync bench ...` and `tillsync chaos ...`: tillsync becomes this
//! process with its command line unchanged (ops/src/lab.rs), so the global options, the
//! environment, the output and the exit codes are those of `tillsync`.
//!
//! Exit codes: 0 success; 1 failure (the error is printed, with a hint); 2 usage error; `chaos`:
//! 1 violations, 4 the run could not be carried out (src/chaos/mod.rs).

mod bench;
mod chaos;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tillsync_ops::failure::Failure;
use tillsync_ops::global::Global;

/// mimalloc rather than the system allocator: the broker (run in-process by `bench`) allocates
/// and frees many small buffers per event, and glibc's malloc spent ~9 % of the process's CPU
/// on it (perf, `bench latency`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tillsync-lab", version, about = "tillsync benchmarks and chaos run")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks against real NATS and Postgres; prints a table or one JSON object.
    Bench(bench::BenchArgs),
    /// A chaos run against private real processes with a checker (docs/chaos.md).
    Chaos(chaos::ChaosArgs),
}

/// The command as the user typed its name: `tillsync` when run as `tillsync bench`, so usage
/// lines read `tillsync bench ...` as they did.
fn invoked_as() -> clap::Command {
    let argv0 = std::env::args_os().next().map(std::path::PathBuf::from);
    let name = argv0.as_deref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
    let cli = Cli::command();
    match name {
        Some(name) => cli.bin_name(name),
        None => cli,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    sigpipe::reset();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return tillsync_ops::usage::exit(e, invoked_as()),
    };
    // async-nats logs a failed connect at ERROR; the command reports that failure itself, once.
    let filter = "warn,async_nats::connector=off";
    tillsync_broker::admin::logging::init(
        cli.global.log_format,
        filter,
        tillsync_broker::admin::logging::Output::Stderr,
    );
    let result = match cli.command {
        Command::Bench(args) => bench::run(args, &cli.global).await,
        Command::Chaos(args) => chaos::run(args, &cli.global).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            let failure = Failure::of(&error, &cli.global.database_url);
            failure.print(cli.global.json);
            ExitCode::from(failure.exit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag and positional says what it is for in `--help`, as in tillsync.
    #[test]
    fn every_argument_has_help() {
        let mut cli = Cli::command();
        cli.build();
        let missing = tillsync_ops::usage::arguments_without_help(&cli, "tillsync-lab");
        assert!(missing.is_empty(), "arguments without help:\n{}", missing.join("\n"));
    }

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        for args in [
            &["tillsync-lab", "--nats-url", "nats://n:1", "--json", "bench", "fsync"][..],
            &["tillsync-lab", "bench", "--nats-url", "nats://n:1", "fsync", "--json"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!((cli.global.nats.nats_url.as_str(), cli.global.json), ("nats://n:1", true));
        }
    }
}
