//! `tillsync bench` and `tillsync chaos`: benchmarks and the chaos run are not for operators
//! and live in `tillsync-lab` (lab/), which this process becomes when it sits beside
//! `tillsync`. It gets this command line unchanged, global options included and where they
//! were given, and the same environment, so it parses and behaves as `tillsync` did when it
//! held both.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tillsync_ops::failure::NotInstalled;

/// The binary that runs `bench` and `chaos`.
const LAB: &str = "tillsync-lab";

/// Everything after `bench` or `chaos`, for tillsync-lab to parse (`--help` too).
#[derive(Debug, Args)]
pub struct LabArgs {
    /// Passed to tillsync-lab unchanged; `--help` lists them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<OsString>,
}

impl LabArgs {
    /// `--json` among the lab's arguments: clap leaves it to tillsync-lab, and an error here
    /// is printed as the lab would print it.
    pub fn json(&self) -> bool {
        self.args.iter().any(|a| a == "--json")
    }
}

/// `bench` or `chaos` when clap's refusal is `tillsync help bench|chaos ...`: help that
/// tillsync-lab has.
pub fn help_asked(e: &clap::Error) -> Option<&'static str> {
    if e.kind() != clap::error::ErrorKind::DisplayHelp {
        return None;
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let asked = args.windows(2).find(|w| w[0] == "help").map(|w| w[1].clone())?;
    ["bench", "chaos"].into_iter().find(|c| asked == *c)
}

/// Replaces this process by tillsync-lab with the same arguments (its `argv[0]` too, so its
/// usage lines read `tillsync bench ...`); returns only the reason it could not. `command`
/// (`bench`, `chaos`) names what was asked for in that reason.
pub fn exec(command: &str) -> anyhow::Error {
    let lab = match beside_this_executable(command) {
        Ok(lab) => lab,
        Err(e) => return e,
    };
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "tillsync".into());
    let error = std::process::Command::new(&lab).arg0(argv0).args(args).exec();
    anyhow::Error::new(error).context(format!("cannot run {}", lab.display()))
}

/// `tillsync-lab` in the directory of this executable: where `cargo build` puts both.
fn beside_this_executable(command: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let dir = exe.parent().context("this executable has no directory")?;
    let lab = dir.join(LAB);
    if !lab.is_file() {
        return Err(NotInstalled {
            code: "lab_not_installed",
            message: format!(
                "`tillsync {command}` runs {LAB}, which is not installed beside tillsync: {} not found",
                lab.display()
            ),
            hint: format!(
                "build it with `cargo build -p {LAB}` (`--release` for a release tillsync): cargo puts it beside \
                 tillsync; or install {LAB} in {}",
                dir.display()
            ),
        }
        .into());
    }
    Ok(lab)
}
