//! How a command that fails ends, in one place: its exit code, one message naming the cause
//! (the error chain once), a hint naming the fix, and with `--json` one error object on stdout
//! (`{"error": {"code", "exit", "message", "hint"}}`) so a script reads a document either way.
//!
//! Subcommands return `anyhow` errors; those that know what went wrong return one of the typed
//! errors below ([`Usage`], [`Missing`], [`NotFound`], [`NotInstalled`], [`Known`]) and
//! [`Failure::of`] maps them. Errors of the libraries underneath (sqlx, NATS) are recognised
//! here, so a subcommand needs no code of its own to say "Postgres is down" or "run `tillsync
//! migrate`".

use serde::Serialize;

/// Failure: the error is printed.
pub const FAILED: u8 = 1;
/// A usage error: a flag's value or a combination of flags is wrong.
pub const USAGE: u8 = 2;
/// A check found something that needs a look (`status`, `replay --verify`, `commands send --wait`).
pub const PROBLEMS: u8 = 3;
/// What the command line names does not exist: a tenant, store, device, command, approver,
/// portal key, quarantined message, configuration version.
pub const NOT_FOUND: u8 = 4;

/// A flag's value or a combination of flags that only a run can find wrong (clap finds the
/// rest before anything runs). Exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The thing asked about does not exist. Exit 4, code `not_found`, with a generic hint; a
/// subcommand that knows where to look returns [`Missing`] instead.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// What the command line names does not exist (see [`crate::known`]): exit 4, with a stable
/// code (`unknown_tenant`, `unknown_store`, `unknown_device`, `unknown_approver`,
/// `unknown_portal_key`, `not_found`) and where to find what does exist.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Missing {
    pub code: &'static str,
    pub message: String,
    pub hint: String,
}

/// A failure whose cause a subcommand knows, with a stable code and the fix. Exit 1.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Known {
    pub code: &'static str,
    pub message: String,
    pub hint: String,
}

/// A program the command runs is not installed beside `tillsync` (`tillsync bench` and
/// `tillsync chaos` run `tillsync-lab`): exit 2, as for any setup the command cannot use, with
/// a stable code and how to build or install it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NotInstalled {
    pub code: &'static str,
    pub message: String,
    pub hint: String,
}

/// What a person (stderr) and a script (`--json`, stdout) learn about a failure.
#[derive(Debug, Serialize, PartialEq)]
pub struct Failure {
    /// Stable, for scripts: `usage`, `not_found`, `postgres_unreachable`, `not_migrated`, ...
    pub code: &'static str,
    pub exit: u8,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    /// The failure `error` is; `database_url` is named (password masked) in Postgres hints.
    pub fn of(error: &anyhow::Error, database_url: &str) -> Failure {
        let mut message = once(error.chain().map(|e| e.to_string()));
        let (code, exit, hint) = classify(error, &message, database_url);
        // sqlx keeps retrying until its pool times out and then says only that: one more
        // attempt names what went wrong.
        if error.chain().any(|c| matches!(c.downcast_ref::<sqlx::Error>(), Some(sqlx::Error::PoolTimedOut))) {
            if let Some(cause) = tcp_probe(database_url) {
                message = format!("{message} ({cause})");
            }
        }
        Failure { code, exit, message, hint }
    }

    /// A usage error clap found: its first line, without clap's `error: ` prefix.
    pub fn usage(clap_error: &str) -> Failure {
        let first = clap_error.lines().next().unwrap_or_default();
        Failure {
            code: "usage",
            exit: USAGE,
            message: first.strip_prefix("error: ").unwrap_or(first).to_string(),
            hint: Some("see `tillsync help` or the subcommand's `--help`".into()),
        }
    }

    /// `error: ...` and `hint: ...` on stderr; with `json`, also the error object on stdout.
    pub fn print(&self, json: bool) {
        eprintln!("error: {}", self.message);
        if let Some(h) = &self.hint {
            eprintln!("hint: {h}");
        }
        if json {
            println!("{}", serde_json::json!({ "error": self }));
        }
    }
}

