//! The tillsync-edge .deb: built with cargo-deb from the test build's binary, installed into a
//! throwaway root with dpkg (maintainer scripts run against that root), its unit verified with
//! `systemd-analyze verify`, then upgraded in place and purged.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `TILLSYNC_CARGO_DEB`, else `cargo-deb` on PATH; scripts/test.sh installs it.
fn cargo_deb() -> PathBuf {
    std::env::var_os("TILLSYNC_CARGO_DEB").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("cargo-deb"))
}

fn run(cmd: &mut Command) -> String {
    let out =
        cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/test.sh installs cargo-deb, dpkg and systemd)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    text
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// dpkg operating on `root` as if it were `/`, running the maintainer scripts outside a chroot
/// with DPKG_ROOT set (the root has no shell of its own).
fn dpkg(root: &Path, args: &[&str]) -> String {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends", "--force-not-root", "--log=/dev/null"])
        .args(args))
}

fn owner(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).uid()
}

#[test]
fn the_edge_deb_installs_a_user_a_state_directory_and_a_unit_systemd_accepts() {
    let out = tempfile::tempdir().unwrap();
    // The debug binary the suite already built: a release build would double the CI time, and
    // what is checked here is the package, not the optimiser.
    run(Command::new(cargo_deb())
        .current_dir(workspace())
        .args(["deb", "-p", "tillsync-edge", "--no-build", "--profile", "dev", "--fast", "-o"])
        .arg(out.path()));
    let deb = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("cargo deb wrote a .deb");
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: tillsync-edge"), "{info}");
    assert!(info.contains("Depends:") && info.contains("libc6"), "dependencies from the binary's links: {info}");

    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "etc"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    let deb_arg = deb.to_str().unwrap();
    dpkg(r, &["--install", deb_arg]);

    let bin = r.join("usr/bin/tillsync-edge");
    let version = run(Command::new(&bin).arg("--version"));
    assert!(version.starts_with("tillsync-edge "), "{version}");
    for f in [
        "lib/systemd/system/tillsync-edge.service",
        "usr/lib/sysusers.d/tillsync-edge.conf",
        "usr/lib/tmpfiles.d/tillsync-edge.conf",
        "etc/default/tillsync-edge",
        "usr/share/doc/tillsync-edge/edge-bridge.md",
    ] {
        assert!(r.join(f).is_file(), "{f} installed");
    }
    // postinst made the user and the state directory it owns.
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    let line =
        passwd.lines().find(|l| l.starts_with("tillsync:")).unwrap_or_else(|| panic!("no tillsync user in {passwd}"));
    let fields: Vec<&str> = line.split(':').collect();
    assert_eq!(fields[5], "/var/lib/tillsync-edge", "{line}");
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "a system user: {line}");
    let state = r.join("var/lib/tillsync-edge");
    assert_eq!(owner(&state), uid, "the state directory belongs to tillsync");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o750);
    let status = dpkg(r, &["--status", "tillsync-edge"]);
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(status.contains("/etc/default/tillsync-edge"), "the settings file is a conffile: {status}");

    // The root gets the host's systemd targets, as if Debian's systemd package were installed
    // there: verify follows the unit's dependencies (multi-user.target, sysinit.target).
    for e in std::fs::read_dir("/lib/systemd/system").unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "target") && p.is_file() {
            std::fs::copy(&p, r.join("lib/systemd/system").join(p.file_name().unwrap())).unwrap();
        }
    }
    let verify = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .arg("/lib/systemd/system/tillsync-edge.service"));
    assert!(!verify.contains("Unknown") && !verify.contains("Failed"), "systemd-analyze verify: {verify}");

    // An operator's edit of the settings survives an upgrade; the state directory too.
    std::fs::write(r.join("etc/default/tillsync-edge"), "NATS_URL=tls://nats.example.invalid:4222\n").unwrap();
    std::fs::write(state.join("edge.db"), "outbox").unwrap();
    dpkg(r, &["--force-confold", "--install", deb_arg]);
    assert_eq!(
        std::fs::read_to_string(r.join("etc/default/tillsync-edge")).unwrap(),
        "NATS_URL=tls://nats.example.invalid:4222\n"
    );
    assert!(state.join("edge.db").is_file(), "an upgrade keeps the outbox");

    // Remove keeps the outbox (it may hold unsent sales); purge deletes it.
    dpkg(r, &["--remove", "tillsync-edge"]);
    assert!(!bin.exists() && state.join("edge.db").is_file());
    dpkg(r, &["--purge", "tillsync-edge"]);
    assert!(!state.exists(), "purge deletes the state directory");
}

#[test]
fn the_edge_binary_links_only_what_the_docs_say() {
    let bin = tillsync_tests::bin_path("tillsync-edge");
    let ldd = run(Command::new("ldd").arg(&bin));
    let libs: Vec<&str> = ldd.lines().filter_map(|l| l.split_whitespace().next()).collect();
    let docs = std::fs::read_to_string(workspace().join("docs/edge-bridge.md")).unwrap();
    for lib in &libs {
        let known = ["linux-vdso.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1"].contains(lib)
            || lib.starts_with("/lib64/ld-linux");
        assert!(known, "{} links {lib}, which docs/edge-bridge.md does not name:\n{ldd}", bin.display());
    }
    for lib in ["libc.so.6", "libm.so.6", "libgcc_s.so.1"] {
        assert!(docs.contains(lib), "docs/edge-bridge.md names {lib}");
    }
}

#[test]
fn run_exits_2_on_a_configuration_error_so_systemd_stops_restarting_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(tillsync_tests::bin_path("tillsync-edge"))
        .args(["run", "--no-http", "--tenant", "not a tenant", "--store", "s1", "--device", "till-1", "--db"])
        .arg(dir.path().join("edge.db"))
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tenant"), "names the setting: {stderr}");
    let unit = std::fs::read_to_string(workspace().join("edge-bridge/debian/tillsync-edge.service")).unwrap();
    assert!(unit.contains("RestartPreventExitStatus=2"));
}
