//! `tillsync completions SHELL` and `tillsync man --out-dir DIR`: shell completions and man
//! pages generated from the same clap definition as `--help`, so they never drift from it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use clap_complete::Shell;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for; the script goes to stdout (e.g. `> /etc/bash_completion.d/tillsync`).
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write the pages to (created if missing): tillsync.1, tillsync-status.1, ...
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
}

pub fn completions(args: CompletionsArgs, mut cli: clap::Command) -> anyhow::Result<ExitCode> {
    let name = cli.get_name().to_string();
    clap_complete::generate(args.shell, &mut cli, name, &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub fn man(args: ManArgs, cli: clap::Command) -> anyhow::Result<ExitCode> {
    write_pages(cli, &args.out_dir)?;
    println!("{}", args.out_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// One page per command and subcommand, named `tillsync-<sub>-<subsub>.1`.
fn write_pages(cli: clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(cli, dir).with_context(|| format!("writing man pages to {}", dir.display()))
}
