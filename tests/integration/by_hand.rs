//! README "Running the pieces yourself", run as written: the fenced block is taken from
//! README.md and run by bash with only what the README names as yours to change replaced (the
//! state directory, the binaries' directory, the nats-server, the database and the three
//! ports). It must end with an event from the till applied and a signed command acked by it,
//! the till trusting the `signing.nk` that `auth init` wrote, and nothing it started left
//! running. The Python example then publishes over the same TLS and authorization as a device
//! activated the same way.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tillsync_tests::{bin_path, eventually_eq, free_addr, nats_bin, TestDb, DEFAULT_TIMEOUT};

use crate::example::{expect_exit, run_example_with};

const SECTION: &str = "## Running the pieces yourself";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The first ```sh block of the README's by-hand section.
fn readme_block() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = &readme[readme.find(SECTION).unwrap_or_else(|| panic!("README has no {SECTION:?}"))..];
    let start = section.find("```sh\n").expect("a ```sh block in the section") + "```sh\n".len();
    let len = section[start..].find("```").expect("the block ends");
    section[start..start + len].to_string()
}

/// `block` with each `(from, to)` replaced, every `from` required to be there.
fn substitute(block: &str, changes: &[(&str, String)]) -> String {
    changes.iter().fold(block.to_string(), |text, (from, to)| {
        assert!(
            text.contains(from),
            "the README's block no longer has {from:?}: update this test and the README together"
        );
        text.replace(from, to)
    })
}

/// Everything the block started (bash ran it in a process group of its own), stopped on drop.
struct Group(Pid);

impl Group {
    fn alive(&self) -> bool {
        killpg(self.0, None).is_ok()
    }

