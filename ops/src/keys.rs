//! `tillsync keys generate|public`: the broker's command signing keys, nkey seeds in files
//! (the same format `nsc` and the `nk` tool write), so an operator needs no other tool.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use nkeys::KeyPair;
use tillsync_broker::admin::keyfile;

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    cmd: KeysCmd,
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
    /// Write a new seed (`SU...`) to FILE, readable by its owner only, and print its public key
    /// (give that to the bridges' --command-keys). Refuses to overwrite a file.
    Generate {
        /// Where to write the seed; must not exist.
        file: PathBuf,
    },
    /// Print the public key of the seed in FILE.
    Public {
        /// A seed file written by `keys generate` (or `nk`).
        file: PathBuf,
    },
}

pub fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let public = match args.cmd {
        KeysCmd::Generate { file } => generate(&file)?,
        KeysCmd::Public { file } => public(&file)?,
    };
    println!("{public}");
    Ok(ExitCode::SUCCESS)
}

fn generate(file: &Path) -> anyhow::Result<String> {
    let key = KeyPair::new_user();
    // An existing key is never replaced by accident (rotation makes a new file).
    keyfile::write_new(file, &key).with_context(|| format!("creating {} (it must not exist yet)", file.display()))?;
    Ok(key.public_key())
}

fn public(file: &Path) -> anyhow::Result<String> {
    Ok(keyfile::read_seed(file)?.public_key())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("signing.nk");
        let made = generate(&file).unwrap();
        assert_eq!(public(&file).unwrap(), made);
        assert!(generate(&file).is_err(), "an existing key file is not overwritten");
        tillsync_schemas::signature::check_public_key(&made).unwrap();
    }
}
