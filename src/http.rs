//! The service's HTTP face: `/healthz` (the process answers), `/readyz`
//! (Redis answers too), for load balancers and Railway's health check, and
//! `/metrics` in Prometheus text format.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};

use crate::store::connection::LazyConnection;

pub mod scrape;

use scrape::ScrapeSources;

#[derive(Clone)]
pub struct HttpState {
    pub redis: Arc<LazyConnection>,
    pub metrics: Arc<MetricsEndpoint>,
}

/// What `/metrics` renders, and where its scrape-time values come from.
pub struct MetricsEndpoint {
    pub handle: PrometheusHandle,
    pub sources: ScrapeSources,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, Json<Value>) {
    match state.redis.ping().await {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "redis": "up"})),
        ),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "redis": "down", "error": err.to_string()})),
        ),
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    state.metrics.sources.refresh().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.handle.render(),
    )
}