/// The cause, the exit code and the fix of `error`, whose chain reads `message`.
fn classify(error: &anyhow::Error, message: &str, database_url: &str) -> (&'static str, u8, Option<String>) {
    for cause in error.chain() {
        if cause.downcast_ref::<Usage>().is_some() {
            return ("usage", USAGE, Some("see the subcommand's `--help`".into()));
        }
        if let Some(m) = cause.downcast_ref::<Missing>() {
            return (m.code, NOT_FOUND, Some(m.hint.clone()));
        }
        if cause.downcast_ref::<NotFound>().is_some() {
            let hint = "check the id or name for a typo: the subcommand's `list` shows what exists";
            return ("not_found", NOT_FOUND, Some(hint.into()));
        }
        if let Some(n) = cause.downcast_ref::<NotInstalled>() {
            return (n.code, USAGE, Some(n.hint.clone()));
        }
        if let Some(k) = cause.downcast_ref::<Known>() {
            return (k.code, FAILED, Some(k.hint.clone()));
        }
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            if let Some((code, hint)) = postgres(e, database_url) {
                return (code, FAILED, Some(hint));
            }
        }
    }
    let lower = message.to_lowercase();
    if lower.contains("authorization violation") {
        let hint = "NATS refused the credentials: pass the operator's with --nats-creds / NATS_CREDS \
                    (operator.nk from `tillsync auth init`)";
        return ("nats_unauthorized", FAILED, Some(hint.into()));
    }
    if lower.contains("cannot connect to nats") {
        let hint = "is nats-server running there? set NATS_URL or --nats-url";
        return ("nats_unreachable", FAILED, Some(hint.into()));
    }
    ("failed", FAILED, None)
}

