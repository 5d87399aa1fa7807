//! `tillsync bench ...`.

use std::process::ExitCode;

use clap::Args;

use crate::global::Global;

#[derive(Debug, Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs, _global: &Global) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
