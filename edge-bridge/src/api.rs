//! The local HTTP API on loopback: the POS submits events here and reads its configuration
//! (`/v1/config`, `/v1/config/changes?since=V`, from SQLite, so with NATS down too);
//! `/v1/status` and `/metrics` serve operators. Every refusal is `{"code": "...", "detail": "..."}` with a 4xx/5xx status.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::error::SubmitError;
use crate::events::draft::EventDraft;
use crate::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/events", post(submit))
        .route("/v1/config", get(config))
        .route("/v1/config/changes", get(config_changes))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared)
}

/// Serves on `listener` (bound by the caller, so it knows the port) until cancelled, letting
/// requests in flight finish.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    let shutdown = async move { cancel.cancelled().await };
    if let Err(error) = axum::serve(listener, router(shared)).with_graceful_shutdown(shutdown).await {
        tracing::error!(%error, "HTTP API stopped.");
    }
}

fn refusal(e: &SubmitError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({ "code": e.code(), "detail": e.detail() }))).into_response()
}

async fn submit(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let draft = match EventDraft::from_json(&body) {
        Ok(d) => d,
        Err(e) => {
            let e = SubmitError::Invalid(e);
            shared.metrics.refused(e.code()).increment(1);
            tracing::warn!(error = %e, code = e.code(), "Event refused.");
            return refusal(&e);
        }
    };
    match shared.submit(draft).await {
        Ok(a) if a.duplicate => (StatusCode::OK, Json(a)).into_response(),
        Ok(a) => (StatusCode::ACCEPTED, Json(a)).into_response(),
        Err(e) => refusal(&e),
    }
}

fn storage_failed(e: &sqlx::Error) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "code": crate::error::STORAGE_UNAVAILABLE, "detail": e.to_string() })),
    )
        .into_response()
}

async fn config(State(shared): State<Arc<Shared>>) -> Response {
    match crate::store_config::cache::current(shared.outbox.pool()).await {
        Ok(c) => Json(c).into_response(),
        Err(e) => storage_failed(&e),
    }
}

#[derive(Debug, serde::Deserialize)]
struct Since {
    since: u64,
}

/// The changes after `since`; 410 `snapshot_required` when the log no longer reaches back to
/// it (read `/v1/config` instead).
async fn config_changes(State(shared): State<Arc<Shared>>, since: Result<Query<Since>, QueryRejection>) -> Response {
    let Ok(Query(Since { since })) = since else {
        let detail = "since=V (a version) is required";
        return (StatusCode::BAD_REQUEST, Json(json!({ "code": "invalid_query", "detail": detail }))).into_response();
    };
    match crate::store_config::cache::changes_since(shared.outbox.pool(), since).await {
        Ok(Some((version, changes))) => Json(json!({ "version": version, "changes": changes })).into_response(),
        Ok(None) => {
            let detail = format!("the change log does not reach back to version {since}: read /v1/config");
            (StatusCode::GONE, Json(json!({ "code": "snapshot_required", "detail": detail }))).into_response()
        }
        Err(e) => storage_failed(&e),
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    match shared.source.status().await {
        Ok(s) => Json(s).into_response(),
        Err(e) => storage_failed(&e),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    // Refreshes the oldest-unsent gauge, which only moves with time.
    let _ = shared.source.status().await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render()).into_response()
}