/// The code and fix of a Postgres error a person can act on.
fn postgres(e: &sqlx::Error, database_url: &str) -> Option<(&'static str, String)> {
    let url = crate::db::redact(database_url);
    let unreachable = || {
        let hint = format!("is Postgres running at {url}? set DATABASE_URL or --database-url");
        Some(("postgres_unreachable", hint))
    };
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => unreachable(),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // undefined_table: the schema was never applied to this database.
            Some("42P01") => {
                Some(("not_migrated", format!("the database is not migrated: run `tillsync migrate` (on {url})")))
            }
            // invalid_catalog_name: the database itself is missing.
            Some("3D000") => {
                Some(("postgres_no_database", format!("create the database, or fix DATABASE_URL ({url})")))
            }
            // invalid_password, invalid_authorization_specification.
            Some("28P01" | "28000") => {
                Some(("postgres_unauthorized", format!("check the user and password in DATABASE_URL ({url})")))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Why a TCP connection to the database's host and port fails, if it does.
fn tcp_probe(database_url: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    let opts: sqlx::postgres::PgConnectOptions = database_url.parse().ok()?;
    let (host, port) = (opts.get_host(), opts.get_port());
    if host.starts_with('/') {
        return None; // a Unix socket directory
    }
    let at = format!("{host}:{port}");
    let addr = match at.to_socket_addrs() {
        Ok(mut addrs) => addrs.next()?,
        Err(e) => return Some(format!("{at}: {e}")),
    };
    let e = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).err()?;
    Some(format!("{at}: {e}"))
}

/// The chain as one line, each cause once: a cause whose text the line already holds (an
/// outer message that quoted its source) is left out, and of a `: ` segment said twice (a
/// message that quoted its source's text, not the source) only the later one stays, as it
/// stands next to its own detail.
pub fn once(chain: impl Iterator<Item = String>) -> String {
    let mut kept: Vec<String> = Vec::new();
    for text in chain {
        if !kept.iter().any(|k| k.contains(&text)) {
            kept.push(text);
        }
    }
    let joined = kept.join(": ");
    let segments: Vec<&str> = joined.split(": ").collect();
    let later = |i: usize| segments[i + 1..].contains(&segments[i]);
    (0..segments.len()).filter(|i| !later(*i)).map(|i| segments[i]).collect::<Vec<_>>().join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_prints_each_cause_once() {
        let e = anyhow::anyhow!(
            "cannot connect to NATS at nats://h:4222: cannot connect to NATS at nats://h:4222: IO error: refused"
        );
        assert_eq!(
            once(e.chain().map(|c| c.to_string())),
            "cannot connect to NATS at nats://h:4222: IO error: refused"
        );
        let quoted = anyhow::anyhow!("pool timed out").context("cannot connect: pool timed out");
        assert_eq!(once(quoted.chain().map(|c| c.to_string())), "cannot connect: pool timed out");
        let twice = anyhow::anyhow!(
            "cannot connect to X: cannot connect to X: authorization violation: nats: authorization violation"
        );
        assert_eq!(once(twice.chain().map(|c| c.to_string())), "cannot connect to X: nats: authorization violation");
        let nested = anyhow::anyhow!("root").context("middle").context("top");
        assert_eq!(once(nested.chain().map(|c| c.to_string())), "top: middle: root");
    }

    #[test]
    fn typed_errors_choose_the_exit_code() {
        let url = "postgres://u:secret@h/db";
        let usage = anyhow::Error::new(Usage("--set x: expected KEY=VALUE".into())).context("building");
        assert_eq!((Failure::of(&usage, url).code, Failure::of(&usage, url).exit), ("usage", 2));
        let missing = anyhow::Error::new(NotFound("no command c1".into()));
        assert_eq!(Failure::of(&missing, url).exit, 4);
        assert!(Failure::of(&missing, url).hint.is_some(), "every exit 4 says where to look");
        let tenant = Missing { code: "unknown_tenant", message: "no tenant acm".into(), hint: "tenants list".into() };
        let f = Failure::of(&anyhow::Error::new(tenant).context("devices list"), url);
        assert_eq!((f.code, f.exit, f.hint.as_deref()), ("unknown_tenant", 4, Some("tenants list")));
        let lab = NotInstalled { code: "lab_not_installed", message: "m".into(), hint: "h".into() };
        let f = Failure::of(&anyhow::Error::new(lab), url);
        assert_eq!((f.code, f.exit, f.hint.as_deref()), ("lab_not_installed", 2, Some("h")));
        let known = anyhow::Error::new(Known { code: "unknown_tenant", message: "m".into(), hint: "h".into() });
        let f = Failure::of(&known, url);
        assert_eq!((f.code, f.exit, f.hint.as_deref()), ("unknown_tenant", 1, Some("h")));
    }

    #[test]
    fn postgres_down_names_the_url_without_its_password() {
        let e = anyhow::Error::new(sqlx::Error::PoolTimedOut).context("cannot connect to Postgres at x");
        let f = Failure::of(&e, "postgres://u:secret@h:1/db");
        assert_eq!((f.code, f.exit), ("postgres_unreachable", 1));
        let hint = f.hint.unwrap();
        assert!(hint.contains("postgres://u:***@h:1/db") && hint.contains("DATABASE_URL"), "{hint}");
        assert!(!hint.contains("secret"));
    }

    #[test]
    fn nats_failures_name_their_fix() {
        let down = anyhow::anyhow!("cannot connect to NATS at nats://h:1: IO error");
        assert_eq!(Failure::of(&down, "").code, "nats_unreachable");
        let denied = anyhow::anyhow!("cannot connect to NATS at nats://h:1: authorization violation");
        assert_eq!(Failure::of(&denied, "").code, "nats_unauthorized");
        assert_eq!(Failure::of(&anyhow::anyhow!("other"), "").hint, None);
    }

    #[test]
    fn clap_usage_errors_keep_their_first_line() {
        let f = Failure::usage("error: unexpected argument '--bogus' found\n\nUsage: tillsync status\n");
        assert_eq!((f.code, f.exit, f.message.as_str()), ("usage", 2, "unexpected argument '--bogus' found"));
    }
}