    /// SIGTERM to the group; whatever is left after 30 s (a broker's and a bridge's bounded
    /// shutdown, on a loaded host) is named, killed, and `Err`.
    async fn stop(&self) -> Result<(), String> {
        let _ = killpg(self.0, Signal::SIGTERM);
        for _ in 0..300 {
            if !self.alive() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left = std::process::Command::new("ps")
            .args(["-o", "pid,stat,etime,args", "-g", &self.0.to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let _ = killpg(self.0, Signal::SIGKILL);
        Err(left)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}

fn logs(dir: &Path) -> String {
    ["nats.log", "broker.log", "till-1.log"]
        .iter()
        .map(|f| format!("--- {f}\n{}\n", std::fs::read_to_string(dir.join(f)).unwrap_or_default()))
        .collect()
}

/// The public key of the nkey seed file `path`.
fn public_key(path: &Path) -> String {
    tillsync_broker::admin::keyfile::read_seed(path).unwrap().public_key()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readmes_by_hand_block_applies_an_event_and_a_signed_command() {
    let db = TestDb::new().await;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("demo");
    let bin_dir = bin_path("tillsync").parent().unwrap().to_path_buf();
    let nats = std::fs::canonicalize(nats_bin()).expect("the suite's nats-server (TILLSYNC_NATS_SERVER)");
    let (nats_port, http_port, edge_port) = (free_addr().port(), free_addr().port(), free_addr().port());
    let script = substitute(
        &readme_block(),
        &[
            // Ports first, so no digits of a path or a database name are taken for one.
            ("127.0.0.1:4222", format!("127.0.0.1:{nats_port}")),
            ("-p 4222", format!("-p {nats_port}")),
            ("127.0.0.1:9464", format!("127.0.0.1:{http_port}")),
            ("127.0.0.1:8787", format!("127.0.0.1:{edge_port}")),
            ("D=$PWD/tillsync-demo", format!("D={}", d.display())),
            ("B=target/release", format!("B={}", bin_dir.display())),
            ("NATS_SERVER=.tools/venv/bin/nats-server", format!("NATS_SERVER={}", nats.display())),
            ("postgres://postgres@127.0.0.1:5432/tillsync", db.url.clone()),
        ],
    );
    let file = tmp.path().join("by-hand.sh");
    std::fs::write(&file, &script).unwrap();

    let mut cmd = tokio::process::Command::new("bash");
    cmd.args(["-eu", "-o", "pipefail"]).arg(&file).current_dir(tmp.path()).process_group(0).kill_on_drop(true);
    for var in ["NATS_URL", "NATS_CREDS", "NATS_CA_FILE", "NATS_CERT_FILE", "NATS_KEY_FILE", "DATABASE_URL"] {
        cmd.env_remove(var);
    }
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let group = Group(Pid::from_raw(child.id().expect("bash runs") as i32));
    let out: Output = tokio::time::timeout(Duration::from_secs(150), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the README's block still running after 150 s:\n{script}\n{}", logs(&d)))
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "the README's block failed:\n{script}\n{stdout}\n{stderr}\n{}", logs(&d));

    // The till's event landed, and the command it was sent was applied and acked.
    let landed = "SELECT count(*) FROM orders WHERE tenant_id = 'acme' AND store_id = 's1' AND order_id = 'o-1'";
    eventually_eq(DEFAULT_TIMEOUT, "the till's order in Postgres", 1, || db.count(landed)).await;
    let acked = "SELECT count(*) FROM command_log WHERE device_id = 'till-1' AND state = 'acked'";
    assert_eq!(db.count(acked).await, 1, "{stdout}");
    assert!(stdout.contains("applied"), "commands send --wait shows the till applied it:\n{stdout}");
    // The key the till trusts is the one `auth init` wrote and the broker signs with.
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("till-1.identity.json")).unwrap()).unwrap();
    assert_eq!(identity["command_keys"], serde_json::json!([public_key(&d.join("auth/signing.nk"))]));

    // Rerunning `auth init` names the file it will not replace.
    let again = tokio::process::Command::new(bin_path("tillsync"))
        .args(["auth", "init", "--dir"])
        .arg(d.join("auth"))
        .output()
        .await
        .unwrap();
    let again_err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{again_err}");
    assert!(again_err.contains("broker.nk exists"), "names the existing file: {again_err}");

    python_example_over_tls_as_an_activated_device(&d, &bin_dir, &db, nats_port).await;

    if let Err(left) = group.stop().await {
        panic!("something the README's block started still ran 30 s after SIGTERM:\n{left}\n{}", logs(&d));
    }
}

/// The Python example with the README's TLS files and a device's identity file, on the
/// README's server.
async fn python_example_over_tls_as_an_activated_device(d: &Path, bin_dir: &Path, db: &TestDb, nats_port: u16) {
    let env: Vec<(&str, String)> = vec![
        ("NATS_URL", format!("tls://127.0.0.1:{nats_port}")),
        ("DATABASE_URL", db.url.clone()),
        ("NATS_CREDS", d.join("auth/operator.nk").display().to_string()),
        ("NATS_CA_FILE", d.join("auth/ca.pem").display().to_string()),
        ("NATS_CERT_FILE", d.join("auth/client.pem").display().to_string()),
        ("NATS_KEY_FILE", d.join("auth/client-key.pem").display().to_string()),
    ];
    let added = tokio::process::Command::new(bin_dir.join("tillsync"))
        .args(["--json", "devices", "add", "--tenant", "acme", "--store", "s1", "--device", "py-1"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .await
        .unwrap();
    let added: serde_json::Value = serde_json::from_slice(&added.stdout).expect("devices add --json");
    let code = added["activation"]["code"].as_str().expect("an activation code").to_string();
    let db_file = d.join("py-1.db");
    let activated = tokio::process::Command::new(bin_dir.join("tillsync-edge"))
        .args(["activate", "--code", &code, "--db"])
        .arg(&db_file)
        .envs(env.iter().filter(|(k, _)| *k != "NATS_CREDS").map(|(k, v)| (k, v)))
        .output()
        .await
        .unwrap();
    assert!(activated.status.success(), "activate py-1: {}", String::from_utf8_lossy(&activated.stderr));
    let identity = tillsync_edge::identity::default_path(&db_file).display().to_string();
    let url = &env[0].1;
    let args = ["--nats-url", url, "--creds", &identity, "--tenant", "acme", "--store", "s1", "--device", "py-1"];
    let mut args = args.to_vec();
    args.extend(["--seq", "1", "--order-id", "py-o-1", "--wait-watermark"]);
    let tls: Vec<(&str, String)> = env[3..].to_vec();
    let out = run_example_with(&args, &tls).await;
    let event_id = expect_exit(&out, 0, "the Python example over TLS as an activated device");
    let ledger = format!("SELECT count(*) FROM processed_events WHERE device_id = 'py-1' AND event_id = '{event_id}'");
    eventually_eq(DEFAULT_TIMEOUT, "the Python event in the ledger", 1, || db.count(&ledger)).await;
    // Without the client certificate the server does not let it in.
    let out = run_example_with(&args, &tls[..1]).await;
    expect_exit(&out, 1, "no client certificate");
}
