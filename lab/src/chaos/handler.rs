//! The command handler the bridges call (`--handler http://127.0.0.1:PORT/apply/<device>`):
//! it records every application (command id, device, wall time) before it answers 200, so a
//! recorded application is one the device may have acted on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::routing::post;
use axum::Router;
use tillsync_schemas::now_ms;
use tokio_util::sync::CancellationToken;

use super::history::Application;

type Applied = Arc<Mutex<Vec<Application>>>;

async fn apply(State(applied): State<Applied>, Path(device): Path<String>, body: axum::body::Bytes) -> &'static str {
    // The bridge posts JSON without a Content-Type, so the body is parsed here.
    let command: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let command_id = command["command_id"].as_str().unwrap_or_default().to_string();
    applied.lock().expect("history lock").push(Application { command_id, device_id: device, at_ms: now_ms() });
    "ok"
}

/// Serves the handler on a free loopback port until `stop`; returns its address.
pub async fn serve(applied: Applied, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new().route("/apply/{device}", post(apply)).with_state(applied);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
    });
    Ok(addr)
}
