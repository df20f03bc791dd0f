//! The HTTP endpoints: `/metrics` (Prometheus), `/healthz` (liveness), `/readyz` (readiness).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::health::Health;
use crate::metrics::Metrics;

/// What the endpoints read.
#[derive(Clone)]
pub struct ServerState {
    pub health: Arc<Health>,
    pub metrics: Metrics,
}

pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Binds first, so a taken port is reported at start-up rather than from inside a task.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ServerState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|err| anyhow::anyhow!("the metrics server failed: {err}"))
}

async fn metrics(State(state): State<ServerState>) -> (StatusCode, String) {
    match state.metrics.encode() {
        Ok(text) => (StatusCode::OK, text),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {err}\n"),
        ),
    }
}

async fn healthz(State(state): State<ServerState>) -> (StatusCode, String) {
    respond(state.health.liveness())
}

async fn readyz(State(state): State<ServerState>) -> (StatusCode, String) {
    respond(state.health.readiness())
}

fn respond(check: Result<String, String>) -> (StatusCode, String) {
    match check {
        Ok(report) => (StatusCode::OK, report),
        Err(report) => (StatusCode::SERVICE_UNAVAILABLE, report),
    }
}
