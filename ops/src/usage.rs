//! How a command line clap refuses ends, the same in `tillsync` and `tillsync-lab`: clap's
//! message and the usage of the subcommand named (not of the options given) on stderr, exit 2,
//! and with `--json` the error object on stdout as well.

use std::process::ExitCode;

use crate::failure;

/// What clap found wrong before anything ran, in the command line of `cli`: its message and
/// usage on stderr (exit 2), plus the error object on stdout when `--json` is among the
/// arguments. `--help` and `--version` also arrive here and print as usual.
pub fn exit(mut e: clap::Error, cli: clap::Command) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    if e.get(ContextKind::Usage).is_some() {
        let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
        e.insert(ContextKind::Usage, ContextValue::StyledStr(plain_usage(cli, &args)));
    }
    if std::env::args_os().any(|a| a == "--json") {
        let f = failure::Failure::usage(&e.render().to_string());
        println!("{}", serde_json::json!({ "error": f }));
    }
    let _ = e.print();
    ExitCode::from(failure::USAGE)
}

/// The usage of the (sub)command `args` name, as its `--help` shows it. clap's own usage in an
/// error lists the options given, from the environment too: with `DATABASE_URL` set every
/// usage line read `tillsync ... --database-url <DATABASE_URL>`, as if it were required.
pub fn plain_usage(mut cli: clap::Command, args: &[String]) -> clap::builder::StyledStr {
    cli.build();
    let mut cmd = &mut cli;
    let mut args = args.iter();
    while let Some(a) = args.next() {
        if let Some(long) = a.strip_prefix("--") {
            let (name, value) = long.split_once('=').map_or((long, None), |(n, v)| (n, Some(v)));
            // clap stopped at an option this command does not know: its usage is the one.
            let Some(arg) = cmd.get_arguments().find(|x| x.get_long() == Some(name)) else { break };
            if value.is_none() && arg.get_action().takes_values() {
                args.next();
            }
            continue;
        }
        match cmd.find_subcommand(a).map(|c| c.get_name().to_string()) {
            Some(name) => cmd = cmd.find_subcommand_mut(name).expect("just found"),
            None if a.starts_with('-') => {}
            // A positional value: no subcommand follows a command's own arguments.
            None => break,
        }
    }
    cmd.render_usage()
}

/// Every argument of `cmd` and its subcommands that has no help text, as `path sub --arg`: the
/// test that `--help` (and so the man pages and completions) explains every flag, in
/// `tillsync` and `tillsync-lab` alike.
pub fn arguments_without_help(cmd: &clap::Command, path: &str) -> Vec<String> {
    let mut missing = Vec::new();
    for arg in cmd.get_arguments() {
        let builtin = matches!(arg.get_id().as_str(), "help" | "version");
        if !builtin && !arg.is_hide_set() && arg.get_help().is_none() && arg.get_long_help().is_none() {
            missing.push(format!("{path} --{}", arg.get_id()));
        }
    }
    for sub in cmd.get_subcommands() {
        missing.extend(arguments_without_help(sub, &format!("{path} {}", sub.get_name())));
    }
    missing
}
