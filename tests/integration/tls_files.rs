//! `tillsync auth tls`, as README command 1 and docker compose use it: the binary writes the
//! files (exit 2 for a bad host, exit 1 rather than replace one), and a real nats-server
//! configured as `run-local.sh` configures it (authorization and the `tls.conf` it wrote, both
//! included) admits a client with the generated CA and client certificate, by either name the
//! certificate carries, and refuses a client without a certificate and one in plain text,
//! while its monitoring port stays plain HTTP.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tillsync_broker::admin::nats::TlsFiles;
use tillsync_tests::{bin_path, eventually, free_port, http_get, nats_bin, DEFAULT_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A nats-server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tillsync(args: &[&str]) -> Output {
    Command::new(bin_path("tillsync")).args(args).stdin(Stdio::null()).output().unwrap()
}

fn auth_tls(dir: &Path, hosts: &[&str]) -> Output {
    let mut args = vec!["auth", "tls", "--dir", dir.to_str().unwrap()];
    for h in hosts {
        args.extend(["--host", h]);
    }
    tillsync(&args)
}

#[test]
fn auth_tls_writes_private_files_and_refuses_a_bad_host_and_replacing_them() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth");
    let bad = auth_tls(&auth, &["localhost", "127.0.0.1:4222"]);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("\"127.0.0.1:4222\""));
    assert_eq!(auth_tls(&auth, &[]).status.code(), Some(2), "no --host at all");
    assert!(!auth.exists(), "nothing written for a bad host or none");

    let ok = auth_tls(&auth, &["127.0.0.1", "localhost"]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    for name in ["ca.pem", "nats-server.pem", "nats-server-key.pem", "client.pem", "client-key.pem", "tls.conf"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(auth.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    let before = std::fs::read(auth.join("ca.pem")).unwrap();
    let again = auth_tls(&auth, &["127.0.0.1"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("tls.conf exists"), "{again:?}");
    assert_eq!(std::fs::read(auth.join("ca.pem")).unwrap(), before, "the CA is kept");
}

#[tokio::test]
async fn nats_with_the_generated_tls_admits_the_client_certificate_only_and_never_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth");
    // As run-local.sh does on a run dir from before TLS: `auth init` first, `auth tls` added.
    let init = tillsync(&["auth", "init", "--dir", auth.to_str().unwrap()]);
    assert!(init.status.success(), "{init:?}");
    let tls = auth_tls(&auth, &["127.0.0.1", "localhost"]);
    assert!(tls.status.success(), "{tls:?}");
    std::fs::write(dir.path().join("nats.conf"), "include \"auth/nats-auth.conf\"\ninclude \"auth/tls.conf\"\n")
        .unwrap();
    let (port, monitor) = (free_port(), free_port());
    let _server = Server(
        Command::new(nats_bin())
            .arg("-c")
            .arg(dir.path().join("nats.conf"))
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor.to_string(), "-js", "-sd"])
            .arg(dir.path().join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server: {e} (run ./scripts/test.sh)")),
    );

    let operator = auth.join("operator.nk");
    let files = TlsFiles {
        ca: Some(auth.join("ca.pem")),
        cert: Some(auth.join("client.pem")),
        key: Some(auth.join("client-key.pem")),
    };
    let connect = |url: String, files: TlsFiles| {
        let operator = operator.clone();
        async move { tillsync_broker::admin::nats::connect(&url, Some(operator.as_path()), &files, "tls-files-test").await }
    };
    let url = format!("tls://127.0.0.1:{port}");
    let client = eventually(DEFAULT_TIMEOUT, "a client with the generated certificate connected", || {
        let attempt = connect(url.clone(), files.clone());
        async move { attempt.await.ok() }
    })
    .await;
    client.flush().await.expect("a round trip over TLS");
    connect(format!("tls://localhost:{port}"), files.clone()).await.expect("the server's certificate names localhost");

    let no_cert = TlsFiles { ca: files.ca.clone(), cert: None, key: None };
    let err = tillsync_broker::admin::Chain(&connect(url.clone(), no_cert).await.expect_err("no client certificate"))
        .to_string();
    assert!(err.contains("CertificateRequired"), "{err}");

    // Plain text: the server asks for TLS in its INFO and answers a plain CONNECT and PING
    // with no PONG, only a closed connection.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut info, mut buf) = (Vec::new(), [0u8; 1024]);
    while !info.ends_with(b"\r\n") {
        let n = raw.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server sends its INFO line first");
        info.extend_from_slice(&buf[..n]);
    }
    let info = String::from_utf8_lossy(&info).to_string();
    assert!(info.starts_with("INFO ") && info.contains("\"tls_required\":true"), "{info}");
    let hello = "CONNECT {\"verbose\":false,\"tls_required\":false}\r\nPING\r\n";
    let _ = raw.write_all(hello.as_bytes()).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the server closes a plain-text connection");
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("PONG"), "a plain-text client got an answer: {rest}");

    // The monitoring port, which the compose file's exporters read, stays plain HTTP.
    let varz = http_get(([127, 0, 0, 1], monitor).into(), "/varz").await.map(|(code, _)| code);
    assert_eq!(varz, Some(200));
}
