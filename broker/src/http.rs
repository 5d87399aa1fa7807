//! /metrics (Prometheus text format), /healthz (process up), /readyz (NATS and Postgres
//! reachable, streams ensured).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::Ctx;

#[derive(Clone)]
struct AppState {
    ctx: Arc<Ctx>,
    prometheus: PrometheusHandle,
}

pub async fn serve(listener: tokio::net::TcpListener, ctx: Arc<Ctx>, prometheus: PrometheusHandle) {
    let cancel = ctx.cancel.clone();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { ctx, prometheus });
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await {
        tracing::error!(%error, "HTTP server failed.");
    }
}

async fn metrics(State(s): State<AppState>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    crate::ingest::export_actor_stats(&s.ctx);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render(&s.prometheus))
}

/// Answers within about a second whatever is down: each check is bounded
/// ([`crate::monitor::POSTGRES_PROBE`]) and they run together, so a probe with a short timeout
/// gets a 503 naming what is unavailable rather than no answer.
async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    let nats_ok = s.ctx.nats.connection_state() == async_nats::connection::State::Connected;
    let streams = async {
        let get = s.ctx.js.get_stream(tillsync_schemas::streams::EVENTS);
        nats_ok && matches!(tokio::time::timeout(crate::monitor::POSTGRES_PROBE, get).await, Ok(Ok(_)))
    };
    let (db_ok, streams_ok) = tokio::join!(crate::monitor::postgres_up(&s.ctx.pool), streams);
    let body = format!("nats: {}\npostgres: {}\nstreams: {}\n", ok(nats_ok), ok(db_ok), ok(streams_ok));
    let code = if nats_ok && db_ok && streams_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, body)
}

fn ok(b: bool) -> &'static str {
    if b {
        "ok"
    } else {
        "unavailable"
    }
}
