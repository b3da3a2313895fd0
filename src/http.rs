//! The relay's own HTTP server on `listen`: `/healthz`, `/readyz`, `/metrics`,
//! the status page of [`crate::page`] at `/`, and the token-protected event
//! status API of [`crate::api`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::api::{self, Api};
use crate::metrics::Metrics;
use crate::page;

pub fn router(metrics: Arc<Metrics>, api: Arc<Api>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(metrics)
        .merge(page::routes(api.clone()))
        .merge(api::routes(api))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({ "error": "not found" })),
            )
        })
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the database or the LISTEN connection is down\n",
        )
    }
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    api: Arc<Api>,
    shutdown: CancellationToken,
) {
    let result = axum::serve(listener, router(metrics, api))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the metrics and health server stopped");
    }
}
