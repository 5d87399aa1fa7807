use std::path::PathBuf;

/// The nats-server to run: `TILLSYNC_NATS_SERVER`, else the pinned one `./scripts/test.sh`
/// installs under `.tools/venv`, else `nats-server` on `PATH`.
pub fn nats_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TILLSYNC_NATS_SERVER") {
        return p.into();
    }
    let pinned = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/nats-server");
    if pinned.exists() {
        return pinned;
    }
    "nats-server".into()
}
