//! `tillsync commands ...`.

use std::process::ExitCode;

use clap::Args;

use crate::global::Global;

#[derive(Debug, Args)]
pub struct CommandsArgs {}

pub async fn run(_args: CommandsArgs, _global: &Global) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
