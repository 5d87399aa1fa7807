//! Applies a command (or hands over an applied configuration change set) to the POS: an HTTP
//! POST of the JSON to the local POS API, a program run with the JSON on stdin, or nothing
//! (demos). Always under a timeout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tillsync_schemas::ack::codes;
use tillsync_schemas::CommandEnvelope;
use tokio::io::AsyncWriteExt;

use crate::http_client::{self, Url, UrlError};

/// Which handler the bridge runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerSpec {
    /// Applies as a no-op.
    None,
    /// POST the command JSON; 2xx = applied.
    Http(Url),
    /// Run the program with the command JSON on stdin; exit 0 = applied.
    Exec(PathBuf),
}

impl HandlerSpec {
    /// `exec` wins over `handler`; a refused URL is [`crate::settings::SettingsError::Handler`]'s cause.
    pub fn parse(handler: &str, exec: Option<&Path>) -> Result<HandlerSpec, UrlError> {
        if let Some(p) = exec {
            return Ok(HandlerSpec::Exec(p.to_path_buf()));
        }
        match handler {
            "none" => Ok(HandlerSpec::None),
            url => Url::parse(url).map(HandlerSpec::Http),
        }
    }
}

/// What the handler did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerResult {
    Applied,
    /// Tried and failed, with a code (`handler_error`, `handler_timeout`, or the POS's own code).
    Failed {
        code: String,
        detail: String,
    },
}

impl HandlerResult {
    fn failed(code: &str, detail: impl Into<String>) -> HandlerResult {
        HandlerResult::Failed { code: code.to_string(), detail: truncate(detail.into()) }
    }
}

fn truncate(mut s: String) -> String {
    const MAX: usize = 400;
    if s.len() > MAX {
        let mut cut = MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

pub async fn apply(spec: &HandlerSpec, cmd: &CommandEnvelope, timeout: Duration) -> HandlerResult {
    let json = serde_json::to_vec(cmd).expect("commands always serialize");
    apply_json(spec, &json, timeout).await
}

/// Hands any JSON document to the handler: a command, or an applied configuration change set.
pub async fn apply_json(spec: &HandlerSpec, json: &[u8], timeout: Duration) -> HandlerResult {
    let run = async {
        match spec {
            HandlerSpec::None => HandlerResult::Applied,
            HandlerSpec::Http(url) => post(url, json).await,
            HandlerSpec::Exec(path) => exec(path, json).await,
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        // Dropping the future closes the socket / kills the child (kill_on_drop).
        Err(_) => HandlerResult::failed(codes::HANDLER_TIMEOUT, format!("no answer within {} ms", timeout.as_millis())),
    }
}

async fn post(url: &Url, json: &[u8]) -> HandlerResult {
    match http_client::request("POST", url, json).await {
        Ok((status, _)) if (200..300).contains(&status) => HandlerResult::Applied,
        Ok((status, body)) => {
            // A POS may explain its refusal as {"code": "..."}; a subject-safe code is passed on.
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_string))
                .filter(|c| tillsync_schemas::ids::check_id("code", c).is_ok())
                .unwrap_or_else(|| codes::HANDLER_ERROR.to_string());
            HandlerResult::failed(&code, format!("POS answered HTTP {status}: {}", String::from_utf8_lossy(&body)))
        }
        Err(e) => HandlerResult::failed(codes::HANDLER_ERROR, format!("POS API unreachable: {e}")),
    }
}

async fn exec(path: &Path, json: &[u8]) -> HandlerResult {
    let child = tokio::process::Command::new(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return HandlerResult::failed(codes::HANDLER_ERROR, format!("cannot run {}: {e}", path.display())),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A handler that exits without reading stdin is its own business: only its status counts.
        let _ = stdin.write_all(json).await;
    }
    match child.wait_with_output().await {
        Ok(out) if out.status.success() => HandlerResult::Applied,
        Ok(out) => HandlerResult::failed(
            codes::HANDLER_ERROR,
            format!("{} exited with {}: {}", path.display(), out.status, String::from_utf8_lossy(&out.stderr).trim()),
        ),
        Err(e) => HandlerResult::failed(codes::HANDLER_ERROR, format!("waiting for {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A one-shot POS API answering `status` with `body`; returns its URL.
    async fn pos(status: u16, body: &'static str, delay: Duration) -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let _ = sock.read(&mut buf).await;
            tokio::time::sleep(delay).await;
            let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            let _ = sock.write_all(resp.as_bytes()).await;
        });
        Url::parse(&format!("http://127.0.0.1:{port}/tillsync/commands")).unwrap()
    }

    fn cmd() -> CommandEnvelope {
        CommandEnvelope {
            schema_version: 1,
            command_id: "01890a5d-ac96-774b-bcce-b302099a8057".into(),
            tenant_id: "acme".into(),
            store_id: "s1".into(),
            device_id: Some("till-1".into()),
            body: tillsync_schemas::CommandBody::VoidOrder { order_id: "o-1".into(), reason: "test".into() },
            issued_at_ms: 1,
            expires_at_ms: 2,
            requested_by: "alice".into(),
            approvals: vec![],
            if_match: None,
        }
    }

    #[tokio::test]
    async fn http_handler_outcomes() {
        let t = Duration::from_secs(2);
        let ok = HandlerSpec::Http(pos(204, "", Duration::ZERO).await);
        assert_eq!(apply(&ok, &cmd(), t).await, HandlerResult::Applied);
        let refused = HandlerSpec::Http(pos(409, r#"{"code":"order_closed"}"#, Duration::ZERO).await);
        assert!(
            matches!(apply(&refused, &cmd(), t).await, HandlerResult::Failed { code, .. } if code == "order_closed")
        );
        let broken = HandlerSpec::Http(pos(500, "boom", Duration::ZERO).await);
        assert!(
            matches!(apply(&broken, &cmd(), t).await, HandlerResult::Failed { code, .. } if code == "handler_error")
        );
        let slow = HandlerSpec::Http(pos(200, "", Duration::from_secs(5)).await);
        let r = apply(&slow, &cmd(), Duration::from_millis(100)).await;
        assert!(matches!(r, HandlerResult::Failed { code, .. } if code == "handler_timeout"));
    }

    #[test]
    fn specs() {
        assert_eq!(HandlerSpec::parse("none", None).unwrap(), HandlerSpec::None);
        assert!(matches!(HandlerSpec::parse("none", Some(Path::new("/bin/true"))).unwrap(), HandlerSpec::Exec(_)));
        assert!(HandlerSpec::parse("ftp://x", None).is_err());
    }
}
